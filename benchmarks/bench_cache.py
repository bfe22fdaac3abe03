"""A real teacher cache for a benchmark: the first N bundled proteins, hash split, built once.

Shared by benchmarks/vs_seed.py and benchmarks/teacher_cache_step.py, so that their
"cached teacher" steps read the same memory-mapped shards a sweep's trials read
(`distill.teacher.cache`), through `distill.teacher.source.CachedTeacher`. The subset keeps
the held-out splits (which every cache also stores) small; the pool is the first
`blocks` train blocks, the ones the benchmark steps on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from kdsweep.distill.config import TrainConfig
from kdsweep.distill.data.batches import write_bundled_subset
from kdsweep.distill.teacher.cache import CachePlan, TeacherCache, build_teacher_cache, cache_size_bytes, plan_teacher_cache
from kdsweep.distill.teacher.source import CachedTeacher


@dataclass
class BenchCache:
    plan: CachePlan
    teacher: CachedTeacher
    build_wall: float  # seconds
    build_cpu: float  # process CPU seconds
    size_bytes: int

    @property
    def train_blocks(self) -> torch.Tensor:
        """(pool, T) token ids of the cached pool's blocks."""
        return self.plan.data.train_blocks[: self.plan.key.n_blocks]

    def describe(self) -> str:
        return (f"teacher cache: {self.plan.key.n_blocks} train blocks + val/test "
                f"({sum(self.plan.heldout_tokens().values()):,} tokens), {self.plan.key.dtype}, "
                f"{self.size_bytes / 1e6:.1f} MB, built in {self.build_wall:.1f} s wall, {self.build_cpu:.1f} s CPU")


def build_bench_cache(teacher_dir: Path, work: Path, *, proteins: int, block: int, blocks: int, precision: str,
                      device: str, dtype: str = "fp32") -> BenchCache:
    """Build (under `work`) the cache of `blocks` train blocks of `block` tokens of the first
    `proteins` bundled proteins for the teacher saved in `teacher_dir`, at `precision` on `device`."""
    data = write_bundled_subset(work / "proteins.fasta", proteins)
    cfg = TrainConfig(teacher=str(teacher_dir), data=str(data), split_method="hash", scale="micro",
                      block_size=block, batch_size=blocks, micro_batch_size=blocks, max_steps=1,
                      precision=precision, device=device, eval_batch_size=8)
    plan = plan_teacher_cache(cfg, dtype, work / "caches")
    if plan.key.n_blocks < blocks:
        raise SystemExit(f"--proteins {proteins}: their train split makes {plan.key.n_blocks} blocks of {block} "
                         f"tokens, and {blocks} are needed; raise --proteins")
    wall, cpu = time.perf_counter(), time.process_time()
    path = build_teacher_cache(plan, progress=False, log=lambda _: None)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    teacher = CachedTeacher(TeacherCache.open(path, plan.key), plan.teacher_config, plan.runtime.device)
    return BenchCache(plan, teacher, wall, cpu, cache_size_bytes(path))
