"""Experiment trackers for real: a sweep logged to MLflow (a local SQLite store, read back with MLflow's
client: names, tags with the state, the whole resolved config, curves, final metrics, artifacts) and its
replicates to W&B in offline mode (the offline run files, parsed) and TensorBoard (its own folder, one
HParams session group per (scale, arm)); and the errors a user gets, before Ray starts, when a tracker
cannot run."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdsweep.distill.run.rundir import eval_rows
from kdsweep.sweeps.layout import SweepDir
from kdsweep.sweeps.space import load_space
from kdsweep.sweeps.study import best_trial, open_study
from kdsweep.sweeps.tracking import CURVES
from tests.fixtures import ray_subprocess_env, run_kdsweep, write_small_space

STUDIES = ("demo-xs/baseline", "demo-xs/both")


def _cli_in_subprocess(args: list[str], env: dict, prelude: str = "") -> subprocess.CompletedProcess:
    """`kdsweep ARGS` run through `main`, then whether Ray was started and what the storage holds."""
    script = f"""{prelude}
import json, sys
from kdsweep.cli import main
code = main({args!r})
ray = sys.modules.get("ray")
print(json.dumps({{"code": code, "ray_started": bool(ray and ray.is_initialized())}}))
"""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)


def test_a_missing_tracker_package_fails_before_ray_starts(tmp_path):
    store = tmp_path / "store"
    # Python's own way to make `import mlflow` fail as if it were not installed.
    p = _cli_in_subprocess(["sweep", "run", "demo", "--smoke", "--tracker", "mlflow", "--storage", str(store)],
                           dict(os.environ), prelude='import sys; sys.modules["mlflow"] = None')
    assert json.loads(p.stdout.splitlines()[-1]) == {"code": 2, "ray_started": False}, p.stderr
    assert 'the mlflow package is not installed' in p.stderr and 'pip install "kdsweep[mlflow]"' in p.stderr
    assert "Traceback" not in p.stderr
    assert not store.exists()  # nothing written


def test_wandb_without_credentials_fails_before_ray_starts(tmp_path):
    store = tmp_path / "store"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"))  # no login anywhere
    p = _cli_in_subprocess(["sweep", "run", "demo", "--smoke", "--tracker", "wandb", "--storage", str(store)], env)
    assert json.loads(p.stdout.splitlines()[-1]) == {"code": 2, "ray_started": False}, p.stderr
    assert "tracking.tracker wandb" in p.stderr and "WANDB_MODE=offline" in p.stderr
    assert not store.exists()


# ---- W&B offline run files ------------------------------------------------------------------------
# `run-<id>.wandb`: a 7-byte header (":W&B", 0xBEE1, a version byte), then LevelDB-log framing in
# 32 KiB blocks (record header: crc32 u32, length u16, type u8; 1 full, 2 first, 3 middle, 4 last)
# around protobuf `Record`s. wandb 0.31 has no Python reader of its own (it lives in wandb-core).

def _wandb_records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def _wandb_run(path: Path) -> dict:
    run = {"history": [], "summary": {}, "files": set()}
    for r in _wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run" and "name" not in run:
            run.update(name=r.run.display_name, project=r.run.project, group=r.run.run_group, tags=list(r.run.tags),
                       job_type=r.run.job_type, config={i.key: json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "run":  # an update: the tags set when the trial ended
            run["tags"] = list(r.run.tags)
        elif kind == "history":
            run["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            run["summary"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update})
        elif kind == "files":
            run["files"] |= {f.path for f in r.files.files}
        elif kind == "exit":
            run["exit_code"] = r.exit.exit_code
    return run


@pytest.mark.ray
def test_mlflow_sweep_and_wandb_replicates(tmp_path, small_fasta, char_teacher):
    from mlflow.tracking import MlflowClient

    store = tmp_path / "store"
    space = write_small_space(tmp_path, "tracked", small_fasta, char_teacher, train={"max_steps": 8},
                              search={"trials_per_study": 2, "grace_period": 4}, tracking={"log_student": True})
    wandb_home = {k: str(tmp_path / k.lower()) for k in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")}
    with ray_subprocess_env(WANDB_MODE="offline", **wandb_home) as env:
        swept = run_kdsweep(["sweep", "run", str(space), "--storage", str(store), "--tracker", "mlflow"], env)
        replicated = run_kdsweep(["sweep", "replicate", "tracked", "--seeds", "1", "--no-ablations", "--storage",
                                  str(store), "--tracker", "wandb"], env)
    sd = SweepDir(store / "tracked")
    # the closing hints name each tracker's UI command
    assert f"mlflow ui --backend-store-uri sqlite:///{sd.mlflow_db}" in swept.stdout
    assert f"wandb sync {sd.wandb}/offline-run-*" in replicated.stdout
    # Tune's raw slow-callback warning never shows (kdsweep's own one-line rewording may, on a loaded
    # machine: whether a tracker write is slow is a timing, not something a test may assert).
    assert "which may be a performance bottleneck" not in swept.stdout + swept.stderr + replicated.stdout + replicated.stderr

    # MLflow: one run per trial in the sweep's experiment, named, tagged, with params and the val_ppl curve
    client = MlflowClient(f"sqlite:///{sd.mlflow_db}")
    experiment = client.get_experiment_by_name("tracked")
    assert experiment.artifact_location == sd.mlflow_artifacts.as_uri()
    runs = {r.data.tags["trial_id"]: r for r in client.search_runs([experiment.experiment_id])}
    trials = [(study, t) for study in STUDIES for t in open_study(sd.storage_url(), "tracked", study).get_trials()]
    assert sorted(runs) == sorted(t.user_attrs["ray_trial_id"] for _, t in trials)
    status = {"completed": "FINISHED", "stopped_early": "KILLED", "diverged": "FAILED", "failed": "FAILED"}
    for study, t in trials:
        trial_id, state = t.user_attrs["ray_trial_id"], t.user_attrs["status"]
        run, (scale, arm) = runs[trial_id], study.split("/")
        run_dir = sd.runs / trial_id
        assert run.info.run_name == f"{scale}_{arm}_{t.number}_{trial_id}" and run.info.status == status[state]
        assert {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")} == {
            "sweep": "tracked", "kind": "search", "study": study, "scale": scale, "arm": arm, "trial_id": trial_id,
            "state": state}
        # the whole resolved config: sampled values, fixed settings, the scale's dimensions, the seed
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert run.data.params["optuna_number"] == str(t.number)
        assert {k: run.data.params[k] for k in t.params} == {k: str(v) for k, v in t.params.items()}
        for key in ("max_steps", "batch_size", "block_size", "teacher", "seed", "eval_interval", "scale"):
            assert run.data.params[key] == str(config[key]), key
        assert int(run.data.params["n_layer"]) >= 1 and int(run.data.params["n_embd"]) >= 1
        finals = {"final/val_ppl", "final/min_val_ppl_seen", "final/step"} | (
            {"final/objective"} if state == "completed" else set())
        assert set(run.data.metrics) == set(CURVES) | finals
        if state == "completed":
            assert run.data.metrics["final/objective"] == pytest.approx(t.value)
        logged = [(r["step"], r["val_ppl"]) for r in eval_rows(run_dir)]
        history = client.get_metric_history(run.info.run_id, "val_ppl")
        assert [(m.step, pytest.approx(m.value)) for m in history] == logged
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "metrics.json", "metrics.jsonl"} <= artifacts
        assert ("student" in artifacts) == (state == "completed")  # tracking.log_student: true
        local = Path(client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path / "dl" / trial_id)))
        assert json.loads(local.read_text())["status"] == state

    # W&B offline: one run per replicate, grouped by sweep, tagged (state at the end), with the resolved
    # config, val_ppl against the step, the final metrics in the summary and the run's files saved
    files = sorted(sd.wandb.glob("offline-run-*/run-*.wandb"))
    assert len(files) == len(STUDIES)
    for path in files:
        run = _wandb_run(path)
        config = run["config"]
        assert (run["project"], run["group"], run["job_type"], run["exit_code"]) == ("kdsweep", "tracked", "replicates", 0)
        study, seed = config["study"], config["replicate_seed"]
        scale, arm = study.split("/")
        best = best_trial([t for s, t in trials if s == study])  # what a replicate retrains
        assert [seed] == load_space(sd.space).replicate_seeds(1)
        assert run["name"] == f"{scale}_{arm}_{best.number}_seed{seed}_{config['trial_id']}"
        assert run["tags"] == [scale, arm, study, "completed"]
        assert {k: config[k] for k in best.params} == best.params and config["sweep"] == "tracked"
        assert config["seed"] == seed and config["max_steps"] == 8 and config["final_eval"] is True
        run_dir = sd.replicate_dir(scale, arm, seed)
        logged = [(r["step"], r["val_ppl"]) for r in eval_rows(run_dir)]
        assert [(h["step"], pytest.approx(h["val_ppl"])) for h in run["history"]] == logged
        assert all(set(h) - {"step", "_step", "_runtime", "_timestamp"} == set(CURVES) for h in run["history"])
        assert run["summary"]["state"] == "completed"
        assert run["summary"]["final/objective"] == pytest.approx(logged[-1][1])
        assert {"config.yaml", "metrics.json", "metrics.jsonl", "student/model.safetensors"} <= run["files"]
        saved = path.parent / "files" / "metrics.json"
        assert json.loads(saved.read_text())["status"] == "completed"

    # TensorBoard: replicates in their own folder, the seeds of a (scale, arm) one HParams session group
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata as hp_metadata

    assert sorted(d.name for d in sd.tensorboard.iterdir()) == ["replicates", "search"]
    groups = []
    for run_dir in sorted((sd.tensorboard / "replicates").iterdir()):
        events = EventAccumulator(str(run_dir))
        events.Reload()
        start = hp_metadata.parse_session_start_info_plugin_data(
            events.PluginTagToContent("hparams")[hp_metadata.SESSION_START_INFO_TAG])
        groups.append(start.group_name)
        assert start.hparams["kind"].string_value == "replicates" and start.hparams["state"].string_value == "completed"
    assert sorted(groups) == sorted(STUDIES)
