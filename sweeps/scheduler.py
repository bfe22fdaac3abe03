"""ASHA per (scale, arm): early stopping compares only trials of the same study.

One `AsyncHyperBandScheduler` per study, keyed by the trial config's `study`,
on held-out `val_ppl` (min) with `time_attr = "step"`: the training step the
loop reports, which survives a restore (Tune's `training_iteration` restarts
at 1 after one). Comparing a `tiny/both` trial with a `small/baseline` one
would stop trials for being the wrong scale, not for being bad.
"""

from __future__ import annotations

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from kdsweep.distill.run.rundir import COMPLETED, DIVERGED, TrainReport
from kdsweep.sweeps.study import METRIC, MODE

TIME_ATTR = "step"


class PerStudyASHA(FIFOScheduler):
    def __init__(self, study_names, *, max_t: int, grace_period: int, reduction_factor: float):
        super().__init__()
        self._metric, self._mode = METRIC, MODE
        self.max_t, self.reduction_factor = max_t, reduction_factor
        self.asha = {
            name: AsyncHyperBandScheduler(time_attr=TIME_ATTR, metric=METRIC, mode=MODE, max_t=max_t,
                                          grace_period=min(grace_period, max_t), reduction_factor=reduction_factor,
                                          stop_last_trials=False)  # a full-budget trial ends by itself
            for name in study_names
        }

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return metric in (None, METRIC) and mode in (None, MODE)

    def _for(self, tc, trial) -> AsyncHyperBandScheduler:
        asha = self.asha[trial.config["study"]]
        if trial.trial_id not in asha._trial_info:  # a trial restored after a driver restart
            asha.on_trial_add(tc, trial)
        return asha

    def on_trial_add(self, tc, trial) -> None:
        self._for(tc, trial)

    def on_trial_result(self, tc, trial, result) -> str:
        ended_as = TrainReport.from_row(result).ended_as  # were this its last report
        if ended_as == DIVERGED:
            return TrialScheduler.STOP
        asha = self._for(tc, trial)
        decision = asha.on_trial_result(tc, trial, result)  # records the value in its rung either way
        if decision == TrialScheduler.STOP and ended_as == COMPLETED:
            # A rung at max_t (max_t = grace * rf^k) would "stop" a trial on its final report:
            # its budget is spent, so stopping saves nothing, and the trial is completed, not
            # stopped early.
            asha._num_stopped -= 1
            return TrialScheduler.CONTINUE
        return decision

    def on_trial_complete(self, tc, trial, result) -> None:
        self._for(tc, trial).on_trial_complete(tc, trial, result)

    def on_trial_remove(self, tc, trial) -> None:
        self.asha[trial.config["study"]]._trial_info.pop(trial.trial_id, None)

    def debug_string(self) -> str:
        return "ASHA per study: " + ", ".join(f"{n}: {a._num_stopped} stopped" for n, a in self.asha.items())

    def rungs(self) -> tuple[int, ...]:
        """The steps at which ASHA compares a study's trials, the last the full budget (the live
        view's ETA expects a trial to reach each next one with chance 1 / reduction factor)."""
        bracket = next(iter(self.asha.values()))._brackets[0]
        return tuple(sorted({int(step) for step, _ in bracket._rungs if step < self.max_t} | {self.max_t}))
