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

import yaml

from distill.config import TrainConfig, config_from_dict
from distill.errors import ConfigError
from distill.rundir import CHECKPOINTS_DIR, CONFIG_NAME, LOG_NAME, STUDENT_DIR, SUMMARY_NAME

# Where the run is and where it came from: not what it trains.
IGNORED = ("output_dir", "provenance")


def differing_keys(cfg: TrainConfig, run_dir: str | Path) -> list[str] | None:
    """Keys whose values differ from the run folder's config.yaml (None when there is no record)."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        old = config_from_dict(yaml.safe_load(path.read_text()) or {}, source=str(path)).to_dict()
    except (ConfigError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: the run's recorded config cannot be read ({str(e).splitlines()[0]}); "
                          "pass --restart to start this run over") from None
    new = cfg.to_dict()
    return [k for k in new if k not in IGNORED and new[k] != old[k]]


def check_same_config(cfg: TrainConfig, run_dir: str | Path) -> None:
    keys = differing_keys(cfg, run_dir)
    if keys:
        old = yaml.safe_load((Path(run_dir) / CONFIG_NAME).read_text())
        shown = ", ".join(f"{k} ({old.get(k)!r} -> {getattr(cfg, k)!r})" for k in keys)
        raise ConfigError(f"{run_dir}: holds a run with a different config: {shown}; use another --out, "
                          "or pass --restart to delete that run and start over")


def clear_run(run_dir: str | Path) -> None:
    """Remove what a run wrote (its config, log, summary, student, checkpoints); other files stay."""
    run_dir = Path(run_dir)
    for name in (CHECKPOINTS_DIR, STUDENT_DIR):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    for name in (CONFIG_NAME, LOG_NAME, SUMMARY_NAME):
        (run_dir / name).unlink(missing_ok=True)
