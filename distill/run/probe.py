"""What `kdsweep estimate` and the benchmarks need besides the step itself
(`distill.run.step.Stepper`): model FLOPs per token, random token ids, and a teacher source that
hands every step the same precomputed teacher batch.

Throughput does not depend on the token values, so the probe feeds random token ids and
models with random weights: no data file, no download.
"""

from __future__ import annotations

import torch

from kdsweep.distill.loss.fused import teacher_entropy_from_hidden
from kdsweep.distill.runtime import Runtime
from kdsweep.distill.teacher.source import LiveTeacher, TeacherBatch


class HeldTeacher:
    """A teacher source (`distill.teacher.source`) that returns one precomputed `TeacherBatch`
    for every step: a cached-teacher step without the disk read, for the probe's student
    step. Built from a live teacher on ids (b, T), with the entropies (b, T - 1) uncertainty
    weighting needs when `entropy` (a cache stores them too); constructing it is the
    teacher's part of a live step."""

    def __init__(self, live: LiveTeacher, ids: torch.Tensor, rt: Runtime, *, entropy: bool):
        with torch.no_grad(), rt.autocast():
            batch = live.train_batch(None, ids)
            ent = teacher_entropy_from_hidden(batch.hidden, batch.weight, batch.bias) if entropy else None
        self.batch = batch._replace(entropy=ent)
        self.config = live.config

    def prefetch(self, blocks_list: list[torch.Tensor]) -> None:
        """Nothing to read: the batch is held."""

    def train_batch(self, blocks: torch.Tensor, ids: torch.Tensor) -> TeacherBatch:
        return self.batch


def matmul_params(model) -> int:
    """Parameters that multiply every token: the 2-D weights (the tied embedding counted once,
    as the LM head's matmul), without position embeddings (a lookup)."""
    return sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and "wpe" not in name)


def train_flops_per_token(student, length: int) -> float:
    """Model FLOPs of one trained token: 6 N + 12 l d L (PaLM's accounting, N = matmul_params)."""
    c = student.config
    return 6.0 * matmul_params(student) + 12.0 * c.n_layer * c.n_embd * length


def forward_flops_per_token(model, length: int) -> float:
    """Model FLOPs of one token through a forward pass: 2 N + 4 l d L."""
    c = model.config
    return 2.0 * matmul_params(model) + 4.0 * c.n_layer * c.n_embd * length


def step_flops_per_token(student, teacher, length: int, *, teacher_live: bool) -> float:
    """Model FLOPs of one trained token of a distillation step: the student's training, plus the
    teacher's forward when it runs live, or only its LM head (2 V d_t) when its hidden states
    come from a cache. The study's trainer does the live step's matmuls (its extra work is
    elementwise), so study / cached is the cache's bound on speed-up."""
    if teacher_live:
        return train_flops_per_token(student, length) + forward_flops_per_token(teacher, length)
    c = teacher.config
    return train_flops_per_token(student, length) + 2.0 * c.vocab_size * c.n_embd


def random_tokens(batch: int, length: int, vocab: int, device, seed: int = 0) -> torch.Tensor:
    """(batch, length) token ids drawn with a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=gen).to(device)
