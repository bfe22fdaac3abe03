"""Faults during `kdsweep train`, injected for real: Ctrl-C, a full disk, and starting over.

* Ctrl-C: SIGINT to the process group of a real `python -m kdsweep train` (what a terminal
  sends), mid-run; then the same command resumes from the last checkpoint.
* Disk full: the run folder on a real 450 KiB tmpfs, mounted in a private mount namespace
  (`unshare`, so nothing is mounted on the machine); the third checkpoint does not fit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdsweep.cli import main
from kdsweep.distill.run.checkpoint import list_checkpoints
from kdsweep.distill.run.rundir import CHECKPOINTS_DIR, eval_rows, read_log
from tests.fixtures import on_small_disk

# hash split: these runs are about faults, not homology, so they need no `mmseqs`
TINY = ["--set", "split_method=hash", "--set", "scale=null", "--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=16",
        "--set", "block_size=64", "--set", "batch_size=4", "--set", "micro_batch_size=2",
        "--set", "eval_interval=4", "--set", "val_max_proteins=8", "--set", "final_eval=false"]


def _train(teacher, data, out, steps: int, *extra) -> list[str]:
    return [sys.executable, "-m", "kdsweep", "train", "--set", f"teacher={teacher}", "--set", f"data={data}", *TINY,
            "--set", f"max_steps={steps}", *extra, "--out", str(out)]


def test_ctrl_c_during_train_says_how_to_resume_and_resume_works(tmp_path, char_teacher, small_fasta):
    out = tmp_path / "run"
    steps = 400  # ~8 ms a step on a fast CPU: 40 steps end 0.3 s after the first checkpoint
    cmd = _train(char_teacher, small_fasta, out, steps)
    # SIGINT at its default, as in a terminal's foreground job: a background job of a non-interactive shell
    # (`nohup pytest &`) inherits it ignored, and Python then never turns it into KeyboardInterrupt
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not list_checkpoints(out / CHECKPOINTS_DIR) and time.time() < deadline:
        assert p.poll() is None, p.communicate()
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGINT)  # Ctrl-C in a terminal signals the whole foreground group
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err  # one line (after transformers' own progress bars)
    assert err.strip().splitlines()[-1] == (f"kdsweep: interrupted; run the same command again to resume {out} "
                                            "from its last checkpoint")
    stopped_at = eval_rows(out)[-1]["step"]
    assert stopped_at < steps and not (out / "metrics.json").exists()

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    [resumed] = [r for r in read_log(out) if r.get("event") == "resumed"]
    assert 4 <= resumed["step"] <= stopped_at
    assert [r["step"] for r in eval_rows(out)] == list(range(4, steps + 1, 4))


def test_restart_flag_starts_a_changed_run_over(tmp_path, char_teacher, small_fasta, capsys):
    out = tmp_path / "run"
    base = [a for a in _train(char_teacher, small_fasta, out, 4)[3:]]  # the CLI arguments, in this process
    assert main(base) == 0
    changed = [*base[:-2], "--set", "lr=5e-3", "--out", str(out)]
    assert main(changed) == 2
    assert "holds a run with a different config: lr (0.001 -> 0.005)" in capsys.readouterr().err
    assert main([*changed, "--restart"]) == 0
    assert "lr: 0.005" in (out / "config.yaml").read_text()
    assert [r.get("event") for r in read_log(out)].count("start") == 1  # the old history is gone
    assert json.loads((out / "metrics.json").read_text())["status"] == "completed"


@pytest.fixture
def small_disk(tmp_path):
    """Run a shell script with a 450 KiB tmpfs at $DISK, in a private mount namespace."""
    return lambda script: on_small_disk(tmp_path, script)


def test_disk_full_is_a_clear_error_and_corrupts_nothing(tmp_path, small_disk, char_teacher, small_fasta):
    cmd = " ".join(_train(char_teacher, small_fasta, "$DISK/run", 16))
    seen = tmp_path / "seen"
    small_disk(f"""
{cmd} > {tmp_path}/full.out 2> {tmp_path}/full.err; echo $? > {tmp_path}/full.rc
cp -a $DISK/run {seen}-full
mount -o remount,size=64m $DISK          # space freed
{cmd} > {tmp_path}/again.out 2> {tmp_path}/again.err; echo $? > {tmp_path}/again.rc
cp -a $DISK/run {seen}-again
""")
    err = (tmp_path / "full.err").read_text()
    assert (tmp_path / "full.rc").read_text().strip() == "1", err
    assert err.strip().splitlines()[-1].startswith("kdsweep: error: no space left on the device writing")
    assert "Traceback" not in err
    full = Path(f"{seen}-full")
    # Nothing half-written: whole checkpoints only, no temp files, every log line parses.
    assert [c.name for c in list_checkpoints(full / CHECKPOINTS_DIR)] == ["step_0000004", "step_0000008"]
    assert sorted(p.name for p in (full / CHECKPOINTS_DIR).iterdir()) == ["step_0000004", "step_0000008"]
    assert not [f for f in full.rglob("*") if ".tmp" in f.name]
    lines = (full / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines) and not (full / "metrics.json").exists()

    assert (tmp_path / "again.rc").read_text().strip() == "0", (tmp_path / "again.err").read_text()
    again = Path(f"{seen}-again")
    [resumed] = [r for r in read_log(again) if r.get("event") == "resumed"]
    assert resumed["step"] == 8
    assert [r["step"] for r in eval_rows(again)] == [4, 8, 12, 16]
    assert json.loads((again / "metrics.json").read_text())["status"] == "completed"
