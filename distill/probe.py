"""kdsweep's training step on synthetic tokens, timed: what `kdsweep estimate` probes and
`benchmarks/vs_seed.py` profiles.

One step is what `distill.train.run_training` does per optimizer step at accumulation 1,
on the fused path (method §3 from hidden states, `distill/fused_loss.py`):

    teacher hidden states  (live: the teacher's base under no_grad; cached: given)
    student hidden states  (the student's base, with autograd)
    fused LM head + KD loss (gradients wrt the student's hidden states and head, in its forward)
    backward               (through the student's body)
    optimizer              (clip at cfg.grad_clip, AdamW, LR schedule, zero_grad)

Throughput does not depend on the token values, so the probe feeds random token ids and
models with random weights: no data file, no download. ``PhaseTimer`` splits a step's wall
and CPU time by phase, synchronising CUDA at each boundary so that a phase is charged for
its own kernels.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Iterator

import torch

from distill.fused_loss import fused_kd_loss_terms, teacher_entropy_from_hidden
from distill.heads import head_inputs
from distill.optim import make_optimizer, make_scheduler
from distill.runtime import Runtime

PHASES = ("teacher forward", "student forward", "loss", "backward", "optimizer")


@dataclass
class PhaseTimer:
    """Wall and process-CPU seconds per named phase, summed over every ``phase`` call."""

    device: torch.device = torch.device("cpu")
    wall: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._sync()
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self._sync()
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - wall
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - cpu

    def add(self, name: str, wall: float, cpu: float) -> None:
        """Charge ``name`` with seconds measured elsewhere (e.g. a difference of two phases)."""
        self.wall[name] = self.wall.get(name, 0.0) + wall
        self.cpu[name] = self.cpu.get(name, 0.0) + cpu

    def reset(self) -> None:
        self.wall.clear()
        self.cpu.clear()


class _NoTimer:
    @staticmethod
    def phase(name: str):
        return contextlib.nullcontext()


NO_TIMER = _NoTimer()


@dataclass(frozen=True)
class LossSettings:
    """The method §3 options of one step (an arm and its hyperparameters)."""

    temperature: float = 2.0
    alpha: float = 0.5
    uncertainty: bool = True
    smoothing: float | None = 0.1
    weight_norm: str = "mask"

    def kwargs(self) -> dict:
        return dict(temperature=self.temperature, alpha=self.alpha, uncertainty=self.uncertainty,
                    smoothing=self.smoothing, weight_norm=self.weight_norm)


@dataclass
class TeacherStates:
    """What a teacher cache hands a step: hidden states (B, L, d_t) and, for uncertainty
    weighting, the entropies (B, L - 1) (``teacher_entropy_from_hidden``)."""

    hidden: torch.Tensor
    entropy: torch.Tensor | None


def teacher_states(teacher, input_ids: torch.Tensor, rt: Runtime, *, entropy: bool) -> TeacherStates:
    """The frozen teacher's last hidden states (and entropies) for (B, L) ids, no autograd."""
    with torch.no_grad(), rt.autocast():
        hidden = teacher.base_model(input_ids=input_ids).last_hidden_state  # (B, L, d_t)
        ent = teacher_entropy_from_hidden(hidden, teacher.get_output_embeddings().weight) if entropy else None
    return TeacherStates(hidden, ent)


class FusedStep:
    """kdsweep's optimizer step (see the module docstring) for one student and teacher head.

    ``step(x, teacher=...)`` with ``teacher`` either the live teacher model or
    ``TeacherStates`` (cached); returns the loss as a float.
    """

    def __init__(self, student, teacher_head: torch.Tensor, rt: Runtime, loss: LossSettings, *,
                 lr: float = 1e-3, weight_decay: float = 0.01, grad_clip: float = 1.0, total_steps: int = 1000):
        self.student, self.teacher_head, self.rt, self.loss = student, teacher_head, rt, loss
        self.grad_clip = grad_clip
        self.optimizer = make_optimizer(student, lr, weight_decay)
        self.scheduler = make_scheduler(self.optimizer, 0, total_steps)
        self.scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.precision == "fp16")
        student.train()

    def step(self, x: torch.Tensor, teacher, timer=NO_TIMER) -> float:
        if isinstance(teacher, TeacherStates):
            states = teacher
        else:
            with timer.phase("teacher forward"):
                # The live path lets the fused loss compute the entropies itself (its teacher-only pass).
                states = teacher_states(teacher, x, self.rt, entropy=False)
        with self.rt.autocast():
            with timer.phase("student forward"):
                hidden, weight, bias = head_inputs(self.student, x)
            with timer.phase("loss"):
                terms = fused_kd_loss_terms(hidden, weight, states.hidden, self.teacher_head, x,
                                            teacher_entropy=states.entropy, student_head_bias=bias,
                                            **self.loss.kwargs())
        with timer.phase("backward"):
            self.scaler.scale(terms.loss).backward()
        with timer.phase("optimizer"):
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return float(terms.loss.detach())


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


def random_tokens(batch: int, length: int, vocab: int, device, seed: int = 0) -> torch.Tensor:
    """(batch, length) token ids drawn with a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=gen).to(device)
