"""A sweep's teacher cache: built before its trials start, as a Ray task with the teacher's resources.

Every trial of a space reads the same pool of train blocks (its `train:` budget is not
searched) and scores the same held-out proteins, so one cache serves every scale, arm,
trial and replicate (distill/teacher_cache.py). `sweep run`, `sweep resume` and `sweep
replicate` call `ensure_teacher_cache` once Ray is up: it plans the cache on the driver
(data and teacher config only), builds it if absent in a Ray task that reserves the
teacher's resources (so on a cluster it runs on a GPU node), and records its folder in
`sweep.json`, from which every trial's TrainConfig gets `teacher_cache` (sweeps/trial.py),
whichever executor runs it.

Where: `cache.dir` of the space, else `<storage root>/teacher_cache/`, beside the
sweeps: storage every node mounts whenever the sweep folders are, and shared by every
sweep in that root with the same key. A node-local `cache.dir` is only right when every
trial runs on that node.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import ray

from distill.config import TrainConfig
from distill.teacher_cache import CachePlan, build_teacher_cache, is_complete, plan_teacher_cache
from sweeps.layout import SweepDir
from sweeps.space import SearchSpace

CACHE_DIR = "teacher_cache"
META_KEY = "teacher_cache"


def cache_root(space: SearchSpace, storage_root: Path) -> Path:
    """The folder caches of this space live in (each in a subfolder named by its key)."""
    given = space.cache["dir"]
    return Path(given).expanduser().resolve() if given else storage_root / CACHE_DIR


def cache_train_config(space: SearchSpace) -> TrainConfig:
    """A trial config of the space: what every trial shares that the cache key depends on
    (teacher, tokenizer, data, split, block size, budget, precision)."""
    return space.trial_config(space.studies[0], {}, "unused")


def plan_space_cache(space: SearchSpace, storage_root: Path) -> CachePlan:
    return plan_teacher_cache(cache_train_config(space), space.cache["dtype"], cache_root(space, storage_root))


def build_resources(space: SearchSpace) -> dict:
    """What the build task reserves: a trial worker's CPUs, and `cache.gpus` (default: one GPU
    when trials use GPUs; the teacher needs a whole one even when trials share it)."""
    gpus = space.cache["gpus"]
    if gpus is None:
        gpus = 1.0 if float(space.resources["gpus_per_worker"]) > 0 else 0.0
    return {"num_cpus": float(space.resources["cpus_per_worker"]), "num_gpus": float(gpus)}


def _plan_task(space: SearchSpace, storage_root: str) -> tuple[str, bool, str]:
    """In a Ray task on a node like the trials': the precision the key holds resolves there
    ('auto' is bf16 on a GPU, fp32 on the driver's CPU). Returns (folder, complete, size line)."""
    plan = plan_space_cache(space, Path(storage_root))
    return str(plan.path), is_complete(plan.path), plan.describe()


def _build_task(space: SearchSpace, storage_root: str) -> str:
    return str(build_teacher_cache(plan_space_cache(space, Path(storage_root)), progress=False))


def ensure_teacher_cache(space: SearchSpace, sd: SweepDir, log: Callable[[str], None] = print) -> str | None:
    """Build the space's teacher cache if absent (a Ray task with the teacher's resources) and record
    its folder in sweep.json (None when the space turns the cache off). Ray must be initialised."""
    path = None
    if space.cache["enabled"]:
        task = ray.remote(**build_resources(space))
        path, complete, size = ray.get(task(_plan_task).remote(space, str(sd.root.parent)))
        if complete:
            log(f"teacher cache: reading {path}")
        else:
            res = build_resources(space)
            log(f"{size}\nteacher cache: building as a Ray task ({res['num_cpus']:g} CPU, {res['num_gpus']:g} GPU)")
            started = time.time()
            path = ray.get(task(_build_task).remote(space, str(sd.root.parent)))
            log(f"teacher cache: built in {time.time() - started:.1f} s: {path}")
    meta = sd.meta()
    if meta.get(META_KEY) != path:
        meta[META_KEY] = path
        sd.write_meta(meta)
    return path
