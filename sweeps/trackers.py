"""Experiment trackers (`tracking.tracker` / `--tracker`): MLflow or W&B, through Ray's own callbacks.

Both subclass Ray's integration (`MLflowLoggerCallback`, `WandbLoggerCallback`) and
change only what `sweeps.tracking` decides: one run per trial named
`<scale>_<arm>_<n>_<trial id>`, grouped by sweep (MLflow experiment / W&B group = the
sweep name), tagged with sweep, study, scale and arm, the sampled params, and
kdsweep's metrics against the training step (the stock callbacks log every number
Tune reports against Tune's iteration count).

* MLflow: the tracking URI is `tracking.mlflow_uri`, else $MLFLOW_TRACKING_URI, else
  `sqlite:///<sweep>/mlflow.db` (MLflow 3 refuses a plain folder store unless told to).
  `mlflow ui --backend-store-uri sqlite:///<sweep>/mlflow.db` shows it.
* W&B: project `tracking.wandb_project`, group = the sweep; files under `<sweep>/wandb/`.
  WANDB_MODE=offline keeps runs on disk (`wandb sync <sweep>/wandb/offline-run-*` uploads
  them later); otherwise W&B needs a login (`wandb login` or WANDB_API_KEY).

The packages are optional extras (`pip install "kdsweep[mlflow]"` / `"kdsweep[wandb]"`);
`tracker_callback` fails with a ConfigError, before Ray starts, when one is missing.
"""

from __future__ import annotations

import importlib
import os

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback, _QueueItem, _WandbLoggingActor

from distill.errors import ConfigError
from sweeps.tracking import run_name, run_params, run_tags, scalars, sweep_dir, trial_config


class MLflowCallback(MLflowLoggerCallback):
    def __init__(self, sweep: str, tracking_uri: str | None):
        super().__init__(tracking_uri=tracking_uri, experiment_name=sweep)
        self.sweep = sweep

    def setup(self, *args, **kwargs) -> None:
        # The store opens at the first trial: its default lives in the sweep folder, known from the trial.
        self._trial_runs, self._opened = {}, False

    def _open(self, trial) -> None:
        if self._opened:
            return
        uri, artifacts = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"), None
        if not uri:  # the sweep's own store; MLflow would otherwise record artifacts under the current folder
            sd = sweep_dir(trial)
            uri, artifacts = f"sqlite:///{sd.mlflow_db}", sd.mlflow_artifacts.as_uri()
        self.mlflow_util.setup_mlflow(tracking_uri=uri, registry_uri=self.registry_uri, artifact_location=artifacts,
                                      experiment_name=self.experiment_name, tracking_token=self.tracking_token)
        self._opened = True

    def log_trial_start(self, trial) -> None:
        self._open(trial)
        if trial in self._trial_runs:
            return
        config = trial_config(trial)
        run = self.mlflow_util.start_run(run_name=run_name(config, trial.trial_id),
                                         tags=run_tags(config, trial.trial_id, self.sweep))
        self._trial_runs[trial] = run.info.run_id
        self.mlflow_util.log_params(run_id=run.info.run_id, params_to_log=run_params(config))

    def log_trial_result(self, iteration, trial, result) -> None:
        point = scalars(result)
        if point is None:
            return
        if trial not in self._trial_runs:
            self.log_trial_start(trial)
        step, values = point
        self.mlflow_util.log_metrics(run_id=self._trial_runs[trial], metrics_to_log=values, step=step)


class _WandbActor(_WandbLoggingActor):
    """Logs kdsweep's metrics with the training step as the x-axis, and waits for W&B to have
    written the run before returning (Tune kills the actor right after: the stock actor can
    lose the last trial's data)."""

    def run(self):
        os.environ["WANDB_START_METHOD"] = "thread"  # already in its own process (a Ray actor)
        run = self._wandb.init(*self.args, **self.kwargs)
        # W&B's own step must only grow; a restored trial re-reports steps, so `step` is a metric
        # and every chart's x-axis.
        run.define_metric("step")
        run.define_metric("*", step_metric="step")
        while True:
            kind, item = self.queue.get()
            if kind == _QueueItem.END:
                break
            if kind == _QueueItem.RESULT and (point := scalars(item)) is not None:
                step, values = point
                run.log({**values, "step": step})
        run.finish()
        self._wandb.teardown()


class WandbCallback(WandbLoggerCallback):
    _logger_actor_cls = _WandbActor  # Ray's hook for a custom logging actor

    def __init__(self, sweep: str, project: str):
        super().__init__(project=project, group=sweep)
        self.sweep = sweep

    def log_trial_start(self, trial) -> None:
        config = trial_config(trial)
        tags = run_tags(config, trial.trial_id, self.sweep)
        mode = {"mode": os.environ["WANDB_MODE"]} if os.environ.get("WANDB_MODE") else {}
        # The actor runs in a Ray worker whose environment need not hold the driver's WANDB_MODE.
        self._start_logging_actor(trial, [], id=trial.trial_id, name=run_name(config, trial.trial_id),
                                  project=self.project, group=self.group, tags=[tags["scale"], tags["arm"], tags["study"]],
                                  config={**tags, **run_params(config)}, dir=str(sweep_dir(trial).root), **mode)


def tracker_callback(tracking: dict, sweep: str):
    """The Tune callback of `tracking.tracker` (mlflow or wandb), checked before Ray starts."""
    tracker = tracking["tracker"]
    try:
        importlib.import_module(tracker)
    except ImportError as e:
        raise ConfigError(f"tracking.tracker {tracker}: the {tracker} package is not installed ({e}); "
                          f"install it with: pip install \"kdsweep[{tracker}]\"") from None
    if tracker == "mlflow":
        return MLflowCallback(sweep, tracking["mlflow_uri"])
    callback = WandbCallback(sweep, tracking["wandb_project"])
    try:
        callback.setup()  # checks W&B credentials now rather than after Ray has started
    except ValueError as e:
        raise ConfigError(f"tracking.tracker wandb: {e} (or set WANDB_MODE=offline to keep runs on disk)") from None
    return callback
