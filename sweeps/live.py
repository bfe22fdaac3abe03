"""The live view of a running sweep or replicate run (a Tune callback).

At every Tune event it turns Tune's trials into a `sweeps.progress.Progress` and hands
it to a renderer (`sweeps.console`): an in-place view when stdout is a terminal, one
line per ended trial plus periodic summaries otherwise. A trial's state is the
`sweeps.study` vocabulary, derived from its last result (`distill.run.rundir.TrainReport.ended_as`)
and Tune's status, never Tune's raw TERMINATED (which covers completed and stopped
early alike); a trial Tune created but has not started yet is `starting`.

The view times each trial itself, from the moment Tune created it, at each of its reports,
to its end: Tune's own `time_total_s` leaves out the trial's start-up (a new process,
imports, the teacher), which the ETA needs (`sweeps.progress.Progress.eta_s`).

Tune pickles its callbacks with the experiment and a resumed sweep uses the pickled
ones: the renderer and the output stream are therefore chosen in `setup`, at each start.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import TextIO

from ray.tune import Callback
from ray.tune.experiment import Trial

from kdsweep.distill.run.rundir import TrainReport
from kdsweep.sweeps.console import LineRenderer, LiveRenderer, is_interactive
from kdsweep.sweeps.progress import STARTING, EarlyStopping, Progress, TrialRow
from kdsweep.sweeps.study import ENDED_STATES, FAILED, RUNNING
from kdsweep.sweeps.tracking import sampled, trial_config

REDRAW_S = 1.0  # between two redraws of the view (Tune's loop steps far more often)
# Where Tune logs its "may be a performance bottleneck" warnings (ray.tune.utils.warn_if_slow).
SLOW_LOGGERS = ("ray.tune.utils.util", "ray.tune.execution.tune_controller")
SLOW = re.compile(r"(?:The `(?P<name>[^`]+)` operation|(?P<what>Processing trial results)) took (?P<s>[\d.]+) s, "
                  r"which may be a performance bottleneck")


class SlowStepNote(logging.Filter):
    """Tune warns each time one step of its driver loop takes over 0.5 s; with a tracker on, whose
    callback writes every result, that is most results. The first warning is explained once,
    through the view; the rest are dropped."""

    def __init__(self, note):
        super().__init__()
        self.note, self.told = note, False

    def filter(self, record: logging.LogRecord) -> bool:
        m = SLOW.search(record.getMessage())
        if m is None:
            return True
        if not self.told:
            self.told = True
            self.note(f"note: Ray Tune's driver loop spent {float(m['s']):.1f} s in "
                      f"{m['name'] or m['what'].lower()} (Tune calls this a possible performance bottleneck): "
                      "its handling of a result or checkpoint, with an experiment tracker mostly the tracker "
                      "writing it; it delays the sweep by that much per result at most. Further such warnings "
                      "are not shown.")
        return False


def trial_state(trial: Trial) -> str:
    if trial.status == Trial.ERROR:
        return FAILED
    if trial.status == Trial.TERMINATED:
        return TrainReport.from_row(trial.last_result).ended_as
    return STARTING if trial.status == Trial.PENDING else RUNNING


def trial_row(trial: Trial, state: str, started_s: float | None = None, ended_s: float | None = None,
              reports: tuple | None = None) -> TrialRow:
    """`reports`: (step, view time) of the trial's first and latest result, as the view saw them."""
    r, config = TrainReport.from_row(trial.last_result), trial_config(trial)
    params = sampled(config)
    if config.get("off"):  # a matched ablation (sweeps/replicate.py): which enhancements it switched off
        params = {"off": ",".join(config["off"]), **params}
    first, last = reports or (None, None)
    return TrialRow(trial.trial_id, config.get("study", "?"), state, r.step, r.val_ppl,
                    r.best_val_ppl, started_s, ended_s, params, config.get("replicate_seed"), first, last)


