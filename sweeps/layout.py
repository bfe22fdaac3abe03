"""A sweep's folder: `<storage>/<name>/`.

    space.yaml      the validated search space the sweep runs (copied at start)
    sweep.json      name, created, git commit, storage URL, executor
    optuna.db       Optuna studies, one per (scale, arm) (unless storage_url is set)
    tune/           Ray Tune experiment (restorable; TensorBoard event files per trial)
    runs/<trial>/   kdsweep's own run folder per trial: config.yaml, metrics.jsonl (full history), metrics.json
    train/          Ray Train run storage (ray_train executor only)
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from distill.errors import ConfigError

DEFAULT_STORAGE = "kdsweep_runs"


def storage_root(storage: str | None) -> Path:
    """Absolute (Tune needs it): --storage, else $KDSWEEP_STORAGE, else ./kdsweep_runs."""
    return Path(storage or os.environ.get("KDSWEEP_STORAGE") or DEFAULT_STORAGE).expanduser().resolve()


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

    def meta(self) -> dict:
        if not self.meta_path.is_file():
            raise ConfigError(f"{self.root}: no sweep here (no sweep.json); run `kdsweep sweep run` first "
                              "or pass --storage")
        return json.loads(self.meta_path.read_text())

    def storage_url(self) -> str:
        return self.meta()["storage_url"]

    def write_meta(self, meta: dict) -> None:
        tmp = self.meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, self.meta_path)


def open_sweep(name: str, storage: str | None) -> SweepDir:
    sd = SweepDir(storage_root(storage) / name)
    sd.meta()  # raises a clear error when it does not exist
    return sd


def git_commit() -> str:
    """The kdsweep source commit (provenance), or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
