"""One optimizer step of distillation (method §3–§4), given the pieces.

`optimizer_step` runs the micro-batches of one step (forward, loss, backward; under
DDP the gradients are all-reduced on the last micro-batch only), checks that the loss
is finite, then unscales, clips and steps. The training loop calls it once per step;
benchmarks call it to time a step with a live teacher or a cache.

Two loss implementations (`loss_impl`):

* ``fused`` (default): the student's last hidden states and its LM-head weight go to
  `distill.fused_loss.fused_kd_loss_terms` with the teacher's (`TeacherBatch`); no
  (b, T, V) logits exist. The student runs as `StudentHidden`, a module whose forward
  returns its hidden states AND its head parameters: under DDP that module is what is
  wrapped, so the body runs through DDP's forward and the head weight (for GPT-2 the
  Parameter shared with the token embedding) gets its gradient, once, like any other.
* ``logits``: the models' (b, T, V) logits and `distill.loss.kd_loss_terms`, the
  reference path (and the one for a teacher whose logits are not a linear head).
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch

from distill.fused_loss import fused_kd_loss_terms
from distill.heads import HeadInputs, head_inputs
from distill.loss import KDTerms, kd_loss_terms
from distill.runtime import Runtime

LOSS_IMPLS = ("fused", "logits")


class LossSettings(NamedTuple):
    """The method §3 loss of a run, and which implementation computes it."""

    temperature: float
    alpha: float
    uncertainty: bool
    smoothing: float | None
    weight_norm: str
    impl: str  # "fused" | "logits"

    @classmethod
    def from_config(cls, cfg) -> LossSettings:
        return cls(cfg.temperature, cfg.alpha, cfg.uncertainty, cfg.smoothing, cfg.weight_norm, cfg.loss_impl)

    def options(self) -> dict:
        return {"temperature": self.temperature, "alpha": self.alpha, "uncertainty": self.uncertainty,
                "smoothing": self.smoothing, "weight_norm": self.weight_norm}


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
                      loss: LossSettings, rt: Runtime) -> KDTerms:
    """The loss of one micro-batch: `x` (b, T) token ids (inputs and labels, all valid) read from pool
    blocks `blocks` (b,); `model` is `training_module(...)`, possibly DDP-wrapped."""
    if loss.impl == "fused":
        # Everything under the run's autocast: the forwards, the cached head's matmuls and the
        # fused loss's matmuls (its softmaxes and reductions run in fp32 regardless).
        with rt.autocast():
            student = model(x)
            t = teacher.train_batch(blocks, x)
            return fused_kd_loss_terms(student.hidden, student.weight, t.hidden, t.weight, x, **loss.options(),
                                       teacher_entropy=t.entropy, student_head_bias=student.bias,
                                       teacher_head_bias=t.bias)
    with rt.autocast():
        s_logits = model(input_ids=x).logits  # (b, T, V)
        t_logits = teacher.train_logits(blocks, x)  # (b, T, V)
    # kd_loss upcasts per chunk itself; under CPU autocast its row dot products would run in bf16.
    return kd_loss_terms(s_logits, t_logits, x, **loss.options())


def optimizer_step(model: torch.nn.Module, student: torch.nn.Module, teacher,
                   batches: list[tuple[torch.Tensor, torch.Tensor]], *, loss: LossSettings, rt: Runtime,
                   optimizer, scheduler, scaler, grad_clip: float, poison: bool = False) -> StepResult:
    """One optimizer step over `batches`, this rank's micro-batches [(blocks (b,), x (b, T)), ...].

    The loss of each micro-batch is divided by their number (the step's loss is their mean).
    `poison` makes the loss NaN (fault injection). If the step's loss is not finite, returns
    with grad_norm None before the gradients reach the weights (method §4).
    """
    accum = len(batches)
    terms_sum = torch.zeros(3, dtype=torch.float64, device=rt.device)
    for micro, (blocks, x) in enumerate(batches):
        # DDP all-reduces on the last micro-batch only.
        sync = contextlib.nullcontext() if (micro == accum - 1 or rt.world_size == 1) else model.no_sync()
        with sync:
            terms = micro_batch_terms(model, teacher, blocks, x, loss, rt)
            value = terms.loss * float("nan") if poison else terms.loss
            scaler.scale(value / accum).backward()
        terms_sum += torch.stack([value.detach(), terms.hard, terms.soft]).double() / accum
    # One host sync per optimizer step.
    if not torch.isfinite(terms_sum[0]):
        return StepResult(terms_sum, None)
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(terms_sum, grad_norm)
