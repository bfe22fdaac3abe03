"""Real sweeps on a real local Ray cluster, real Optuna, the bundled demo teacher and real proteins.

Each sweep runs as a `kdsweep` subprocess with its own embedded Ray (so a test can
SIGKILL the driver like a user's crash would). RAY_TMPDIR points each at its own
short temp folder, removed afterwards, and leftover Ray processes are ended.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from kdsweep.cli import main
from kdsweep.distill.run.rundir import read_log
from kdsweep.distill.teacher.cache import read_manifest
from kdsweep.sweeps.layout import SweepDir
from kdsweep.sweeps.space import SEARCH_SPACES_DIR
from kdsweep.sweeps.study import ATTR_STATUS, ORPHANED, open_study
from kdsweep.sweeps.tracking import CURVES
from tests.fixtures import (SMALL_SPACE, eval_steps, kill_ray_processes, ray_subprocess_env, resumable_runs,
                            run_kdsweep, start_row, write_small_space)

pytestmark = pytest.mark.ray

SMOKE_STUDIES = [f"demo-xs/{arm}" for arm in ("baseline", "uncertainty", "calibration", "both")]


@pytest.fixture
def ray_env():
    with ray_subprocess_env() as env:
        yield env


def _trials(sd: SweepDir, study: str):
    return open_study(sd.storage_url(), sd.name, study).get_trials(deepcopy=False)


def _nonstandard_json(root: Path) -> list[str]:
    """kdsweep's JSON files under a sweep folder holding a token strict readers reject (Infinity, NaN).
    `tune/` and `train/` are Ray's own files (its experiment snapshot writes -Infinity for a trial
    that has not reported yet); only Tune reads them."""
    def reject(token):
        raise ValueError(token)

    bad = []
    for f in root.rglob("*.json*"):
        if f.relative_to(root).parts[0] in ("tune", "train"):
            continue
        for line in f.read_text().splitlines() if f.suffix == ".jsonl" else [f.read_text()]:
            try:
                json.loads(line, parse_constant=reject)
            except ValueError:
                bad.append(str(f))
    return bad


NAMESAKES = Path(sys.prefix) / "namesakes"  # PyPI's `sweeps` and `analysis`, put there by `setup.sh --tests`


def _with_namesakes_first(env: dict, cwd: Path) -> dict:
    """`env` with PyPI's `sweeps` and `analysis` ahead of everything else on the path (workers inherit it)."""
    assert (NAMESAKES / "sweeps").is_dir() and (NAMESAKES / "analysis").is_dir(), \
        f"{NAMESAKES} lacks PyPI's sweeps/analysis: run `bash scripts/setup.sh --tests`"
    env = dict(env, PYTHONPATH=str(NAMESAKES))
    probe = "import importlib.util as u; print(u.find_spec('sweeps').origin, u.find_spec('analysis').origin)"
    found = subprocess.run([sys.executable, "-c", probe], env=env, cwd=cwd, capture_output=True, text=True,
                           check=True).stdout.split()
    assert all(f.startswith(str(NAMESAKES)) for f in found), found  # the namesakes really are what `import` finds
    return env


