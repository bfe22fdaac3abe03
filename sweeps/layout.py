"""A sweep's folder, `<storage>/<name>/`, and every file and folder name in it.

    space.yaml              the validated search space the sweep runs (copied at start)
    sweep.json              `SweepMeta`: name, created, git commit, executor; storage URL only when the user
                            set one; the teacher cache its trials read; the Ray cluster address when it joined one
    optuna.db               Optuna studies, one per (scale, arm) (unless search.storage_url is set)
    tune/                   Ray Tune experiment (restorable)
    tensorboard/<run>/      TensorBoard event files, one run per trial (see sweeps/tracking.py)
    mlflow.db               MLflow runs (`tracking.tracker: mlflow` without a tracking URI), and
    mlflow-artifacts/       the artifact folder MLflow records for them
    wandb/                  W&B run files (`tracking.tracker: wandb`; offline runs stay here)
    runs/<trial>/           kdsweep's own run folder per search trial (see distill/run/rundir.py)
    replicates/<scale>__<arm>[.r<r>][.no-<enhancement>...]__seed<k>/   the replicate runs of `sweep
                            replicate`: search replicate r > 0, and the matched ablations
    train/                  Ray Train run storage (ray_train executor only)
    analysis/               `kdsweep analyze` output

Nothing else in the code spells these names. Paths are derived from where the
folder is now, so a sweep folder that was moved or copied works where it is
(its default Optuna database is the `optuna.db` beside `sweep.json`). A renamed folder
keeps its sweep's name (`sweep.json`'s `name`), which is what its Optuna studies are called.

A sweep name is one folder name under the storage root, never a path: SWEEP_NAME_RULE
(no `/`, no `..`, not `.`, nothing hidden), from `--name` and from the space's `name:` alike.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import NamedTuple

from kdsweep.distill.errors import ConfigError, shown
from kdsweep.distill.files.atomic import write_atomic
from kdsweep.distill.files.numbers import dumps

DEFAULT_STORAGE = "kdsweep_runs"
SWEEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
SWEEP_NAME_RULE = "1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit"
# SQLite's file header (https://www.sqlite.org/fileformat.html): anything else is not a database.
SQLITE_MAGIC = b"SQLite format 3\x00"
_SEED_DIR = re.compile(r"^seed(\d+)$")


def storage_root(storage: str | None) -> Path:
    """Absolute (Tune needs it): --storage, else $KDSWEEP_STORAGE, else ./kdsweep_runs."""
    return Path(storage or os.environ.get("KDSWEEP_STORAGE") or DEFAULT_STORAGE).expanduser().resolve()


def check_sweep_name(name, what: str) -> str:
    """`name` if it is a sweep name (one folder under the storage root), else a ConfigError naming `what`."""
    if not isinstance(name, str) or not SWEEP_NAME.fullmatch(name):
        raise ConfigError(f"{what}: {shown(name)} is not a sweep name; allowed: {SWEEP_NAME_RULE} "
                          "(a sweep is one folder under --storage)")
    return name


_ARM_PART = re.compile(r"^(?P<arm>[a-z]+)(?:\.r(?P<r>[1-9]\d*))?(?P<off>(?:\.no-[a-z]+)*)$")


class ReplicateName(NamedTuple):
    """What a replicate folder holds: a study's best config (`search_replicate` r of (scale, arm)) trained
    with `seed`, with the enhancements in `off` switched off (empty: the tuned config itself)."""

    scale: str
    arm: str
    seed: int
    search_replicate: int = 0
    off: tuple[str, ...] = ()


def replicate_name(scale: str, arm: str, seed: int, search_replicate: int = 0, off: tuple[str, ...] = ()) -> str:
    return f"{scale}__{arm}{f'.r{search_replicate}' if search_replicate else ''}{''.join(f'.no-{e}' for e in off)}" \
           f"__seed{seed}"


def parse_replicate_name(name: str) -> ReplicateName | None:
    """Inverse of `replicate_name`: '<scale>__<arm>[.r<r>][.no-<enhancement>...]__seed<k>' (the scale may
    hold '_')."""
    parts = name.rsplit("__", 2)
    if len(parts) != 3:
        return None
    seed, arm = _SEED_DIR.match(parts[2]), _ARM_PART.match(parts[1])
    if not (seed and arm):
        return None
    off = tuple(e for e in arm["off"].split(".no-") if e)
    return ReplicateName(parts[0], arm["arm"], int(seed.group(1)), int(arm["r"] or 0), off)


def config_file_name(scale: str, arm: str, search_replicate: int = 0) -> str:
    """The file `sweep export` (and `analyze`) writes for one (scale, arm) (and search replicate)."""
    return f"{scale}__{arm}{f'.r{search_replicate}' if search_replicate else ''}.yaml"


def student_folder_name(scale: str, arm: str, search_replicate: int = 0) -> str:
    """The folder `sweep export --out DIR` gives one (scale, arm): its student (`--students`), and the
    exported config's final run (`final/`) for each search replicate."""
    return f"{scale}_{arm}{f'.r{search_replicate}' if search_replicate else ''}"


