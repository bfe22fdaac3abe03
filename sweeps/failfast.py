"""Stop a sweep whose trials cannot succeed, with the reason, instead of failing every trial.

Preflight (sweeps/preflight.py) checks what it can before Ray starts, but some failures only
show in a trial: the disk fills up under the trials' checkpoints, a file vanishes, a node
lacks a library. Tune then retries each trial `search.max_failures` times and starts the
next, and a 12-trial sweep ends after every attempt failed the same way ("exit 0 with 12
failed trials", or a `WorkerCrashedError` line far from the cause).

`FailFast`, a Tune callback in the driver, reads each failed attempt's error (the last line
of Tune's `error.txt` for the trial):

* a full disk (ENOSPC, SQLite's "database or disk is full") stops the sweep at once with
  `DiskFull` naming the path: nothing on that disk can succeed until space is freed;
* otherwise, when the first FIRST_ATTEMPTS attempts of the sweep all failed the same way
  (the same exception and message once paths and numbers are blanked) and no trial has
  reported a result yet, the sweep stops with `TrialsFailing` quoting that error.

Raised from the callback, the error leaves `Tuner.fit` (Tune stops its trials first);
nothing is lost: Tune's snapshot and the Optuna studies hold what ran, and once the cause
is fixed `kdsweep sweep resume` continues the sweep.
"""

from __future__ import annotations

import re
from pathlib import Path

from ray.tune import Callback

from kdsweep.distill.errors import KDSweepError
from kdsweep.distill.files.diskfull import DiskFull

FIRST_ATTEMPTS = 3
# "[Errno 28] No space left on device: '/path'" (ENOSPC; 122 is EDQUOT), kdsweep's own wording, SQLite's.
_FULL = re.compile(r"\[Errno (?:28|122)\][^'\n]*(?:'(?P<path>[^']*)')?|no space left on the device"
                   r"(?: (?:writing|of) (?P<ours>\S+?)[;:])?|database or disk is full")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"0x[0-9a-fA-F]+|[0-9a-f]{8,}|\d+(?:\.\d+)?")


class TrialsFailing(KDSweepError):
    """The first attempts of a sweep all failed the same way (exit 1: not an input the checks caught)."""

    exit_code = 1


def last_error_line(error_file: str | Path | None) -> str:
    """The last line of the last failure Tune recorded for a trial: its exception and message."""
    if not error_file or not Path(error_file).is_file():
        return "unknown error (Tune recorded none)"
    lines = [line.strip() for line in Path(error_file).read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error (Tune recorded none)"


def signature(line: str) -> str:
    """`line` with what differs between trials blanked (paths and other quoted values, numbers, ids)."""
    return _NUMBER.sub("N", _QUOTED.sub("'…'", line))


def full_disk(line: str, where: str) -> DiskFull | None:
    """A DiskFull for an error line that says the disk is full (None otherwise); `where` stands in
    for the path when the line names none."""
    m = _FULL.search(line)
    if m is None:
        return None
    path = m.group("path") or m.group("ours") or where
    return DiskFull(path, f"trials of this sweep fail writing there ({line[:200]}); free space, then continue "
                          "with `kdsweep sweep resume` (replicates: `sweep replicate` again)")


class FailFast(Callback):
    def __init__(self, sweep: str, first: int = FIRST_ATTEMPTS):
        self.sweep, self.first = sweep, first
        self.failures: list[str] = []
        self.reported = False

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.reported = True  # a trial that reports can train: the sweep is not doomed

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._failed(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._failed(trial)

    def _failed(self, trial) -> None:
        line = last_error_line(trial.error_file)
        if (disk := full_disk(line, trial.local_path or self.sweep)) is not None:
            raise disk
        if self.reported:
            return
        self.failures.append(signature(line))
        if len(self.failures) >= self.first and len(set(self.failures[: self.first])) == 1:
            raise TrialsFailing(
                f"the first {self.first} trial attempts of sweep {self.sweep!r} all failed the same way, so the "
                f"rest would too; stopped. The error: {line[:300]} (in full: {trial.error_file}). Fix its cause, "
                f"then continue with `kdsweep sweep resume {self.sweep}` (replicates: `sweep replicate` again)")
