"""The closing hints of `sweep run` / `sweep resume`: runnable as printed, in the workflow's order."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from kdsweep.sweeps.layout import SweepDir
from kdsweep.sweeps.runner import next_steps
from kdsweep.sweeps.textfit import kdsweep_command
from kdsweep.sweeps.space import SEARCH_SPACES_DIR

SCRIPT = Path(sys.executable).parent / "kdsweep"


def test_kdsweep_is_named_as_this_shell_can_run_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # not activated: the script's own path
    monkeypatch.chdir(tmp_path)
    assert kdsweep_command() == str(SCRIPT)
    monkeypatch.chdir(SCRIPT.parent.parent)  # beside the venv: the short relative path
    assert kdsweep_command() == os.path.join("bin", "kdsweep")
    monkeypatch.setenv("PATH", f"{SCRIPT.parent}:/usr/bin:/bin")  # activated: the bare name
    assert kdsweep_command() == "kdsweep"


def test_next_steps_run_as_printed_and_reach_analyze(tmp_path, monkeypatch):
    sd = SweepDir(tmp_path / "store" / "demo")
    sd.root.mkdir(parents=True)
    shutil.copy(SEARCH_SPACES_DIR / "demo.yaml", sd.space)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.chdir(tmp_path)
    lines = next_steps(sd, str(tmp_path / "store")).splitlines()
    commands = [line.split("#")[0].split() for line in lines[1:]]
    assert lines[0] == f"results: {sd.root}"
    assert [c[1] for c in commands] == ["sweep", "dashboard", "sweep", "analyze", "sweep"]
    assert [c[2] for c in commands if c[1] == "sweep"] == ["status", "replicate", "export"]
    assert all(c[0] == str(SCRIPT) for c in commands)
    # the first one runs as printed from a shell without the venv on PATH: kdsweep itself answers (this
    # folder holds a space but no sweep.json, so it is not a sweep yet)
    status = subprocess.run(commands[0], capture_output=True, text=True, env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert status.returncode == 2 and status.stderr.startswith("kdsweep: error: sweep 'demo'"), status.stderr