@dataclass(frozen=True)
class SweepMeta:
    """`sweep.json`: what a sweep is and how it stands. Only `SweepDir.write_meta` writes it. A field an
    older sweep.json lacks reads as its default; keys this version does not know are kept as they were."""

    name: str | None = None  # the sweep's own name (its Optuna studies'), which a renamed folder keeps
    created: str | None = None
    git_commit: str | None = None
    storage_url: str | None = None  # the user's search.storage_url; None: the optuna.db beside sweep.json
    executor: str | None = None
    source: str | None = None  # the search space file the sweep started from
    total_trials: int | None = None
    state: str | None = None  # "running" (or interrupted) / "finished"
    teacher_cache: str | None = None  # the cache its trials read (sweeps/cache.py); None: the live teacher
    ray_address: str | None = None  # the Ray cluster it joined (`kdsweep dashboard`'s SSH line)
    finished: str | None = None
    replicate_seeds: int = 0  # the most seeds `sweep replicate` was asked for: what the analysis should expect
    ablations: bool = False  # whether `sweep replicate` ran the matched ablations
    warm_start_from: str | None = None  # `sweep run --warm-start-from`: the earlier sweep its studies were seeded from
    extra: dict = field(default_factory=dict, repr=False)  # keys of a newer kdsweep, written back unchanged

    @classmethod
    def from_json(cls, data: dict) -> SweepMeta:
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in data.items() if k in known},
                   extra={k: v for k, v in data.items() if k not in known})

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"} | self.extra


@dataclass(frozen=True)
class SweepDir:
    root: Path

    @property
    def name(self) -> str:
        """The sweep's own name (its Optuna studies are `<name>:<scale>/<arm>`): `sweep.json`'s,
        which a renamed folder keeps; the folder's name until `sweep.json` exists."""
        name = self.meta().name if self.meta_path.exists() else None
        return self.root.name if name is None else name

    @property
    def folder(self) -> str:
        """The folder's name: what commands take to find this sweep under --storage."""
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

    def replicate_dir(self, scale: str, arm: str, seed: int, search_replicate: int = 0,
                      off: tuple[str, ...] = ()) -> Path:
        return self.replicates / replicate_name(scale, arm, seed, search_replicate, off)

    def meta(self) -> SweepMeta:
        if not self.meta_path.is_file():
            raise ConfigError(f"{self.root}: no sweep here (no sweep.json); run `kdsweep sweep run` first "
                              "or pass --storage")
        try:
            meta = json.loads(self.meta_path.read_bytes())
        except (ValueError, OSError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise ConfigError(f"{self.meta_path}: damaged sweep record ({str(e).splitlines()[0][:200]}); "
                              "restore it from a copy of the sweep folder") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("name", ""), str):
            raise ConfigError(f"{self.meta_path}: damaged sweep record (expected a JSON object with a name)")
        return SweepMeta.from_json(meta)

    def storage_url(self, *, create: bool = False) -> str:
        """The Optuna storage URL: the user's `search.storage_url`, else this folder's `optuna.db`.

        Only a starting sweep may create the database (`create=True`): everywhere else a missing
        one is an error, because Optuna would silently create an empty one and a finished sweep
        would read as all pending.
        """
        url = self.meta().storage_url
        if url:
            return url
        if not create:
            if not self.default_db.is_file():
                raise ConfigError(f"{self.root}: the sweep's Optuna database {self.default_db} is missing; "
                                  "cannot read its trials")
            check_sqlite_file(self.default_db)
        return f"sqlite:///{self.default_db}"

    def write_meta(self, meta: SweepMeta) -> None:
        write_atomic(self.meta_path, dumps(meta.to_json(), indent=2) + "\n")

    def update_meta(self, **changes) -> SweepMeta:
        """sweep.json with `changes` (SweepMeta fields) made; returns what it now holds."""
        meta = replace(self.meta(), **changes)
        self.write_meta(meta)
        return meta


def check_sqlite_file(path: Path) -> None:
    """An existing SQLite database starts with SQLite's header: an empty or damaged file would be
    given a fresh, empty schema by Optuna, and a finished sweep would read as all pending."""
    with open(path, "rb") as fh:
        head = fh.read(len(SQLITE_MAGIC))
    if head != SQLITE_MAGIC:
        what = "is empty" if not head else "is not an SQLite database"
        raise ConfigError(f"{path}: the sweep's Optuna database {what}; restore it from a copy of the "
                          "sweep folder (kdsweep never creates a fresh one for an existing sweep)")


def open_sweep(name: str, storage: str | None) -> SweepDir:
    sd = SweepDir(storage_root(storage) / check_sweep_name(name, "sweep name"))
    if not sd.meta_path.is_file():
        raise unknown_sweep(name, sd.root.parent)
    sd.meta()  # a damaged sweep.json is named
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