def test_smoke_sweep_prunes_exports_and_round_trips(tmp_path, ray_env, monkeypatch):
    """Also the namespace test: PyPI's `sweeps` and `analysis` shadow those names in the driver and the
    workers (PYTHONPATH), run outside the repository; kdsweep's sweep and analysis never import them."""
    store = tmp_path / "store"
    shadowed = _with_namesakes_first(ray_env, tmp_path)
    t0 = time.time()
    p = run_kdsweep(["sweep", "run", str(SEARCH_SPACES_DIR / "demo.yaml"), "--smoke", "--storage", str(store)],
                    shadowed, cwd=tmp_path)
    elapsed = time.time() - t0
    assert "best objective" in p.stdout and "kdsweep sweep export" in p.stdout  # status table + next steps
    sd = SweepDir(store / "demo-smoke")
    _check_console(p, sd, elapsed)
    _check_tensorboard(sd)
    pruned, completed = [], []
    for arm in ("baseline", "uncertainty", "calibration", "both"):
        trials = _trials(sd, f"demo-xs/{arm}")
        assert len(trials) == 3 and all(t.state.is_finished() for t in trials)
        pruned += [t for t in trials if t.state == TrialState.PRUNED]
        completed += [t for t in trials if t.state == TrialState.COMPLETE]
        for t in trials:
            smoothing_sampled = "smoothing" in t.params
            assert smoothing_sampled == (arm in ("calibration", "both"))
    assert pruned, "ASHA stopped no trial early"
    for t in pruned:
        # Pruned, not COMPLETE with a partial score; its intermediate values are kept.
        assert t.user_attrs[ATTR_STATUS] == "stopped_early"
        assert t.intermediate_values and max(t.intermediate_values) < 16
        run = sd.runs / t.user_attrs["ray_trial_id"]
        steps = eval_steps(run)
        assert steps and max(steps) < 16  # it really stopped training
        # its run folder says so too (written by the driver: the trial's process was ended)
        summary = json.loads((run / "metrics.json").read_text())
        assert summary["status"] == "stopped_early" and summary["step"] == max(t.intermediate_values)
    for t in completed:
        assert max(t.intermediate_values) == 16
        assert t.value == t.intermediate_values[16]  # the objective is the final model's val_ppl
        # The smoke space has an ASHA rung at its last step (4, 8, 16 = max_t): no completed trial
        # may lose its outputs to a stop at its final report.
        run = sd.runs / t.user_attrs["ray_trial_id"]
        summary = json.loads((run / "metrics.json").read_text())
        assert summary["status"] == "completed" and summary["val_ppl"] == t.value
        assert (run / "student" / "model.safetensors").is_file()

    # status is served from the storage alone
    out = run_kdsweep(["sweep", "status", "demo-smoke", "--storage", str(store), "--json"], shadowed,
                      cwd=tmp_path).stdout
    rows = json.loads(out)
    assert sum(r["stopped_early"] for r in rows) == len(pruned) and sum(r["completed"] for r in rows) == len(completed)

    run_kdsweep(["analyze", "demo-smoke", "--storage", str(store)], shadowed, cwd=tmp_path)
    assert (sd.analysis / "index.html").is_file()

    # export -> `kdsweep train --config` unchanged
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "export", "demo-smoke", "--storage", str(store), "--out", "best"]) == 0
    exported = sorted((tmp_path / "best").glob("*.yaml"))
    assert exported
    cfg = yaml.safe_load(exported[0].read_text())
    prov = cfg["provenance"]
    for key in ("sweep", "trial_id", "val_ppl", "step", "git_commit", "teacher", "data_sha256"):
        assert prov.get(key) not in (None, ""), key
    # (a short aa_kl sample: the final eval's 10,000 default residues are minutes of generation on 2 shared cores)
    assert main(["train", "--config", str(exported[0]), "--set", "gen_min_residues=200"]) == 0
    assert cfg["output_dir"] == str(tmp_path / "best" / f"{exported[0].stem.replace('__', '_')}" / "final")
    summary = json.loads((Path(cfg["output_dir"]) / "metrics.json").read_text())
    assert summary["status"] == "completed"  # the final model, with held-out metrics (final_eval: true)
    assert summary["val"]["n_proteins"] > 0 and summary["test"]["n_proteins"] > 0


def _check_console(p: subprocess.CompletedProcess, sd: SweepDir, elapsed: float) -> None:
    """Not a terminal: one line per ended trial, in the states Optuna holds, bounded summaries, nothing misleading."""
    lines = p.stdout.splitlines()
    ended = [m.groups() for line in lines if (m := re.match(r"\d\d:\d\d:\d\d  \d+/12 (\w+) (\S+) (\w+) step ", line))]
    summaries = [line for line in lines if re.match(r"\d\d:\d\d:\d\d  \[\d+/12 ended\] elapsed ", line)]
    assert len(ended) == 12, p.stdout
    assert 1 <= len(summaries) <= 2 + elapsed // 300  # every 5 minutes, and at the end
    cache = [line for line in lines if line.startswith("teacher cache: ")]
    assert len(cache) <= 4, p.stdout  # size before building, where it builds, built in, verified on the nodes
    # the build's progress: about one line per 30 s of it
    progress = [line for line in lines if re.match(r"\d\d:\d\d:\d\d  teacher cache: \d+% ", line)]
    assert len(progress) <= 1 + elapsed // 30, p.stdout
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert len(warnings) <= 2, p.stdout
    # + the checking line, the sweep line, status table (5), next steps (6: results + 5 commands)
    assert len(lines) <= len(ended) + len(summaries) + len(cache) + len(progress) + len(warnings) + 14, p.stdout
    told = {t.user_attrs["ray_trial_id"]: (study, t.user_attrs[ATTR_STATUS])
            for study in SMOKE_STUDIES for t in _trials(sd, study)}
    assert {trial: (study, state) for trial, study, state in ended} == told
    console = p.stdout + p.stderr
    for misleading in ("9223372036854775807", "/tmp/ray/session", "RAY_AUTH_MODE=disabled", "tensorboard --logdir",
                       "TERMINATED"):
        assert misleading not in console, misleading


