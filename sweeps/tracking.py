"""What TensorBoard, MLflow and W&B record of one Tune trial (Ray-free; used by their callbacks).

* one run per trial, named `<scale>_<arm>_<optuna number>_<trial id>` (a replicate:
  `<scale>_<arm>_<optuna number>_seed<k>_<trial id>`), so runs filter by scale and arm;
* tags: sweep, study, scale, arm, trial id (and a replicate's seed);
* params: the sampled hyperparameters and the Optuna trial number;
* scalars: kdsweep's own metrics against the training `step`. Tune's bookkeeping (done,
  training_iteration, time_*, iterations_since_restore, ...) is left out, and so is Tune's
  iteration count as an x-axis: it restarts at 1 after a restore, the step does not.
"""

from __future__ import annotations

import math
from pathlib import Path

from sweeps.layout import SweepDir

# The metrics of a training row (distill/train.py) drawn as curves.
CURVES = ("val_ppl", "best_val_ppl", "val_nll_per_residue", "val_ece", "val_accuracy", "train_loss", "train_hard",
          "train_soft", "grad_norm", "lr", "tokens_per_s", "tokens",
          # what the run paid besides its steps (distill.train.RunCosts)
          "first_step_s", "steady_tokens_per_s", "bytes_hashed", "cache_bytes_read")
# The rest of a training row: the x-axis and end-of-run markers.
NOT_CURVES = ("step", "best_step", "done_training")
# Keys of a trial config that say which study a trial belongs to, not what was sampled.
STUDY_KEYS = ("study", "scale", "arm", "optuna_number", "replicate_seed", "off")


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


def run_name(config: dict, trial_id: str) -> str:
    seed = f"_seed{config['replicate_seed']}" if "replicate_seed" in config else ""
    off = "".join(f"_no-{e}" for e in config.get("off", ()))  # a matched ablation (sweeps/replicate.py)
    return f"{config['scale']}_{config['arm']}_{config['optuna_number']}{seed}{off}_{trial_id}"


def run_tags(config: dict, trial_id: str, sweep: str) -> dict[str, str]:
    tags = {"sweep": sweep, "study": config["study"], "scale": config["scale"], "arm": config["arm"],
            "trial_id": trial_id}
    if "replicate_seed" in config:
        tags["replicate_seed"] = str(config["replicate_seed"])
    if config.get("off"):
        tags["switched_off"] = ",".join(config["off"])
    return tags


def run_params(config: dict) -> dict:
    keep = {"optuna_number", "replicate_seed"}
    return {k: v for k, v in config.items() if k in keep} | sampled(config)


def scalars(result: dict) -> tuple[int, dict[str, float]] | None:
    """(training step, {metric: finite value}) of a reported result, or None when it has no step."""
    if "step" not in result:
        return None
    values = {k: float(result[k]) for k in CURVES
              if isinstance(result.get(k), (int, float)) and not isinstance(result[k], bool)
              and math.isfinite(result[k])}
    return int(result["step"]), values
