"""A sweep's teacher cache: built before its trials start, as a Ray task with the teacher's resources.

Every trial of a space reads the same pool of train blocks (its `train:` budget is not
searched) and scores the same held-out proteins, so one cache serves every scale, arm,
trial and replicate (distill/teacher/cache.py). `sweep run`, `sweep resume` and `sweep
replicate` call `ensure_teacher_cache` once Ray is up and before any trial: it plans the
cache in a Ray task (data and teacher config only), checks a complete one against its key,
builds it if absent in a Ray task that reserves the teacher's resources (so on a cluster it
runs on a GPU node), verifies it once on every node that can run a trial (`verify_on_nodes`:
the build's own record makes that free on the node that built it), and its folder is handed
to every trial as a parameter of the trainable, from which the trial's TrainConfig gets
`teacher_cache` (sweeps/trial.py), whichever executor runs it; `sweep.json` records it
(`record_teacher_cache`) for those who read the sweep later.

Where: `cache.dir` of the space, else `<storage root>/teacher_cache/`, beside the
sweeps: storage every node mounts whenever the sweep folders are, and shared by every
sweep in that root with the same key. A node-local `cache.dir` is only right when every
trial runs on that node.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Callable

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from kdsweep.distill.config import TrainConfig
from kdsweep.distill.errors import KDSweepError
from kdsweep.distill.files.digests import bytes_hashed
from kdsweep.distill.files.diskfull import full_disk_in
from kdsweep.distill.inputs import check_writable_dir
from kdsweep.distill.teacher.cache import (CachePlan, TeacherCache, build_teacher_cache, heldout_donor, is_complete,
                                   plan_teacher_cache)
from kdsweep.sweeps.console import BuildProgress
from kdsweep.sweeps.layout import SweepDir
from kdsweep.sweeps.space import SearchSpace, worker_resources

PROGRESS_EVERY_S = 0.5  # between two progress updates the build task sends the driver
CACHE_DIR = "teacher_cache"


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


def check_cache_dir(space: SearchSpace, storage_root: Path) -> None:
    """Before any work: the folder the space's cache goes in can be created and written."""
    check_writable_dir(cache_root(space, storage_root), "cache.dir")


def _plan_task(space: SearchSpace, storage_root: str) -> tuple[str, bool, str]:
    """In a Ray task on a node like the trials': the precision the key holds resolves there
    ('auto' is bf16 on a GPU, fp32 on the driver's CPU). A complete cache is opened (its key and
    file sizes checked against the plan). Returns (folder, complete, size line)."""
    plan = plan_space_cache(space, Path(storage_root))
    complete = is_complete(plan.path)
    if complete:
        TeacherCache.open(plan.path, plan.key)
    donor = None if complete else heldout_donor(plan)
    reuse = f"\nteacher cache: its val/test hidden states are linked from {donor}, not computed" if donor else ""
    return str(plan.path), complete, plan.describe() + reuse


def _build_task(space: SearchSpace, storage_root: str):
    """A Ray generator task: builds the cache in a thread, yielding (teacher tokens done, in all)
    at most every PROGRESS_EVERY_S as it goes, then the cache's folder (the driver's progress bar)."""
    updates: queue.Queue = queue.Queue()
    outcome: dict = {}

    def build() -> None:
        try:
            outcome["path"] = str(build_teacher_cache(plan_space_cache(space, Path(storage_root)), progress=False,
                                                      log=lambda _: None, on_progress=lambda *p: updates.put(p)))
        except BaseException as e:  # re-raised in the task itself, below
            outcome["error"] = e
        finally:
            updates.put(None)

    thread = threading.Thread(target=build, daemon=True)
    thread.start()
    last = 0.0
    while (update := updates.get()) is not None:
        if time.monotonic() - last >= PROGRESS_EVERY_S:
            last = time.monotonic()
            yield update
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    yield outcome["path"]


def _get(ref):
    """ray.get, with an input error or a full disk raised in the task re-raised as itself (one line,
    exit 2 or 1)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, KDSweepError) or full_disk_in(e.cause) is e.cause:
            raise e.cause from None
        raise


def ensure_teacher_cache(space: SearchSpace, storage_root: Path, log: Callable[[str], None] = print) -> str | None:
    """The folder of the space's teacher cache under `storage_root` (the folder holding the sweeps),
    built first if absent, as a Ray task with the teacher's resources; None when the space turns the
    cache off. Ray must be initialised."""
    if not space.cache["enabled"]:
        return None
    task = ray.remote(**build_resources(space))
    path, complete, size = _get(task(_plan_task).remote(space, str(storage_root)))
    if complete:
        log(f"teacher cache: reading {path}")
        verify_on_nodes(space, path, log)
        return path
    res = build_resources(space)
    log(f"{size}\nteacher cache: building as a Ray task ({res['num_cpus']:g} CPU, {res['num_gpus']:g} GPU)")
    started = time.time()
    with BuildProgress("teacher cache", "teacher tokens") as bar:
        for ref in task(_build_task).options(num_returns="streaming").remote(space, str(storage_root)):
            item = _get(ref)
            if isinstance(item, str):
                path = item
            else:
                bar.update(*item)
    log(f"teacher cache: built in {time.time() - started:.1f} s: {path}")
    verify_on_nodes(space, path, log)
    return path


def _verify_task(path: str) -> tuple[int, float]:
    """On one node: verify every cache file not verified there yet. Returns (bytes hashed, seconds)."""
    started, before = time.time(), bytes_hashed()
    TeacherCache.open(path, None).verify()
    return bytes_hashed() - before, time.time() - started


def trial_nodes(space: SearchSpace) -> list[str]:
    """Ids of the alive nodes that can hold one of the space's trial workers (a CPU-only head with
    `CPU: 0` cannot, and reads no cache)."""
    need = worker_resources(space)
    return [n["NodeID"] for n in ray.nodes()
            if n["Alive"] and all(n["Resources"].get(k, 0.0) >= v for k, v in need.items())]


def verify_on_nodes(space: SearchSpace, path: str, log: Callable[[str], None] = print) -> None:
    """Verify the cache once on every node that can run a trial, one Ray task per node, before any
    trial starts: a trial then hashes nothing (distill/files/digests.py). The tasks reserve no CPU (they
    must run even beside another sweep's trials). A node that joins later (an autoscaled GPU node)
    verifies each file at its first trial's first read of it, once for the node."""
    nodes = trial_nodes(space)
    task = ray.remote(num_cpus=0)(_verify_task)
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(path)
            for node in nodes]
    results = [_get(ref) for ref in refs]
    hashed = sum(n for n, _ in results)
    slowest = max((s for _, s in results), default=0.0)
    log(f"teacher cache: verified on {len(nodes)} node(s), {hashed / 1e9:.3g} GB hashed "
        f"(files already verified on a node are not read), {slowest:.1f} s")


def record_teacher_cache(sd: SweepDir, path: str | None) -> None:
    """Record in sweep.json the cache the sweep's trials read (None: the live teacher)."""
    if sd.meta().teacher_cache != path:
        sd.update_meta(teacher_cache=path)
