"""Experiment trackers (`tracking.tracker` / `--tracker`): MLflow or W&B, through Ray's own callbacks.

Both subclass Ray's integration (`MLflowLoggerCallback`, `WandbLoggerCallback`) and
change what `sweeps.tracking` decides: one run per trial named `<scale>_<arm>_<n>_<trial id>`,
grouped by sweep (MLflow experiment / W&B group = the sweep name), tagged with sweep, kind
(search / replicates), study, scale and arm; the trial's whole resolved config as params;
kdsweep's metrics against the training step (the stock callbacks log every number Tune
reports against Tune's iteration count). When a trial ends its run gets its state
(`completed`, `stopped_early`, `diverged`, `failed`) as a tag, its final metrics
(`sweeps.tracking.final_metrics`), and its run folder's config.yaml, metrics.json and
metrics.jsonl as artifacts (with `tracking.log_student: true`, its student folder too).

* MLflow: the tracking URI is `tracking.mlflow_uri`, else $MLFLOW_TRACKING_URI, else
  `sqlite:///<sweep>/mlflow.db` (MLflow 3 refuses a plain folder store unless told to).
  `mlflow ui --backend-store-uri sqlite:///<sweep>/mlflow.db` shows it. Each result is one
  batched write (Ray's callback writes every param and metric with a call of its own, on
  Tune's driver loop). The run's status follows
  its state: completed FINISHED, stopped_early KILLED (by the scheduler), diverged and
  failed FAILED.
* W&B: project `tracking.wandb_project`, group = the sweep, job type = the kind; files under
  `<sweep>/wandb/`. WANDB_MODE=offline keeps runs on disk (`wandb sync <sweep>/wandb/offline-run-*`
  uploads them later); otherwise W&B needs a login (`wandb login` or WANDB_API_KEY). The
  state is added to the run's tags, the final metrics to its summary, the files saved with it.

The packages are optional extras (`pip install "kdsweep[mlflow]"` / `"kdsweep[wandb]"`);
`tracker_callback` fails with a ConfigError, before Ray starts, when one is missing.
"""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback, _QueueItem, _WandbLoggingActor

from kdsweep.distill.errors import ConfigError
from kdsweep.sweeps.study import COMPLETED, DIVERGED, FAILED, STOPPED_EARLY
from kdsweep.sweeps.tracking import (
    STATE_TAG,
    end_state,
    final_metrics,
    resolved_config,
    run_files,
    run_kind,
    run_name,
    run_params,
    run_tags,
    scalars,
    sweep_dir,
    trial_config,
)

MLFLOW_STATUS = {COMPLETED: "FINISHED", STOPPED_EARLY: "KILLED", DIVERGED: "FAILED", FAILED: "FAILED"}
MLFLOW_BATCH = 100  # params per log_batch call (MLflow's limit)
END = "kdsweep_end"  # the W&B queue item that carries a trial's end (state, final metrics, files)


