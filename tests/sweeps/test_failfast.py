"""FailFast (sweeps/failfast.py) on the error files Tune writes: which failures stop a sweep, and when.

The callback is driven here the way Tune's controller calls it, with trials that carry what it reads
(the trial folder and the `error.txt` Tune appends each failure to). tests/sweeps/test_diskfull_ray.py
runs it inside a real sweep whose trials fill a real disk.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from kdsweep.distill.files.diskfull import DiskFull
from kdsweep.sweeps.failfast import FailFast, TrialsFailing, full_disk, signature

TRACE = "Failure # 1 (occurred at 2026-01-01_00-00-00)\nray::ImplicitFunc.train() (pid={pid}, ip=127.0.0.1)\n" \
        "  File \"/x/distill/train.py\", line 104, in run_training\n{last}\n"


def _trial(tmp_path, name: str, last: str):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "error.txt").write_text(TRACE.format(pid=hash(name) % 10000, last=last))
    return SimpleNamespace(error_file=str(folder / "error.txt"), local_path=str(folder))


def _fail(cb: FailFast, trial, final: bool = False):
    (cb.on_trial_error if final else cb.on_trial_recover)(iteration=1, trials=[], trial=trial)


def test_the_same_failure_three_times_stops_the_sweep_with_it(tmp_path):
    cb = FailFast("demo")
    for i in range(2):
        _fail(cb, _trial(tmp_path, f"t{i}", f"distill.errors.DataError: /data/run{i}/x.fasta: data file not found"))
    with pytest.raises(TrialsFailing, match=r"the first 3 trial attempts of sweep 'demo' all failed the same way.*"
                                            r"DataError: /data/run2/x.fasta: data file not found.*sweep resume demo"):
        _fail(cb, _trial(tmp_path, "t2", "distill.errors.DataError: /data/run2/x.fasta: data file not found"), True)
    assert TrialsFailing.exit_code == 1


def test_different_failures_or_a_trial_that_reports_do_not_stop_it(tmp_path):
    cb = FailFast("demo")
    for i, last in enumerate(["ValueError: a", "KeyError: 'b'", "ValueError: a", "ValueError: a"]):
        _fail(cb, _trial(tmp_path, f"t{i}", last))  # the first three differ: never stops afterwards
    cb = FailFast("demo")
    cb.on_trial_result(iteration=1, trials=[], trial=None, result={"val_ppl": 20.0})
    for i in range(4):
        _fail(cb, _trial(tmp_path, f"r{i}", "ValueError: a"))  # trials can train: failures are the trials' own


def test_a_full_disk_stops_the_sweep_at_once_naming_the_path(tmp_path):
    cb = FailFast("demo")
    trial = _trial(tmp_path, "t0", "OSError: [Errno 28] No space left on device: '/big/runs/t0/checkpoints'")
    with pytest.raises(DiskFull) as e:
        _fail(cb, trial)
    assert e.value.filename == "/big/runs/t0/checkpoints"
    assert str(e.value).startswith("no space left on the device of /big/runs/t0/checkpoints: trials of this sweep")
    sqlite = _trial(tmp_path, "t1", "sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) database or disk is full")
    with pytest.raises(DiskFull) as e:
        _fail(FailFast("demo"), sqlite)
    assert e.value.filename == sqlite.local_path  # no path in the message: the trial's folder


def test_signatures_blank_what_differs_between_trials():
    assert signature("OSError: [Errno 2] No such file: '/a/runs/3f2a9c1d/x'") == \
        signature("OSError: [Errno 2] No such file: '/a/runs/77aa0b12/x'")
    assert signature("ValueError: a") != signature("KeyError: 'a'")
    assert full_disk("RuntimeError: CUDA out of memory", "/x") is None