def _check_tensorboard(sd: SweepDir) -> None:
    """One TensorBoard run per trial, `search/<scale>_<arm>_<n>_<trial id>`, with kdsweep's metrics at the
    training steps the run logged (not Tune's iterations), none of Tune's bookkeeping, and an HParams
    session: scale, arm, state, sampled and fixed settings -> final val_ppl (objective when completed)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata as hp_metadata

    trials = {t.user_attrs["ray_trial_id"]: (study, t) for study in SMOKE_STUDIES for t in _trials(sd, study)}
    expected = {f"demo-xs_{study.split('/')[1]}_{t.number}_{trial_id}": trial_id for trial_id, (study, t) in trials.items()}
    assert [d.name for d in sd.tensorboard.iterdir()] == ["search"]  # replicates get their own folder
    assert sorted(d.name for d in (sd.tensorboard / "search").iterdir()) == sorted(expected)
    for name, trial_id in expected.items():
        study, t = trials[trial_id]
        events = EventAccumulator(str(sd.tensorboard / "search" / name))
        events.Reload()
        finals = {"final/val_ppl", "final/min_val_ppl_seen", "final/step"} | (
            {"final/objective"} if t.state == TrialState.COMPLETE else set())
        assert set(events.Tags()["scalars"]) == set(CURVES) | finals, name
        logged = [(r["step"], r["val_ppl"]) for r in read_log(sd.runs / trial_id) if "val_ppl" in r and "event" not in r]
        assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("val_ppl")] == logged, name
        assert events.Scalars("final/val_ppl")[-1].value == pytest.approx(logged[-1][1])
        if t.state == TrialState.COMPLETE:
            assert events.Scalars("final/objective")[-1].value == pytest.approx(t.value)  # what Optuna holds
        start = hp_metadata.parse_session_start_info_plugin_data(
            events.PluginTagToContent("hparams")[hp_metadata.SESSION_START_INFO_TAG])
        hp = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
        assert {k: hp[k] for k in ("kind", "scale", "arm", "state", "optuna_number")} == {
            "kind": "search", "scale": "demo-xs", "arm": study.split("/")[1], "state": t.user_attrs[ATTR_STATUS],
            "optuna_number": t.number}
        assert all(hp[k] == pytest.approx(v) for k, v in t.params.items())  # sampled
        assert (hp["max_steps"], hp["block_size"], hp["teacher"]) == (16, 256, "demo") and hp["n_layer"] >= 1  # fixed
    assert not list(sd.tune.rglob("events.out.tfevents*"))  # Tune's own TensorBoard logger is off


def test_sigkill_driver_then_resume(tmp_path, ray_env, small_fasta, char_teacher):
    store = tmp_path / "store"
    # Long enough trials (60 steps) that the kill lands mid-trial.
    space = write_small_space(tmp_path, "killme", small_fasta, char_teacher, train={"max_steps": 60, "block_size": 256})
    cmd = [sys.executable, "-m", "kdsweep", "sweep", "run", str(space), "--storage", str(store)]
    driver = subprocess.Popen(cmd, env=ray_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sd = SweepDir(store / "killme")
    studies = ("demo-xs/baseline", "demo-xs/both")
    deadline = time.time() + 600
    # Kill once one trial has ended and another is mid-way: held by Tune's saved snapshot as
    # unfinished with a checkpoint (so a resume continues it), past ASHA's first rung (step 8;
    # rungs are at 8, 16, 32) and not at one, so no stop decision races the kill.
    while time.time() < deadline:
        time.sleep(0.2)
        assert driver.poll() is None, "the sweep ended before it could be killed"
        if not sd.meta_path.exists() or not sd.runs.is_dir():
            continue
        ended = [t for st in studies for t in _trials(sd, st) if t.state.is_finished()]
        midway = [d for d in resumable_runs(sd) if (steps := eval_steps(d)) and 8 < steps[-1] < 56 and steps[-1] % 8]
        if ended and midway:
            break
    else:
        pytest.fail("sweep never reached a killable state")
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    kill_ray_processes(ray_env["RAY_TMPDIR"])
    # Decided after the kill, from the record: ended = its run finished or Optuna was told it
    # ended (a stopped-early run has no metrics.json); interrupted = what Tune's snapshot resumes.
    told = {t.user_attrs["ray_trial_id"] for st in studies for t in _trials(sd, st) if t.state.is_finished()}
    ended = [d for d in sd.runs.iterdir() if (d / "metrics.json").is_file() or d.name in told]
    interrupted = [d for d in resumable_runs(sd) if d not in ended and eval_steps(d)]
    assert ended and interrupted
    before = {d.name: (d / "metrics.jsonl").read_text() for d in ended}

    run_kdsweep(["sweep", "resume", "killme", "--storage", str(store)], ray_env)

    run_ids = []
    for study in studies:
        trials = [t for t in _trials(sd, study) if t.user_attrs.get(ATTR_STATUS) != ORPHANED]
        assert len(trials) == 3, study  # every planned trial ran, once
        assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        run_ids += [t.user_attrs["ray_trial_id"] for t in trials]
    assert len(set(run_ids)) == 6
    for name, text in before.items():
        assert (sd.runs / name / "metrics.jsonl").read_text() == text  # finished earlier: not rerun
    for rid in run_ids:
        steps = eval_steps(sd.runs / rid)
        assert steps == list(range(4, steps[-1] + 1, 4)), (rid, steps)  # complete history, no gap, no duplicate
    for d in interrupted:  # continued from its checkpoint, not from scratch
        assert any(r.get("event") == "resumed" and r["step"] > 0 for r in read_log(d)), d.name


def test_ray_train_executor_and_diverged_trial(tmp_path, ray_env, small_fasta, char_teacher):
    """Train V2 TorchTrainer trials end to end; one scale's absurd lr really diverges, the other completes."""
    store = tmp_path / "store"
    space = write_small_space(
        tmp_path, "train-path", small_fasta, char_teacher,
        scales=["demo-xs", "demo-s"], arms=["baseline"],
        params={k: v for k, v in SMALL_SPACE["params"].items() if k != "smoothing"},
        scale_params={"demo-s": {"lr": {"type": "choice", "values": [1.0e30]}}},
        train={"max_steps": 8, "eval_interval": 4},
        search={"trials_per_study": 1, "max_concurrent": 1, "executor": "ray_train", "max_failures": 0},
    )
    run_kdsweep(["sweep", "run", str(space), "--storage", str(store)], ray_env)
    sd = SweepDir(store / "train-path")
    [ok] = _trials(sd, "demo-xs/baseline")
    [bad] = _trials(sd, "demo-s/baseline")
    assert ok.state == TrialState.COMPLETE and ok.value > 1
    assert eval_steps(sd.runs / ok.user_attrs["ray_trial_id"]) == [4, 8]
    # the ray_train executor's worker read the sweep's teacher cache, like the local executor's trials
    assert start_row(sd.runs / ok.user_attrs["ray_trial_id"])["teacher"] == \
        f"cache {read_manifest(sd.meta().teacher_cache)['key_digest']} {sd.meta().teacher_cache}"
    assert bad.state == TrialState.PRUNED and bad.user_attrs[ATTR_STATUS] == "diverged"
    assert bad.constraints == {"diverged": 1.0}
    summary = json.loads((sd.runs / bad.user_attrs["ray_trial_id"] / "metrics.json").read_text())
    assert summary["status"] == "diverged" and summary["step"] == bad.user_attrs["step"] == 1
    assert (sd.root / "train" / f"train-{ok.user_attrs['ray_trial_id']}").is_dir()  # a real Ray Train run
    assert _nonstandard_json(sd.root) == []  # the diverged run's inf values are written as "inf"
