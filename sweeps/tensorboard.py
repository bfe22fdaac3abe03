"""TensorBoard event files of a sweep: one run per trial, kdsweep's metrics against the training step,
and the HParams plugin filled so arms compare in one table.

Replaces Tune's default `TBXLoggerCallback` (turned off in `sweeps.callbacks`), which
names runs after Tune's trial folders, plots against Tune's iteration count (it restarts
after a restore), logs every number Tune adds (done, iterations_since_restore, ...) and
makes Tune print a TensorBoard hint pointing under /tmp/ray/session_*, not at the sweep.

Runs are folders `<sweep>/tensorboard/search/<run>` and `<sweep>/tensorboard/replicates/<run>`,
named and filled as `sweeps.tracking` says: TensorBoard's run filter selects by kind, scale
and arm (e.g. `search/demo-s_both`), and its "color by regex" groups runs by arm.

When a trial ends its run gets, for the HParams plugin: a session with its hparams (kind,
scale, arm, state, the Optuna trial number, the sampled and the fixed settings of its
resolved config) and its final metrics (`final/val_ppl`, `final/objective` for a completed
trial, `final/min_val_ppl_seen`, `final/step`). A replicate's session is grouped with the
other seeds of its (scale, arm), so HParams shows their mean.
"""

from __future__ import annotations

import time

from ray.tune.logger import LoggerCallback

from kdsweep.sweeps.study import COMPLETED, STOPPED_EARLY
from kdsweep.sweeps.tracking import (
    REPLICATES,
    end_state,
    final_metrics,
    resolved_config,
    run_kind,
    run_name,
    run_tags,
    scalars,
    sweep_dir,
    tensorboard_run,
    trial_config,
)

# Config keys that differ between trials without being settings (where it writes, its provenance).
NOT_HPARAMS = ("output_dir", "teacher_cache")


def hparams(trial, state: str) -> dict:
    """The HParams plugin's hparams of a trial: what it is, how it ended, every setting it ran with."""
    config = trial_config(trial)
    tags = run_tags(config, trial.trial_id, sweep_dir(trial).name)
    settings = {k: v for k, v in resolved_config(trial).items()
                if v is not None and k not in NOT_HPARAMS and not k.startswith("provenance.")}
    return {**settings, **{k: tags[k] for k in ("kind", "scale", "arm")}, "state": state,
            "optuna_number": config["optuna_number"],
            **({"replicate_seed": config["replicate_seed"]} if "replicate_seed" in config else {})}


def session_summary(values: dict, group: str, state: str):
    """The HParams plugin's record of one ended session (its hparams, its group, how it ended), as
    one Summary with the plugin's two tags. Built from the plugin's protos directly: TensorBoard's
    own `hparams.summary` helpers import TensorFlow."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    start = plugin_data_pb2.SessionStartInfo(group_name=group, start_time_secs=time.time())
    for k, v in values.items():
        if isinstance(v, bool):
            start.hparams[k].bool_value = v
        elif isinstance(v, (int, float)):
            start.hparams[k].number_value = v
        else:
            start.hparams[k].string_value = str(v)
    status = "STATUS_SUCCESS" if state in (COMPLETED, STOPPED_EARLY) else "STATUS_FAILURE"
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.Status.Value(status), end_time_secs=time.time())
    return Summary(value=[
        Summary.Value(tag=metadata.SESSION_START_INFO_TAG,
                      metadata=metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(session_start_info=start))),
        Summary.Value(tag=metadata.SESSION_END_INFO_TAG,
                      metadata=metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(session_end_info=end))),
    ])


class TensorBoardCallback(LoggerCallback):
    def __init__(self):
        self._writers = {}  # trial id -> SummaryWriter

    def __getstate__(self):
        return {"_writers": {}}  # Tune pickles its callbacks with the experiment: open files stay out

    def _writer(self, trial):
        if trial.trial_id not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            logdir = tensorboard_run(sweep_dir(trial), trial_config(trial), trial.trial_id)
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
        state = end_state(trial, failed)
        writer = self._writer(trial)
        config = trial_config(trial)
        # A replicate's seeds form one session group: HParams shows their mean per (scale, arm).
        group = config["study"] if run_kind(config) == REPLICATES else run_name(config, trial.trial_id)
        writer.file_writer.add_summary(session_summary(hparams(trial, state), group, state))
        step = int((trial.last_result or {}).get("step", 0))
        for key, value in final_metrics(trial.last_result, state).items():
            writer.add_scalar(key, value, global_step=step)
        writer.close()
        self._writers.pop(trial.trial_id, None)

    def on_experiment_end(self, trials, **info) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
