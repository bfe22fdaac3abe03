"""What TensorBoard, MLflow and W&B record of one Tune trial (Ray-free; used by their callbacks).

* one run per trial, named `<scale>_<arm>_<optuna number>_<trial id>` (a replicate:
  `<scale>_<arm>_<optuna number>_seed<k>_<trial id>`), so runs filter by scale and arm;
  its kind, `search` or `replicates`, keeps the two apart (TensorBoard: a folder each);
* tags: sweep, kind, study, scale, arm, trial id (and a replicate's seed); at its end, its
  state (`completed`, `stopped_early`, `diverged`, `failed`: `sweeps.study`);
* params: the trial's whole resolved TrainConfig (fixed settings, scale dimensions, teacher,
  seed, the sampled hyperparameters) and the Optuna trial number;
* scalars: kdsweep's own metrics against the training `step`. Tune's bookkeeping (done,
  training_iteration, time_*, iterations_since_restore, ...) is left out, and so is Tune's
  iteration count as an x-axis: it restarts at 1 after a restore, the step does not.
  The lowest val_ppl seen so far (`best_val_ppl` in a training row) is no curve: it is
  the running minimum of `val_ppl`, and it is recorded once, at the end, as `min_val_ppl_seen`;
* at its end (`final_metrics`): `final/val_ppl` (the model the trial ended with; for a
  completed trial that is its objective, also recorded as `final/objective`),
  `final/min_val_ppl_seen`, `final/step`; and the run folder's config and metrics files.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from kdsweep.distill.run.rundir import CONFIG_NAME, LOG_NAME, STUDENT_DIR, SUMMARY_NAME, TrainReport
from kdsweep.sweeps.layout import SweepDir
from kdsweep.sweeps.study import COMPLETED, DIVERGED, FAILED

# The metrics of a training row (distill/run/train.py) drawn as curves.
CURVES = ("val_ppl", "val_nll_per_residue", "val_ece", "val_accuracy", "train_loss", "train_hard", "train_soft",
          "grad_norm", "lr", "tokens_per_s", "tokens",
          # what the run paid besides its steps (distill.run.train.RunCosts)
          "first_step_s", "steady_tokens_per_s", "bytes_hashed", "cache_bytes_read")
# The rest of a training row: the x-axis, the running minimum of val_ppl, end-of-run markers.
NOT_CURVES = ("step", "best_val_ppl", "best_step", "done_training")
# Keys of a trial config that say which study a trial belongs to, not what was sampled.
STUDY_KEYS = ("study", "scale", "arm", "optuna_number", "replicate_seed", "off")
SEARCH, REPLICATES = "search", "replicates"
STATE_TAG = "state"
# What a run's final metrics are called in every tracker.
FINAL_VAL_PPL, FINAL_OBJECTIVE, FINAL_MIN_SEEN, FINAL_STEP = (
    "final/val_ppl", "final/objective", "final/min_val_ppl_seen", "final/step")


def trial_config(trial) -> dict:
    """A Tune trial's config: a search trial's, or a replicate's (nested under "rep", see sweeps.replicate)."""
    return trial.config.get("rep", trial.config)


def sweep_dir(trial) -> SweepDir:
    """The sweep folder of a Tune trial: kdsweep gives Tune the sweep folder as its storage path.

    Read from the trial, not kept in a callback: Tune pickles callbacks with the experiment,
    and a restore updates the trials' storage when the sweep folder was moved.
    """
    return SweepDir(Path(trial.storage.storage_fs_path))


def sampled(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in STUDY_KEYS}


def run_kind(config: dict) -> str:
    return REPLICATES if "replicate_seed" in config else SEARCH


def run_name(config: dict, trial_id: str) -> str:
    seed = f"_seed{config['replicate_seed']}" if "replicate_seed" in config else ""
    off = "".join(f"_no-{e}" for e in config.get("off", ()))  # a matched ablation (sweeps/replicate.py)
    return f"{config['scale']}_{config['arm']}_{config['optuna_number']}{seed}{off}_{trial_id}"


def tensorboard_run(sd: SweepDir, config: dict, trial_id: str) -> Path:
    """`<sweep>/tensorboard/<kind>/<run name>`: TensorBoard shows it as run `<kind>/<run name>`."""
    return sd.tensorboard / run_kind(config) / run_name(config, trial_id)


