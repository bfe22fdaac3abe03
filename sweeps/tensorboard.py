"""TensorBoard event files of a sweep: one run per trial, kdsweep's metrics against the training step.

Replaces Tune's default `TBXLoggerCallback` (turned off in `sweeps.callbacks`), which
names runs after Tune's trial folders, plots against Tune's iteration count (it restarts
after a restore), logs every number Tune adds (done, iterations_since_restore, ...) and
makes Tune print a TensorBoard hint pointing under /tmp/ray/session_*, not at the sweep.

Runs are folders of `<sweep>/tensorboard/`, named and filled as `sweeps.tracking` says:
TensorBoard's run filter then selects by scale and arm (e.g. `demo-s_both`).
"""

from __future__ import annotations

from ray.tune.logger import LoggerCallback

from sweeps.tracking import run_name, scalars, sweep_dir, trial_config


class TensorBoardCallback(LoggerCallback):
    def __init__(self):
        self._writers = {}  # trial id -> SummaryWriter

    def __getstate__(self):
        return {"_writers": {}}  # Tune pickles its callbacks with the experiment: open files stay out

    def _writer(self, trial):
        if trial.trial_id not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            logdir = sweep_dir(trial).tensorboard / run_name(trial_config(trial), trial.trial_id)
            self._writers[trial.trial_id] = SummaryWriter(str(logdir))
        return self._writers[trial.trial_id]

    def log_trial_result(self, iteration, trial, result) -> None:
        point = scalars(result)
        if point is None:
            return
        step, values = point
        writer = self._writer(trial)
        for key, value in values.items():
            writer.add_scalar(key, value, global_step=step)
        writer.flush()  # a sweep is watched while it runs, and may be killed

    def log_trial_end(self, trial, failed: bool = False) -> None:
        writer = self._writers.pop(trial.trial_id, None)
        if writer is not None:
            writer.close()

    def on_experiment_end(self, trials, **info) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
