"""Running `kdsweep train --out DIR` again: the same config resumes, another one is refused.

A run folder's `config.yaml` is the record of what it trains. Re-running with a
different config would otherwise report the old run as "already completed",
resume it with the old optimizer state under a new learning rate, or fail on a
size mismatch deep in `load_state_dict`. `check_same_config` names the keys
that differ; `clear_run` (`kdsweep train --restart`) removes the old run's
outputs so it starts over.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kdsweep.distill.config import TrainConfig, config_from_dict, read_yaml_mapping
from kdsweep.distill.errors import ConfigError, shown
from kdsweep.distill.run.rundir import CHECKPOINTS_DIR, CONFIG_NAME, LOG_NAME, STUDENT_DIR, SUMMARY_NAME

# Where the run is and where it came from: not what it trains.
IGNORED = ("output_dir", "provenance")


def recorded_config(run_dir: str | Path) -> dict | None:
    """The run folder's config.yaml as a validated config dict (None when there is none); an empty or
    damaged one is a ConfigError that says how to start over."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        raw = read_yaml_mapping(path, "run's recorded config")
        if not raw:
            raise ConfigError(f"{path}: empty")
        return config_from_dict(raw, source=str(path)).to_dict()
    except ConfigError as e:
        raise ConfigError(f"{path}: the run's recorded config cannot be read ({str(e).splitlines()[0]}); "
                          "pass --restart to start this run over") from None


def differing_keys(cfg: TrainConfig, run_dir: str | Path) -> list[str] | None:
    """Keys whose values differ from the run folder's config.yaml (None when there is no record)."""
    old = recorded_config(run_dir)
    if old is None:
        return None
    new = cfg.to_dict()
    return [k for k in new if k not in IGNORED and new[k] != old[k]]


def check_same_config(cfg: TrainConfig, run_dir: str | Path) -> None:
    keys = differing_keys(cfg, run_dir)
    if keys:
        old = recorded_config(run_dir)
        shown_keys = ", ".join(f"{k} ({shown(old.get(k))} -> {shown(getattr(cfg, k))})" for k in keys)
        raise ConfigError(f"{run_dir}: holds a run with a different config: {shown_keys}; use another --out, "
                          "or pass --restart to delete that run and start over")


def clear_run(run_dir: str | Path) -> None:
    """Remove what a run wrote (its config, log, summary, student, checkpoints); other files stay."""
    run_dir = Path(run_dir)
    for name in (CHECKPOINTS_DIR, STUDENT_DIR):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    for name in (CONFIG_NAME, LOG_NAME, SUMMARY_NAME):
        (run_dir / name).unlink(missing_ok=True)