def run_tags(config: dict, trial_id: str, sweep: str) -> dict[str, str]:
    tags = {"sweep": sweep, "kind": run_kind(config), "study": config["study"], "scale": config["scale"],
            "arm": config["arm"], "trial_id": trial_id}
    if "replicate_seed" in config:
        tags["replicate_seed"] = str(config["replicate_seed"])
    if config.get("off"):
        tags["switched_off"] = ",".join(config["off"])
    return tags


def flat(d: dict, prefix: str = "") -> dict:
    """A nested dict (a TrainConfig's `provenance`) as one level of `a.b` keys."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def resolved_config(trial) -> dict:
    """The trial's whole TrainConfig, flat, as its run trains it (sweeps.trial builds it the same way)."""
    from kdsweep.distill.models import student_sizes
    from kdsweep.sweeps.space import load_space
    from kdsweep.sweeps.trial import trial_train_config  # imports Ray Train: only where a tracker runs

    sd = sweep_dir(trial)
    cfg = trial_train_config(load_space(sd.space), trial_config(trial), str(sd.root), trial.trial_id,
                             teacher_cache=sd.meta().teacher_cache)
    # the scale's dimensions, not the name alone (explicit sizes win, as when the student is built)
    return flat(cfg.to_dict()) | student_sizes(cfg.scale, cfg.n_layer, cfg.n_head, cfg.n_embd)


def run_params(config: dict, resolved: dict) -> dict:
    """The run's params: its resolved config, the Optuna trial number (and a replicate's seed)."""
    keep = {"optuna_number", "replicate_seed"}
    return {k: v for k, v in config.items() if k in keep} | resolved


def scalars(result: dict) -> tuple[int, dict[str, float]] | None:
    """(training step, {metric: finite value}) of a reported result, or None when it has no step."""
    if "step" not in result:
        return None
    values = {k: float(result[k]) for k in CURVES if _finite(result.get(k))}
    return int(result["step"]), values


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def end_state(trial, failed: bool) -> str:
    """How a trial ended, in the `sweeps.study` vocabulary."""
    return FAILED if failed else TrainReport.from_row(trial.last_result).ended_as


def final_metrics(last_result: dict | None, state: str) -> dict[str, float]:
    """The finite end-of-run numbers of a trial (its last reported row)."""
    r = last_result or {}
    out = {}
    if state not in (FAILED, DIVERGED) and _finite(r.get("val_ppl")):
        out[FINAL_VAL_PPL] = float(r["val_ppl"])
        if state == COMPLETED:
            out[FINAL_OBJECTIVE] = float(r["val_ppl"])
    if _finite(r.get("best_val_ppl")):
        out[FINAL_MIN_SEEN] = float(r["best_val_ppl"])
    if _finite(r.get("step")):
        out[FINAL_STEP] = float(r["step"])
    return out


def run_files(run_dir: Path, student: bool = False) -> list[Path]:
    """The files of a run folder a tracker stores with its run: config, metric log, summary (and
    the student folder when asked for and present)."""
    files = [run_dir / f for f in (CONFIG_NAME, SUMMARY_NAME, LOG_NAME) if (run_dir / f).is_file()]
    return files + ([run_dir / STUDENT_DIR] if student and (run_dir / STUDENT_DIR).is_dir() else [])


def tracker_hint(tracking: dict, sd: SweepDir) -> tuple[str, str] | None:
    """(command, what it shows) that opens a sweep's runs in the UI of its tracker (`tracking` of
    its space); None without one."""
    if tracking["tracker"] == "mlflow":
        uri = tracking["mlflow_uri"] or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{sd.mlflow_db}"
        return f"mlflow ui --backend-store-uri {uri}", "MLflow on 127.0.0.1:5000: a run per trial, tags arm and state"
    if tracking["tracker"] == "wandb":
        if os.environ.get("WANDB_MODE") == "offline":
            return f"wandb sync {sd.wandb}/offline-run-*", "W&B: upload the offline runs, then open the project"
        return "https://wandb.ai", f"W&B: project {tracking['wandb_project']}, group {sd.name}"
    return None
