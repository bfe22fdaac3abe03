"""Driver faults over one sweep's life, each followed by `kdsweep sweep resume`:

1. SIGKILL before the first report (a trial has started, nothing reported);
2. Ctrl-C (SIGINT to the driver's process group, as a terminal sends it) mid-sweep;
3. SIGKILL after the last trial finished training, before the driver marked the sweep finished.

After each kill no Ray process of that driver may be left running. (SIGKILL mid-sweep is
tests/sweeps/test_sweeps_ray.py::test_sigkill_driver_then_resume.)
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from optuna.trial import TrialState

from kdsweep.distill.run.rundir import read_log
from kdsweep.sweeps.layout import SweepDir
from kdsweep.sweeps.study import ATTR_STATUS, ORPHANED, open_study
from tests.fixtures import SMALL_SPACE, eval_steps, ray_processes, ray_subprocess_env, write_small_space

pytestmark = pytest.mark.ray
STEPS = 16
STUDY = "demo-xs/baseline"


def _trials(sd: SweepDir):
    if not sd.default_db.is_file():
        return []
    return [t for t in open_study(sd.storage_url(), sd.name, STUDY).get_trials()
            if t.user_attrs.get(ATTR_STATUS) != ORPHANED]


def _wait(driver, ready, what: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:  # polled every 50 ms: the last window (3.) lasts about a second
        assert driver.poll() is None, f"the driver ended before {what}: {driver.stdout.read()[-3000:]}"
        try:
            if ready():
                return
        except Exception:  # files being written while read
            pass
        time.sleep(0.05)
    pytest.fail(f"never reached: {what}")


def _gone_after_kill(env: dict) -> float:
    """Seconds until no process of the killed driver's Ray is left (fails after 60 s)."""
    t0 = time.time()
    while (left := ray_processes(env["RAY_TMPDIR"])) and time.time() - t0 < 60:
        time.sleep(0.5)
    assert left == [], f"Ray processes of the killed driver still running after 60 s: {left}"
    return time.time() - t0


def test_driver_faults_at_three_points_then_resume(tmp_path, small_fasta, char_teacher):
    store = tmp_path / "store"
    space = write_small_space(tmp_path, "faults", small_fasta, char_teacher, arms=["baseline"],
                        params={k: v for k, v in SMALL_SPACE["params"].items() if k != "smoothing"},
                        train={"max_steps": STEPS, "eval_interval": 4, "block_size": 256},
                        search={"trials_per_study": 2, "max_concurrent": 1, "grace_period": STEPS})
    sd = SweepDir(store / "faults")
    resume = [sys.executable, "-m", "kdsweep", "sweep", "resume", "faults", "--storage", str(store)]
    figures = {}

    def start(cmd, env):
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)

    # 1. SIGKILL before the first report: a run folder exists, no evaluation yet.
    with ray_subprocess_env() as env:
        d = start([sys.executable, "-m", "kdsweep", "sweep", "run", str(space), "--storage", str(store)], env)
        _wait(d, lambda: any(run.is_dir() and not eval_steps(run) for run in sd.runs.iterdir()), "a trial started")
        d.kill()
        d.wait()
        figures["kill 1: Ray gone after s"] = _gone_after_kill(env)

    # 2. Ctrl-C mid-sweep: exit 130, one line saying how to resume, the sweep not marked finished.
    with ray_subprocess_env() as env:
        d = start(resume, env)
        _wait(d, lambda: any(len(eval_steps(run)) >= 2 for run in sd.runs.iterdir()), "a trial mid-way")
        os.killpg(d.pid, signal.SIGINT)
        _, err = d.communicate(timeout=300)
        assert d.returncode == 130, err[-3000:]
        assert "Traceback" not in err
        last = err.strip().splitlines()[-1]
        # `kdsweep`, or the venv's script when it is not on PATH: runnable as printed
        assert re.fullmatch(rf"kdsweep: interrupted; continue with: \S*kdsweep sweep resume faults --storage {re.escape(str(store))}",
                            last), last
        assert json.loads(sd.meta_path.read_text())["state"] == "running"
        figures["Ctrl-C: Ray gone after s"] = _gone_after_kill(env)

    # 3. SIGKILL after the last trial finished training (its last evaluation logged), before the
    #    driver has recorded it and marked the sweep finished.
    with ray_subprocess_env() as env:
        d = start(resume, env)
        _wait(d, lambda: len(_trials(sd)) == 2 and all(
            eval_steps(sd.runs / t.user_attrs["ray_trial_id"])[-1:] == [STEPS] for t in _trials(sd)),
              "every trial at its last step")
        d.kill()
        d.wait()
        assert json.loads(sd.meta_path.read_text())["state"] == "running"
        figures["kill 3: Ray gone after s"] = _gone_after_kill(env)

    with ray_subprocess_env() as env:
        t0 = time.time()
        p = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=600)
        figures["final resume s"] = time.time() - t0
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    print("\n" + json.dumps({k: round(v, 1) for k, v in figures.items()}))

    trials = _trials(sd)
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        run = sd.runs / t.user_attrs["ray_trial_id"]
        assert eval_steps(run) == list(range(4, STEPS + 1, 4)), run.name  # every step once
    assert json.loads(sd.meta_path.read_text())["state"] == "finished"
    resumed = [r for run in sd.runs.iterdir() for r in read_log(run) if r.get("event") == "resumed"]
    assert resumed, "no trial continued from a checkpoint after Ctrl-C"
