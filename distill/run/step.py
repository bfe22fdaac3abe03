"""One optimizer step of distillation (method §3–§4), given the pieces.

`optimizer_step` runs the micro-batches of one step (forward, loss, backward; under
DDP the gradients are all-reduced on the last micro-batch only), checks that the loss
is finite, then unscales, clips and steps. The training loop calls it once per step;
`Stepper` holds a student's optimizer state and calls it, for the benchmarks and
`kdsweep estimate`, which time the same step phase by phase (`distill.run.phases`).

Two loss implementations (`loss_impl`):

* ``fused`` (default): the student's last hidden states and its LM-head weight go to
  `distill.loss.fused.fused_kd_loss_terms` with the teacher's (`TeacherBatch`); no
  (b, T, V) logits exist. The student runs as `StudentHidden`, a module whose forward
  returns its hidden states AND its head parameters: under DDP that module is what is
  wrapped, so the body runs through DDP's forward and the head weight (for GPT-2 the
  Parameter shared with the token embedding) gets its gradient, once, like any other.
* ``logits``: the models' (b, T, V) logits and `distill.loss.kd.kd_loss_terms`, the
  reference path (and the one for a teacher whose logits are not a linear head).
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch

from kdsweep.distill.loss.fused import fused_kd_loss_terms
from kdsweep.distill.loss.heads import HeadInputs, head_inputs
from kdsweep.distill.loss.kd import KDOptions, KDTerms, kd_loss_terms
from kdsweep.distill.optim import make_optimizer, make_scheduler
from kdsweep.distill.run.phases import NO_TIMER
from kdsweep.distill.runtime import Runtime

LOSS_IMPLS = ("fused", "logits")


class LossSettings(NamedTuple):
    """The method §3 loss of a run, and which implementation computes it."""

    options: KDOptions
    impl: str  # "fused" | "logits"

    @classmethod
    def from_config(cls, cfg) -> LossSettings:
        return cls(KDOptions(cfg.temperature, cfg.alpha, cfg.uncertainty, cfg.smoothing, cfg.weight_norm),
                   cfg.loss_impl)


class StudentHidden(torch.nn.Module):
    """A causal LM whose forward(input_ids) returns `HeadInputs` (hidden (b, T, d_s), head weight
    (V, d_s), bias) instead of logits: the module the fused path trains (and DDP wraps)."""

    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> HeadInputs:
        return head_inputs(self.lm, input_ids)


def training_module(student: torch.nn.Module, impl: str) -> torch.nn.Module:
    """What the loop calls forward on (and DDP-wraps): `StudentHidden` for fused, the LM for logits."""
    return StudentHidden(student) if impl == "fused" else student


class StepResult(NamedTuple):
    terms: torch.Tensor  # (3,) float64 on the device: loss, hard, soft, averaged over micro-batches
    grad_norm: torch.Tensor | None  # None: the loss was not finite and no weight was touched


def micro_batch_terms(model: torch.nn.Module, teacher, blocks: torch.Tensor, x: torch.Tensor,
                      loss: LossSettings, rt: Runtime, timer=NO_TIMER) -> KDTerms:
    """The loss of one micro-batch: `x` (b, T) token ids (inputs and labels, all valid) read from pool
    blocks `blocks` (b,); `model` is `training_module(...)`, possibly DDP-wrapped; `teacher` a
    `distill.teacher.source.TeacherSource`."""
    if loss.impl == "fused":
        # Everything under the run's autocast: the forwards, the cached head's matmuls and the
        # fused loss's matmuls (its softmaxes and reductions run in fp32 regardless).
        with rt.autocast():
            with timer.phase("teacher forward"):
                t = teacher.train_batch(blocks, x)
            with timer.phase("student forward"):
                student = model(x)
            with timer.phase("loss"):
                return fused_kd_loss_terms(student.hidden, student.weight, t.hidden, t.weight, x, loss.options,
                                           teacher_entropy=t.entropy, student_head_bias=student.bias,
                                           teacher_head_bias=t.bias)
    with rt.autocast():
        with timer.phase("teacher forward"):
            t_logits = teacher.train_logits(blocks, x)  # (b, T, V)
        with timer.phase("student forward"):
            s_logits = model(input_ids=x).logits  # (b, T, V)
    with timer.phase("loss"):
        # kd_loss upcasts per chunk itself; under CPU autocast its row dot products would run in bf16.
        return kd_loss_terms(s_logits, t_logits, x, loss.options)


def optimizer_step(model: torch.nn.Module, student: torch.nn.Module, teacher,
                   batches: list[tuple[torch.Tensor, torch.Tensor]], *, loss: LossSettings, rt: Runtime,
                   optimizer, scheduler, scaler, grad_clip: float, poison: bool = False,
                   prefetch: list[torch.Tensor] = (), timer=NO_TIMER) -> StepResult:
    """One optimizer step over `batches`, this rank's micro-batches [(blocks (b,), x (b, T)), ...].

    The loss of each micro-batch is divided by their number (the step's loss is their mean).
    `poison` makes the loss NaN (fault injection). If the step's loss is not finite, returns
    with grad_norm None before the gradients reach the weights (method §4). `prefetch`: the
    next step's micro-batches' blocks [(b,), ...], which a teacher cache starts reading now,
    in the background (`distill.teacher.source.BlockPrefetcher`). `timer` (`distill.run.phases`)
    is charged with the step's phases.
    """
    if prefetch:
        teacher.prefetch(prefetch)
    accum = len(batches)
    terms_sum = torch.zeros(3, dtype=torch.float64, device=rt.device)
    for micro, (blocks, x) in enumerate(batches):
        # DDP all-reduces on the last micro-batch only.
        sync = contextlib.nullcontext() if (micro == accum - 1 or rt.world_size == 1) else model.no_sync()
        with sync:
            terms = micro_batch_terms(model, teacher, blocks, x, loss, rt, timer)
            value = terms.loss * float("nan") if poison else terms.loss
            with timer.phase("backward"):
                scaler.scale(value / accum).backward()
        terms_sum += torch.stack([value.detach(), terms.hard, terms.soft]).double() / accum
    # One host sync per optimizer step.
    if not torch.isfinite(terms_sum[0]):
        return StepResult(terms_sum, None)
    with timer.phase("optimizer"):
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return StepResult(terms_sum, grad_norm)


def make_scaler(rt: Runtime) -> torch.amp.GradScaler:
    """fp16 needs loss scaling; bf16/fp32 do not (the scaler is then a no-op)."""
    return torch.amp.GradScaler(rt.device.type, enabled=rt.precision == "fp16")


class Stepper:
    """One student's optimizer, schedule and scaler, stepped by `optimizer_step` on one micro-batch
    per step: the step the benchmarks and `kdsweep estimate` time, with the training loop's code
    (the loop holds the same pieces itself, to checkpoint them)."""

    def __init__(self, student: torch.nn.Module, teacher, rt: Runtime, loss: LossSettings, *, lr: float,
                 weight_decay: float = 0.01, warmup_steps: int = 0, total_steps: int = 1000, grad_clip: float = 1.0):
        self.student, self.teacher, self.rt, self.loss, self.grad_clip = student, teacher, rt, loss, grad_clip
        self.model = training_module(student, loss.impl).train()
        self.optimizer = make_optimizer(student, lr, weight_decay)
        self.scheduler = make_scheduler(self.optimizer, warmup_steps, total_steps)
        self.scaler = make_scaler(rt)

    def step(self, blocks: torch.Tensor, x: torch.Tensor, timer=NO_TIMER, *,
             next_blocks: torch.Tensor | None = None) -> StepResult:
        """One step on `x` (b, T) read from pool blocks `blocks` (b,); `next_blocks` (b,): the next
        step's, read ahead from a teacher cache during this one."""
        return optimizer_step(self.model, self.student, self.teacher, [(blocks, x)], loss=self.loss, rt=self.rt,
                              optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
                              grad_clip=self.grad_clip, prefetch=[] if next_blocks is None else [next_blocks],
                              timer=timer)
