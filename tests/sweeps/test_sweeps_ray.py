"""Real sweeps on a real local Ray cluster, real Optuna, the bundled demo teacher and real proteins.

Each sweep runs as a `kdsweep` subprocess with its own embedded Ray (so a test can
SIGKILL the driver like a user's crash would). RAY_TMPDIR points each at its own
short temp folder, removed afterwards, and leftover Ray processes are ended.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from distill.rundir import read_log
from kdsweep.cli import main
from sweeps.layout import SweepDir
from sweeps.runner import tune_unfinished
from sweeps.study import ATTR_STATUS, ORPHANED, open_study
from sweeps.space import SEARCH_SPACES_DIR
from tests.fixtures import kill_ray_processes, ray_subprocess_env

pytestmark = pytest.mark.ray

SMALL_SPACE = {
    "scales": ["demo-xs"],
    "arms": ["baseline", "both"],
    "params": {
        "lr": {"type": "loguniform", "low": 1e-3, "high": 2e-2},
        "warmup_steps": {"type": "int", "low": 0, "high": 4},
        "temperature": {"type": "uniform", "low": 1.0, "high": 4.0},
        "alpha": {"type": "uniform", "low": 0.1, "high": 0.9},
        "smoothing": {"type": "loguniform", "low": 0.01, "high": 0.2},
    },
    # hash split: user FASTA under the cluster split needs `mmseqs`, which these tests are not about
    "train": {"split_method": "hash", "max_steps": 24, "eval_interval": 4, "batch_size": 4, "micro_batch_size": 4, "block_size": 128,
              "val_max_proteins": 16, "eval_batch_size": 16, "final_eval": False},
    "search": {"trials_per_study": 3, "max_concurrent": 2, "grace_period": 8, "reduction_factor": 2},
}


@pytest.fixture
def ray_env():
    with ray_subprocess_env() as env:
        yield env


def _space_file(tmp_path: Path, name: str, data: Path, teacher: Path, **overrides) -> Path:
    raw = json.loads(json.dumps(SMALL_SPACE))
    raw.update(name=name, data=str(data), teacher=str(teacher))
    for k, v in overrides.items():
        raw[k] = {**raw[k], **v} if k in ("train", "search") else v  # sections merge, the rest replace
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _kdsweep(args, env, timeout=900) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "kdsweep", *args], env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def _trials(sd: SweepDir, study: str):
    return open_study(sd.storage_url(), sd.name, study).get_trials(deepcopy=False)


def _eval_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in read_log(run_dir) if "val_ppl" in r and "event" not in r]


def _resumable(sd: SweepDir) -> list[Path]:
    """Run folders of the trials Tune's saved snapshot holds as unfinished with a checkpoint."""
    try:  # the snapshot is rewritten while the sweep runs: a half-written one is read next time
        trials = tune_unfinished(sd)
    except Exception:
        return []
    return [sd.runs / t.trial_id for t in trials if t.checkpoint]


def test_smoke_sweep_prunes_exports_and_round_trips(tmp_path, ray_env, monkeypatch):
    store = tmp_path / "store"
    p = _kdsweep(["sweep", "run", str(SEARCH_SPACES_DIR / "demo.yaml"), "--smoke", "--storage", str(store)], ray_env)
    assert "best val_ppl" in p.stdout and "kdsweep sweep export" in p.stdout  # status table + next steps
    sd = SweepDir(store / "demo-smoke")
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
        steps = _eval_steps(run)
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
    out = _kdsweep(["sweep", "status", "demo-smoke", "--storage", str(store), "--json"], ray_env).stdout
    rows = json.loads(out)
    assert sum(r["stopped_early"] for r in rows) == len(pruned) and sum(r["completed"] for r in rows) == len(completed)

    # export -> `kdsweep train --config` unchanged
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "export", "demo-smoke", "--storage", str(store), "--out", "best"]) == 0
    exported = sorted((tmp_path / "best").glob("*.yaml"))
    assert exported
    cfg = yaml.safe_load(exported[0].read_text())
    prov = cfg["provenance"]
    for key in ("sweep", "trial_id", "val_ppl", "step", "git_commit", "teacher", "data_sha256"):
        assert prov.get(key) not in (None, ""), key
    assert main(["train", "--config", str(exported[0])]) == 0
    summary = json.loads((tmp_path / cfg["output_dir"] / "metrics.json").read_text())
    assert summary["status"] == "completed"


def test_sigkill_driver_then_resume(tmp_path, ray_env, small_fasta, char_teacher):
    store = tmp_path / "store"
    # Long enough trials (60 steps) that the kill lands mid-trial.
    space = _space_file(tmp_path, "killme", small_fasta, char_teacher, train={"max_steps": 60, "block_size": 256})
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
        midway = [d for d in _resumable(sd) if (steps := _eval_steps(d)) and 8 < steps[-1] < 56 and steps[-1] % 8]
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
    interrupted = [d for d in _resumable(sd) if d not in ended and _eval_steps(d)]
    assert ended and interrupted
    before = {d.name: (d / "metrics.jsonl").read_text() for d in ended}

    _kdsweep(["sweep", "resume", "killme", "--storage", str(store)], ray_env)

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
        steps = _eval_steps(sd.runs / rid)
        assert steps == list(range(4, steps[-1] + 1, 4)), (rid, steps)  # complete history, no gap, no duplicate
    for d in interrupted:  # continued from its checkpoint, not from scratch
        assert any(r.get("event") == "resumed" and r["step"] > 0 for r in read_log(d)), d.name


def test_ray_train_executor_and_diverged_trial(tmp_path, ray_env, small_fasta, char_teacher):
    """Train V2 TorchTrainer trials end to end; one scale's absurd lr really diverges, the other completes."""
    store = tmp_path / "store"
    space = _space_file(
        tmp_path, "train-path", small_fasta, char_teacher,
        scales=["demo-xs", "demo-s"], arms=["baseline"],
        params={k: v for k, v in SMALL_SPACE["params"].items() if k != "smoothing"},
        scale_params={"demo-s": {"lr": {"type": "choice", "values": [1.0e30]}}},
        train={"max_steps": 8, "eval_interval": 4},
        search={"trials_per_study": 1, "max_concurrent": 1, "executor": "ray_train", "max_failures": 0},
    )
    _kdsweep(["sweep", "run", str(space), "--storage", str(store)], ray_env)
    sd = SweepDir(store / "train-path")
    [ok] = _trials(sd, "demo-xs/baseline")
    [bad] = _trials(sd, "demo-s/baseline")
    assert ok.state == TrialState.COMPLETE and ok.value > 1
    assert _eval_steps(sd.runs / ok.user_attrs["ray_trial_id"]) == [4, 8]
    assert bad.state == TrialState.PRUNED and bad.user_attrs[ATTR_STATUS] == "diverged"
    assert bad.constraints == {"diverged": 1.0}
    summary = json.loads((sd.runs / bad.user_attrs["ray_trial_id"] / "metrics.json").read_text())
    assert summary["status"] == "diverged" and summary["step"] == bad.user_attrs["step"] == 1
    assert (sd.root / "train" / f"train-{ok.user_attrs['ray_trial_id']}").is_dir()  # a real Ray Train run
