"""The live view of a running sweep or replicate run (a Tune callback).

At every Tune event it turns Tune's trials into a `sweeps.progress.Progress` and hands
it to a renderer (`sweeps.console`): an in-place view when stdout is a terminal, one
line per ended trial plus periodic summaries otherwise. A trial's state is the
`sweeps.study` vocabulary, derived from its last result (`done_training`, `diverged`)
and Tune's status, never Tune's raw TERMINATED (which covers completed and stopped
early alike).

Tune pickles its callbacks with the experiment and a resumed sweep uses the pickled
ones: the renderer and the output stream are therefore chosen in `setup`, at each start.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from ray.tune import Callback
from ray.tune.experiment import Trial

from sweeps.console import LineRenderer, LiveRenderer, is_interactive
from sweeps.progress import Progress, TrialRow
from sweeps.study import FAILED, PENDING, RUNNING, ended_status
from sweeps.tracking import sampled, trial_config

REDRAW_S = 1.0  # between two redraws of the view (Tune's loop steps far more often)


def trial_state(trial: Trial) -> str:
    if trial.status == Trial.ERROR:
        return FAILED
    if trial.status == Trial.TERMINATED:
        return ended_status(trial.last_result)
    return PENDING if trial.status == Trial.PENDING else RUNNING


def trial_row(trial: Trial, state: str) -> TrialRow:
    r, config = trial.last_result or {}, trial_config(trial)
    params = sampled(config)
    if "replicate_seed" in config:
        params = {"seed": config["replicate_seed"], **({"off": ",".join(config["off"])} if config.get("off") else {}),
                  **params}
    return TrialRow(trial.trial_id, config.get("study", "?"), state, r.get("step"), r.get("val_ppl"),
                    r.get("best_val_ppl"), r.get("time_total_s"), params)


class LiveView(Callback):
    def __init__(self, title: str, budgets: dict[str, int], *, max_steps: int | None = None,
                 out: TextIO | None = None, summary_every_s: float = 300.0):
        self.title, self.budgets, self.max_steps = title, dict(budgets), max_steps
        self.summary_every_s = summary_every_s
        self._out = out  # None: sys.stdout at setup
        self._reset()

    def _reset(self) -> None:
        self._renderer = None
        self._ended: dict[str, str] = {}  # trial id -> state, in the order they ended (this run)
        self._peak = 0
        self._start = time.monotonic()
        self._last_update = 0.0

    def __getstate__(self):
        return {"title": self.title, "budgets": self.budgets, "max_steps": self.max_steps,
                "summary_every_s": self.summary_every_s, "_out": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    # ---- Tune callback API ---------------------------------------------------
    def setup(self, **info) -> None:
        self._reset()
        out = self._out or sys.stdout
        self._renderer = (LiveRenderer(out, self.title) if is_interactive(out)
                          else LineRenderer(out, self.summary_every_s))

    def on_step_end(self, iteration, trials, **info) -> None:
        self._update(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._update(trials)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        # Called while Tune still holds the trial as RUNNING: its state comes from its last result.
        self._end(trials, trial, ended_status(trial.last_result))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._end(trials, trial, FAILED)

    def on_experiment_end(self, trials, **info) -> None:
        if self._renderer is not None:
            self._renderer.close(self.progress(trials))
            self._renderer = None

    # ---- internals -------------------------------------------------------------
    def progress(self, trials: list[Trial]) -> Progress:
        rows = tuple(trial_row(t, self._ended.get(t.trial_id) or trial_state(t)) for t in trials)
        self._peak = max(self._peak, sum(r.state == RUNNING for r in rows))
        return Progress(rows, tuple(self._ended), self.budgets, time.monotonic() - self._start,
                        self.max_steps, self._peak)

    def _update(self, trials) -> None:
        if self._renderer is not None and time.monotonic() - self._last_update >= REDRAW_S:
            self._last_update = time.monotonic()
            self._renderer.update(self.progress(trials))

    def _end(self, trials, trial: Trial, state: str) -> None:
        self._ended[trial.trial_id] = state
        if self._renderer is not None:
            p = self.progress(trials)
            self._renderer.update(p, ended=next(r for r in p.rows if r.trial_id == trial.trial_id))
