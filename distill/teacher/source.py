"""The teacher as a run sees it: the live model, or a teacher cache (method §4).

One small interface, two implementations, used by the training step (distill/run/step.py)
and the evaluation (distill/run/evaluate.py):

    config           the teacher's config (vocabulary, positions, special ids)
    n_params         its parameter count (compression)
    describe()       "live <name>" or "cache <key digest> <folder>": what the run log records
    train_batch(blocks, ids) -> TeacherBatch: hidden (b, T, d_t), head weight (V, d_t),
                     bias (V,) or None, entropy (b, T - 1) at tau = 1 or None
    prefetch(blocks_list)  the next step's micro-batches' blocks: a cache starts reading them
                     in a background thread (`BlockPrefetcher`); the live teacher ignores it
    train_logits(blocks, ids) -> (b, T, V)      (loss_impl: logits)
    heldout_logits_fn(heldout) -> (ids, mask, proteins) -> (B, L, V)   (distill.eval.metrics)

`blocks` are the (b,) pool indices of the train blocks `ids` (b, T) were read from: the
live teacher runs on `ids`, the cache looks up `blocks`. Callers run these under the
run's autocast, so the live model's forward and a cached head's matmul run at the
student's precision, like the fused loss's own matmuls.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from kdsweep.distill.data.batches import HeldOut
from kdsweep.distill.errors import ModelError
from kdsweep.distill.eval.metrics import TeacherLogitsFn, count_params
from kdsweep.distill.loss.heads import head_inputs, is_linear_head
from kdsweep.distill.models import load_teacher, teacher_logits
from kdsweep.distill.runtime import Runtime
from kdsweep.distill.teacher.cache import TeacherCache, run_key


class TeacherBatch(NamedTuple):
    """What the fused loss needs of the teacher for one micro-batch (no gradients)."""

    hidden: torch.Tensor  # (b, T, d_t) last hidden states, after the final layer norm
    weight: torch.Tensor  # (V, d_t) LM-head weight
    bias: torch.Tensor | None  # (V,)
    entropy: torch.Tensor | None  # (b, T - 1) fp32 entropy at tau = 1, or None: the loss computes it


class LiveTeacher:
    """The loaded teacher model: every batch runs its forward."""

    def __init__(self, model, name: str):
        self.model, self.name = model, name
        self.config = model.config
        self.n_params = count_params(model)

    def describe(self) -> str:
        return f"live {self.name}"

    def prefetch(self, blocks_list: list[torch.Tensor]) -> None:
        """Nothing to read ahead: the live teacher runs on the ids."""

    @property
    def bytes_read(self) -> int:
        """Bytes read from a teacher cache: none."""
        return 0

    def train_batch(self, blocks: torch.Tensor, ids: torch.Tensor) -> TeacherBatch:
        with torch.no_grad():
            hidden, weight, bias = head_inputs(self.model, ids)
        return TeacherBatch(hidden, weight, bias, None)

    def train_logits(self, blocks: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return teacher_logits(self.model, ids)

    def heldout_logits_fn(self, heldout: HeldOut) -> TeacherLogitsFn:
        return lambda ids, mask, _proteins: teacher_logits(self.model, ids, mask)


class CachedTeacher:
    """A teacher cache: hidden states by pool block or held-out protein, times the teacher's head.
    Holds only the head on the device, never the teacher's other weights."""

    def __init__(self, cache: TeacherCache, config, device: torch.device):
        self.cache, self.config, self.device = cache, config, device
        weight, bias = cache.head()
        self.weight = weight.to(device)  # (V, d_t) fp32
        self.bias = None if bias is None else bias.to(device)
        self.n_params = cache.teacher_params
        self.reader = BlockPrefetcher(self._read, pin=device.type == "cuda")

    def describe(self) -> str:
        return f"cache {self.cache.key_digest} {self.cache.path}"

    def prefetch(self, blocks_list: list[torch.Tensor]) -> None:
        """Start reading these (b,) block sets' rows in the background (the next step's)."""
        self.reader.ahead(blocks_list)

    @property
    def bytes_read(self) -> int:
        """Bytes read from the cache's files so far (train blocks, held-out proteins, head)."""
        return self.cache.bytes_read

    def train_batch(self, blocks: torch.Tensor, ids: torch.Tensor) -> TeacherBatch:
        hidden, entropy = self.reader.take(blocks)  # prefetched, or read now
        # Pinned on CUDA: the copies overlap the device's work.
        hidden = hidden.to(self.device, non_blocking=True)  # storage dtype; the loss upcasts
        entropy = entropy.to(self.device, non_blocking=True)
        return TeacherBatch(hidden, self.weight, self.bias, entropy)

    def _read(self, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.train_hidden(blocks), self.cache.train_entropy(blocks)

    def train_logits(self, blocks: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self._logits(self.cache.train_hidden(blocks))

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(b, L, d_t) storage-dtype hidden states -> (b, L, V), as the live head computes them:
        an exact upcast to the head's fp32, then F.linear (under the caller's autocast)."""
        return F.linear(hidden.to(self.device, self.weight.dtype), self.weight, self.bias)

    def heldout_logits_fn(self, heldout: HeldOut) -> TeacherLogitsFn:
        if heldout.split is None:
            raise ValueError("a teacher cache scores only the val/test split of its own data, "
                             "not proteins from another file")
        split = heldout.split
        self.cache.check_heldout(split, heldout)

        def logits(ids: torch.Tensor, mask: torch.Tensor, proteins: torch.Tensor | None) -> torch.Tensor:
            if proteins is None:
                raise ValueError("held-out batches for a teacher cache must carry their 'protein' indices")
            return self._logits(self.cache.heldout_hidden(split, proteins.cpu(), ids.shape[1]))

        return logits


class BlockPrefetcher:
    """Reads a teacher cache's train rows for given blocks ahead of their step, in one
    background thread, so that the read (and a shard's first-touch verification) overlaps
    the step before.

    ``ahead(blocks_list)`` queues a read of each (b,) block set; ``take(blocks)`` returns
    the oldest queued read of exactly these blocks, waiting for it if need be, or reads in
    the caller's thread when none is queued (``misses`` counts those). Every queued read is
    taken once (a step that reads the same blocks as the step before queues them again).
    A read's error (a damaged shard's DataError) is raised by ``take``, in the caller's
    thread, at the step that needs the rows. At most ``MAX_QUEUED`` reads are kept (a few
    steps' micro-batches); the oldest is dropped beyond that. ``pin``: results in pinned
    memory, for asynchronous copies to a GPU.
    """

    MAX_QUEUED = 64

    def __init__(self, read: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], *, pin: bool):
        self._read, self._pin = read, pin
        self._queued: deque[tuple[tuple[int, ...], Future]] = deque()
        self._pool: ThreadPoolExecutor | None = None  # started on first use
        self.misses = 0

    def ahead(self, blocks_list: list[torch.Tensor]) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kdsweep-prefetch")
        for blocks in blocks_list:
            self._queued.append((tuple(blocks.tolist()), self._pool.submit(self._load, blocks)))
        while len(self._queued) > self.MAX_QUEUED:
            self._queued.popleft()[1].cancel()

    def take(self, blocks: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = tuple(blocks.tolist())
        for i, (queued, future) in enumerate(self._queued):
            if queued == key:
                del self._queued[i]
                return future.result()
        self.misses += 1
        return self._load(blocks)

    def _load(self, blocks: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rows = self._read(blocks)
        return tuple(x.pin_memory() for x in rows) if self._pin else rows


TeacherSource = LiveTeacher | CachedTeacher


def open_teacher(cfg, teacher_name: str, teacher_config, data_info: dict, pool: int, rt: Runtime) -> TeacherSource:
    """The teacher a run with config `cfg` trains against: the cache `cfg.teacher_cache` (its key
    checked against this run's: teacher, data, split, tokenizer, block size, pool of `pool`
    blocks, precision), else the live model."""
    if cfg.teacher_cache is not None:
        expected = run_key(cfg, teacher_name, data_info, pool, rt.precision)
        return CachedTeacher(TeacherCache.open(cfg.teacher_cache, expected), teacher_config, rt.device)
    model = load_teacher(teacher_name, device=rt.device)
    if cfg.loss_impl == "fused" and not is_linear_head(model):
        raise ModelError(f"loss_impl: 'fused' needs a teacher whose logits are a linear head of its last hidden "
                         f"state, and {teacher_name}'s are not (a soft cap or scaling after the head?); "
                         "set loss_impl: logits")
    return LiveTeacher(model, teacher_name)
