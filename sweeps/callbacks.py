"""The Tune callbacks of a sweep or a replicate run: what it writes beside Tune's state, and what it prints.

* Tune's CSV and JSON result files (`ExperimentAnalysis` reads them back);
* kdsweep's TensorBoard runs (`sweeps.tensorboard`), instead of Tune's default TBX logger;
* the experiment tracker of `tracking.tracker`, if any (`sweeps.trackers`);
* the live view (`sweeps.live`);
* `sweeps.failfast.FailFast`: a full disk, or the first attempts all failing the same way, stop the sweep.

Tune pickles these with the experiment: a resumed sweep runs with the ones it started with.
"""

from __future__ import annotations

import os

from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from kdsweep.sweeps.failfast import FailFast
from kdsweep.sweeps.live import LiveView
from kdsweep.sweeps.progress import EarlyStopping
from kdsweep.sweeps.space import SearchSpace
from kdsweep.sweeps.tensorboard import TensorBoardCallback


def tracker_callbacks(space: SearchSpace, sweep: str) -> list:
    """The callback of `tracking.tracker` (none when null); fails with a ConfigError, before Ray
    starts, when its package or W&B's credentials are missing."""
    if space.tracking["tracker"] is None:
        return []
    from kdsweep.sweeps.trackers import tracker_callback  # imports mlflow or wandb (seconds): only when asked for

    return [tracker_callback(space.tracking, sweep)]


def tune_callbacks(space: SearchSpace, sweep: str, *, title: str, budgets: dict[str, int],
                   max_steps: int | None, early_stopping: EarlyStopping | None = None) -> list:
    # Tune adds its CSV, JSON and TBX loggers unless told not to; the TBX one is replaced here
    # (and brings Tune's misleading TensorBoard hint with it), the other two are listed explicitly.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    return [CSVLoggerCallback(), JsonLoggerCallback(), TensorBoardCallback(),
            *tracker_callbacks(space, sweep),
            LiveView(title, budgets, max_steps=max_steps, early_stopping=early_stopping), FailFast(sweep)]
