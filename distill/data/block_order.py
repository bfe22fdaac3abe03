"""Which train blocks a run reads, and in which order (method §4).

The blocks a run can read are a fixed **pool**: the first K blocks of the train
block list, with ``K = min(n_blocks, total_steps × batch_size)`` (``pool_size``).
That list is cut from the train proteins in their hash order (distill/data/batches.py), so
the pool depends on the data, the split, the tokenizer, the block size and the
token budget only, never on the seed. Every run of a sweep with the same budget
(every trial, every scale and arm, every replicate) therefore reads the same K
blocks, and a teacher cache (distill/teacher/cache.py) holds exactly those.

The seed only changes the order: each pass over the pool is a fresh permutation
seeded by (seed, pass), and the global batch of step k is positions
[k·B, (k+1)·B) of that endless sequence. The order is a pure function of
(seed, step), which is what makes resume reproduce it.
"""

from __future__ import annotations

import math

import torch


def total_steps(cfg) -> int:
    """Optimizer steps of a run: `max_steps`, or ceil(max_tokens / (batch_size × block_size))."""
    if cfg.max_tokens is None:
        return cfg.max_steps
    return max(1, math.ceil(cfg.max_tokens / (cfg.batch_size * cfg.block_size)))


def pool_size(cfg, n_blocks: int) -> int:
    """K, the number of blocks a run reads: all it would read in one pass, at most every block."""
    return min(n_blocks, total_steps(cfg) * cfg.batch_size)


class BlockOrder:
    """The pool block each (step, rank, micro-batch) reads, as a pure function of the seed.

    Block indices returned are in [0, pool): the pool is the first `pool` blocks of the
    train block list, so a pool index is a block index.
    """

    def __init__(self, pool: int, seed: int):
        self.n, self.seed, self._perms = pool, seed, {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g)}  # keep one pass in memory
        return self._perms[epoch]

    def indices(self, step: int, batch_size: int, rank: int, world: int, micro: int, micro_size: int) -> torch.Tensor:
        """(micro_size,) block indices of one rank's micro-batch of optimizer step `step`."""
        start = step * batch_size + rank * (batch_size // world) + micro * micro_size
        pos = torch.arange(start, start + micro_size)
        return torch.stack([self._perm(int(p) // self.n)[int(p) % self.n] for p in pos])
