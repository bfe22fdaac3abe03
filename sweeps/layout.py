"""A sweep's folder, `<storage>/<name>/`, and every file and folder name in it.

    space.yaml              the validated search space the sweep runs (copied at start)
    sweep.json              name, created, git commit, executor; storage URL only when the user set one;
                            the Ray cluster address when it joined one
    optuna.db               Optuna studies, one per (scale, arm) (unless search.storage_url is set)
    tune/                   Ray Tune experiment (restorable)
    tensorboard/<run>/      TensorBoard event files, one run per trial (see sweeps/tracking.py)
    mlflow.db               MLflow runs (`tracking.tracker: mlflow` without a tracking URI), and
    mlflow-artifacts/       the artifact folder MLflow records for them
    wandb/                  W&B run files (`tracking.tracker: wandb`; offline runs stay here)
    runs/<trial>/           kdsweep's own run folder per search trial (see distill/rundir.py)
    replicates/<scale>__<arm>__seed<k>/   the replicate runs of `sweep replicate`
    train/                  Ray Train run storage (ray_train executor only)
    analysis/               `kdsweep analyze` output

Nothing else in the code spells these names. Paths are derived from where the
folder is now, so a sweep folder that was moved or copied works where it is
(its default Optuna database is the `optuna.db` beside `sweep.json`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from distill.errors import ConfigError
from distill.numbers import dumps

DEFAULT_STORAGE = "kdsweep_runs"
_SEED_DIR = re.compile(r"^seed(\d+)$")


def storage_root(storage: str | None) -> Path:
    """Absolute (Tune needs it): --storage, else $KDSWEEP_STORAGE, else ./kdsweep_runs."""
    return Path(storage or os.environ.get("KDSWEEP_STORAGE") or DEFAULT_STORAGE).expanduser().resolve()


def replicate_name(scale: str, arm: str, seed: int) -> str:
    return f"{scale}__{arm}__seed{seed}"


def parse_replicate_name(name: str) -> tuple[str, str, int] | None:
    """Inverse of `replicate_name`: '<scale>__<arm>__seed<k>' (the scale may hold '_')."""
    parts = name.rsplit("__", 2)
    if len(parts) != 3:
        return None
    m = _SEED_DIR.match(parts[2])
    return (parts[0], parts[1], int(m.group(1))) if m else None


def config_file_name(scale: str, arm: str) -> str:
    """The file `sweep export` (and `analyze`) writes for one (scale, arm)."""
    return f"{scale}__{arm}.yaml"


@dataclass(frozen=True)
class SweepDir:
    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    space = property(lambda self: self.root / "space.yaml")
    meta_path = property(lambda self: self.root / "sweep.json")
    tune = property(lambda self: self.root / "tune")
    runs = property(lambda self: self.root / "runs")
    replicates = property(lambda self: self.root / "replicates")
    train_storage = property(lambda self: self.root / "train")
    analysis = property(lambda self: self.root / "analysis")
    tensorboard = property(lambda self: self.root / "tensorboard")
    mlflow_db = property(lambda self: self.root / "mlflow.db")
    mlflow_artifacts = property(lambda self: self.root / "mlflow-artifacts")
    wandb = property(lambda self: self.root / "wandb")
    default_db = property(lambda self: self.root / "optuna.db")

    def run_dir(self, trial_id: str) -> Path:
        return self.runs / trial_id

    def replicate_dir(self, scale: str, arm: str, seed: int) -> Path:
        return self.replicates / replicate_name(scale, arm, seed)

    def meta(self) -> dict:
        if not self.meta_path.is_file():
            raise ConfigError(f"{self.root}: no sweep here (no sweep.json); run `kdsweep sweep run` first "
                              "or pass --storage")
        return json.loads(self.meta_path.read_text())

    def storage_url(self, *, create: bool = False) -> str:
        """The Optuna storage URL: the user's `search.storage_url`, else this folder's `optuna.db`.

        Only a starting sweep may create the database (`create=True`): everywhere else a missing
        one is an error, because Optuna would silently create an empty one and a finished sweep
        would read as all pending.
        """
        url = self.meta().get("storage_url")
        if url:
            return url
        if not create and not self.default_db.is_file():
            raise ConfigError(f"{self.root}: the sweep's Optuna database {self.default_db} is missing; "
                              "cannot read its trials")
        return f"sqlite:///{self.default_db}"

    def write_meta(self, meta: dict) -> None:
        tmp = self.meta_path.with_name(f".{self.meta_path.name}.{os.getpid()}.tmp")
        tmp.write_text(dumps(meta, indent=2) + "\n")
        os.replace(tmp, self.meta_path)


def open_sweep(name: str, storage: str | None) -> SweepDir:
    sd = SweepDir(storage_root(storage) / name)
    if not sd.meta_path.is_file():
        raise unknown_sweep(name, sd.root.parent)
    sd.meta()
    return sd


def sweep_names(root: Path) -> list[str]:
    """The folders under the storage root `root` that hold a sweep (a sweep.json), sorted."""
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if (d / "sweep.json").is_file())


def unknown_sweep(name: str, root: Path) -> ConfigError:
    """The error for a sweep name with no sweep under `root`: the closest names, and every name there."""
    import difflib

    names = sweep_names(root)
    if not names:
        return ConfigError(f"sweep {name!r}: no sweeps in {root}; start one with `kdsweep sweep run SPACE`, "
                           "or pass --storage (default: $KDSWEEP_STORAGE, else ./kdsweep_runs)")
    close = difflib.get_close_matches(name, names, n=3)
    guess = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    return ConfigError(f"sweep {name!r} not found in {root}; {guess}sweeps there: {shown} "
                       f"(`kdsweep sweep list --storage {root}` shows them)")


def git_commit() -> str:
    """The kdsweep source commit (provenance), or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