class LiveView(Callback):
    def __init__(self, title: str, budgets: dict[str, int], *, max_steps: int | None = None,
                 early_stopping: EarlyStopping | None = None, out: TextIO | None = None,
                 summary_every_s: float = 300.0):
        self.title, self.budgets, self.max_steps = title, dict(budgets), max_steps
        self.early_stopping = early_stopping
        self.summary_every_s = summary_every_s
        self._out = out  # None: sys.stdout at setup
        self._reset()

    def _reset(self) -> None:
        self._renderer = None
        self._slow = None
        self._ended: dict[str, str] = {}  # trial id -> state, in the order they ended (this run)
        self._started: dict[str, float] = {}  # trial id -> view time Tune created it (first seen)
        self._ended_at: dict[str, float] = {}
        self._reports: dict[str, tuple] = {}  # trial id -> ((step, time) first, (step, time) latest)
        self._slots = 0
        self._start = time.monotonic()
        self._last_update = 0.0

    def __getstate__(self):
        return {"title": self.title, "budgets": self.budgets, "max_steps": self.max_steps,
                "early_stopping": self.early_stopping, "summary_every_s": self.summary_every_s, "_out": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    # ---- Tune callback API ---------------------------------------------------
    def setup(self, **info) -> None:
        self._reset()
        out = self._out or sys.stdout
        self._renderer = (LiveRenderer(out, self.title) if is_interactive(out)
                          else LineRenderer(out, self.summary_every_s))
        self._slow = SlowStepNote(self._renderer.note)
        for name in SLOW_LOGGERS:
            logging.getLogger(name).addFilter(self._slow)

    def on_trial_add(self, iteration, trials, trial, **info) -> None:
        self._seen(trial)

    def on_step_end(self, iteration, trials, **info) -> None:
        self._update(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if "step" in result:
            point = (int(result["step"]), self._now())
            first = self._reports.get(trial.trial_id, (point,))[0]
            self._reports[trial.trial_id] = (first if first[0] < point[0] else point, point)
        self._update(trials)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        # Called while Tune still holds the trial as RUNNING: its state comes from its last result.
        self._end(trials, trial, TrainReport.from_row(trial.last_result).ended_as)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._end(trials, trial, FAILED)

    def on_experiment_end(self, trials, **info) -> None:
        if self._renderer is not None:
            self._renderer.close(self.progress(trials))
            self._renderer = None
        for name in SLOW_LOGGERS:
            logging.getLogger(name).removeFilter(self._slow)

    # ---- internals -------------------------------------------------------------
    def _now(self) -> float:
        return time.monotonic() - self._start

    def _seen(self, trial: Trial) -> None:
        """Start the trial's clock the first time the view sees it unfinished (trials a restored
        sweep had already ended have no clock)."""
        if trial.trial_id not in self._started and trial.status not in (Trial.TERMINATED, Trial.ERROR):
            self._started[trial.trial_id] = self._now()

    def progress(self, trials: list[Trial]) -> Progress:
        for t in trials:
            self._seen(t)
        rows = tuple(trial_row(t, self._ended.get(t.trial_id) or trial_state(t), self._started.get(t.trial_id),
                               self._ended_at.get(t.trial_id), self._reports.get(t.trial_id)) for t in trials)
        self._slots = max(self._slots, sum(r.state not in ENDED_STATES for r in rows))
        return Progress(rows, tuple(self._ended), self.budgets, self._now(), self.max_steps, self._slots,
                        self.early_stopping)

    def _update(self, trials) -> None:
        if self._renderer is not None and time.monotonic() - self._last_update >= REDRAW_S:
            self._last_update = time.monotonic()
            self._renderer.update(self.progress(trials))

    def _end(self, trials, trial: Trial, state: str) -> None:
        self._ended[trial.trial_id] = state
        self._ended_at[trial.trial_id] = self._now()
        if self._renderer is not None:
            p = self.progress(trials)
            self._renderer.update(p, ended=next(r for r in p.rows if r.trial_id == trial.trial_id))
