"""A live trial table printed while a sweep runs (Tune callback)."""

from __future__ import annotations

import functools
import time

from ray.tune import Callback


def _fmt(v, spec=".4g") -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "-"


class LiveTable(Callback):
    """Every `every_s` seconds (and when a trial ends) print one row per trial:
    study, state, step, val_ppl, best val_ppl and the sampled parameters."""

    def __init__(self, every_s: float = 15.0, print_fn=functools.partial(print, flush=True)):
        self.every_s, self.print = every_s, print_fn
        self._last = 0.0

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if time.time() - self._last >= self.every_s:
            self._show(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._show(trials)

    def on_experiment_end(self, trials, **info):
        self._show(trials)

    def _show(self, trials) -> None:
        self._last = time.time()
        done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
        lines = [f"--- {time.strftime('%H:%M:%S')}  trials: {len(trials)} started, {done} ended",
                 f"{'trial':<14}{'study':<26}{'state':<11}{'step':>6}{'val_ppl':>10}{'best':>10}  params"]
        for t in trials:
            r = t.last_result or {}
            config = t.config.get("rep", t.config)  # replicate trials nest their config under "rep"
            params = {k: v for k, v in config.items() if k not in ("study", "scale", "arm", "optuna_number")}
            ptxt = " ".join(f"{k}={_fmt(v, '.3g')}" for k, v in params.items())
            state = "diverged" if r.get("diverged") else t.status.lower()
            lines.append(f"{t.trial_id:<14}{config.get('study', '?'):<26}{state:<11}{_fmt(r.get('step'), 'd'):>6}"
                         f"{_fmt(r.get('val_ppl')):>10}{_fmt(r.get('best_val_ppl')):>10}  {ptxt}")
        self.print("\n".join(lines))