class MLflowCallback(MLflowLoggerCallback):
    def __init__(self, sweep: str, tracking_uri: str | None, log_student: bool = False):
        super().__init__(tracking_uri=tracking_uri, experiment_name=sweep)
        self.sweep, self.log_student = sweep, log_student

    def setup(self, *args, **kwargs) -> None:
        # The store opens at the first trial: its default lives in the sweep folder, known from the trial.
        self._trial_runs, self._run_dirs, self._client = {}, {}, None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_client"] = None  # Tune pickles its callbacks with the experiment: no open store
        return state

    def _open(self, trial) -> None:
        if self._client is not None:
            return
        from mlflow.tracking import MlflowClient

        uri, artifacts = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"), None
        if not uri:  # the sweep's own store; MLflow would otherwise record artifacts under the current folder
            sd = sweep_dir(trial)
            uri, artifacts = f"sqlite:///{sd.mlflow_db}", sd.mlflow_artifacts.as_uri()
        self.mlflow_util.setup_mlflow(tracking_uri=uri, registry_uri=self.registry_uri, artifact_location=artifacts,
                                      experiment_name=self.experiment_name, tracking_token=self.tracking_token)
        self._client = MlflowClient(uri)

    def log_trial_start(self, trial) -> None:
        from mlflow.entities import Param

        self._open(trial)
        if trial.trial_id in self._trial_runs:
            return
        config, resolved = trial_config(trial), resolved_config(trial)
        run = self._client.create_run(self.mlflow_util.experiment_id, run_name=run_name(config, trial.trial_id),
                                      tags=run_tags(config, trial.trial_id, self.sweep))
        self._trial_runs[trial.trial_id] = run.info.run_id
        self._run_dirs[trial.trial_id] = resolved["output_dir"]
        params = [Param(k, str(v)) for k, v in run_params(config, resolved).items()]
        for i in range(0, len(params), MLFLOW_BATCH):
            self._client.log_batch(run.info.run_id, params=params[i:i + MLFLOW_BATCH])

    def _log_metrics(self, trial, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._client.log_batch(self._trial_runs[trial.trial_id],
                               metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def log_trial_result(self, iteration, trial, result) -> None:
        point = scalars(result)
        if point is None:
            return
        if trial.trial_id not in self._trial_runs:
            self.log_trial_start(trial)
        step, values = point
        self._log_metrics(trial, values, step)

    def log_trial_end(self, trial, failed: bool = False) -> None:
        if trial.trial_id not in self._trial_runs:
            self.log_trial_start(trial)
        run_id, state = self._trial_runs[trial.trial_id], end_state(trial, failed)
        self._log_metrics(trial, final_metrics(trial.last_result, state), int((trial.last_result or {}).get("step", 0)))
        self._client.set_tag(run_id, STATE_TAG, state)
        for path in run_files(Path(self._run_dirs[trial.trial_id]), self.log_student):
            if path.is_dir():
                self._client.log_artifacts(run_id, str(path), artifact_path=path.name)
            else:
                self._client.log_artifact(run_id, str(path))
        self._client.set_terminated(run_id, status=MLFLOW_STATUS[state])


class _WandbActor(_WandbLoggingActor):
    """Logs kdsweep's metrics with the training step as the x-axis, records a trial's end (state
    tag, final metrics in the summary, its files), and waits for W&B to have written the run
    before returning (Tune kills the actor right after: the stock actor can lose the last
    trial's data)."""

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
            elif kind == END:
                run.tags = (*run.tags, item["state"])
                run.summary.update({STATE_TAG: item["state"], **item["final"]})
                for path in item["files"]:  # kept under their path in the run folder (student/...)
                    run.save(path, base_path=item["run_dir"], policy="now")
        run.finish()
        self._wandb.teardown()


class WandbCallback(WandbLoggerCallback):
    _logger_actor_cls = _WandbActor  # Ray's hook for a custom logging actor

    def __init__(self, sweep: str, project: str, log_student: bool = False):
        super().__init__(project=project, group=sweep)
        self.sweep, self.log_student = sweep, log_student
        self._run_dirs: dict[str, str] = {}

    def log_trial_start(self, trial) -> None:
        config, resolved = trial_config(trial), resolved_config(trial)
        tags = run_tags(config, trial.trial_id, self.sweep)
        self._run_dirs[trial.trial_id] = resolved["output_dir"]
        mode = {"mode": os.environ["WANDB_MODE"]} if os.environ.get("WANDB_MODE") else {}
        # The actor runs in a Ray worker whose environment need not hold the driver's WANDB_MODE.
        self._start_logging_actor(trial, [], id=trial.trial_id, name=run_name(config, trial.trial_id),
                                  project=self.project, group=self.group, job_type=run_kind(config),
                                  tags=[tags["scale"], tags["arm"], tags["study"]],
                                  config={**tags, **run_params(config, resolved)}, dir=str(sweep_dir(trial).root),
                                  **mode)

    def log_trial_end(self, trial, failed: bool = False) -> None:
        if trial in self._trial_queues:
            state = end_state(trial, failed)
            run_dir = Path(self._run_dirs.get(trial.trial_id) or resolved_config(trial)["output_dir"])
            files = [str(f) for p in run_files(run_dir, self.log_student)
                     for f in (sorted(p.rglob("*")) if p.is_dir() else [p]) if f.is_file()]
            self._trial_queues[trial].put((END, {"state": state, "final": final_metrics(trial.last_result, state),
                                                 "files": files, "run_dir": str(run_dir)}))
        super().log_trial_end(trial, failed)


def tracker_callback(tracking: dict, sweep: str):
    """The Tune callback of `tracking.tracker` (mlflow or wandb), checked before Ray starts."""
    tracker = tracking["tracker"]
    try:
        importlib.import_module(tracker)
    except ImportError as e:
        raise ConfigError(f"tracking.tracker {tracker}: the {tracker} package is not installed ({e}); "
                          f"install it with: pip install \"kdsweep[{tracker}]\"") from None
    if tracker == "mlflow":
        return MLflowCallback(sweep, tracking["mlflow_uri"], tracking["log_student"])
    callback = WandbCallback(sweep, tracking["wandb_project"], tracking["log_student"])
    try:
        callback.setup()  # checks W&B credentials now rather than after Ray has started
    except ValueError as e:
        raise ConfigError(f"tracking.tracker wandb: {e} (or set WANDB_MODE=offline to keep runs on disk)") from None
    return callback
