"""The study's training step, re-implemented (not copied) for benchmarks/vs_seed.py.

Source: the public repository ewijaya/protein-lm-distill, ``src/distillation.py``
(``DistillationTrainer``, read at commit 0cf0c10) and ``scripts/train.py`` (how it is
driven). What is re-created, faithfully, because it is what the study paid for per step:

* an HF ``transformers.Trainer`` subclass whose ``compute_loss`` runs the student on the
  whole input dict (``model(**inputs)``, labels included, so the model also computes its
  own cross-entropy), then the teacher on the same dict under ``no_grad`` EVERY step
  (the teacher too computes its own loss from the labels), both returning full (B, L, V)
  logits;
* ``.contiguous()`` copies of the shifted student and teacher logits and labels;
* full-vocabulary softmaxes: ``softmax(t / T)`` for the targets; with calibration
  smoothing ``max`` over V, then a uniform (B, L', V) tensor ``ones_like(p) / V`` and the
  blend ``(1 - eps) p + eps * uniform``; ``log_softmax(s / T)``; the KL as
  ``sum(p * (log(p + 1e-10) - log q))``; with uncertainty weighting a second
  ``softmax(t)`` and ``log(p + 1e-10)`` for the entropy, per-sequence min-max weights over
  the attention mask (three clones of the entropy), ``kl * w``;
* soft term ``sum(kl * mask) / sum(mask)``; hard term ``CrossEntropyLoss()`` over every
  shifted position; ``alpha * hard + (1 - alpha) * T^2 * soft``;
* the Trainer's own loop around it: AdamW with weight decay 0.01 and eps 1e-8 (the
  Trainer's default AdamW implementation), linear LR schedule, gradient clipping at
  ``max_grad_norm`` 1.0, ``logging_steps=10``, ``save_strategy="no"``, per-device batch as
  given, the tokenizer as ``processing_class`` (so its padding collator builds batches).

Precision: the study trained with ``fp16=True`` (CUDA AMP). Here every variant of a
comparison runs at the same precision: fp32 on CPU; on CUDA bf16 AMP (``bf16=True``),
which keeps the study's dtypes where they matter: under autocast the softmaxes and
log-softmaxes run in fp32 either way. The teacher is loaded with
``GPT2LMHeadModel.from_pretrained`` (fp32 weights, eval mode), as the study did.

The batch holds ``input_ids``, ``attention_mask`` and ``labels`` (= input_ids): the
study's ``compute_loss`` indexes ``labels`` and uses the mask, so its dataset had both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments

from kdsweep.distill.run.phases import NO_TIMER


def study_entropy(teacher_logits: torch.Tensor) -> torch.Tensor:
    """Entropy at tau = 1 per position, the study's way: a full softmax and log(p + 1e-10)."""
    probs = F.softmax(teacher_logits, dim=-1)
    return -torch.sum(probs * torch.log(probs + 1e-10), dim=-1)


def study_position_weights(entropy: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-sequence min-max weights in [0.5, 1] over the valid positions, zero on padding."""
    if mask is None:
        low = entropy.min(dim=-1, keepdim=True)[0]
        high = entropy.max(dim=-1, keepdim=True)[0]
    else:
        # (The study also makes a third, unused -inf-filled clone; (B, L') only, left out.)
        for_min = entropy.clone()
        for_min[mask == 0] = float("inf")
        low = for_min.min(dim=-1, keepdim=True)[0]
        for_max = entropy.clone()
        for_max[mask == 0] = float("-inf")
        high = for_max.max(dim=-1, keepdim=True)[0]
    spread = high - low
    spread = torch.where(spread < 1e-8, torch.ones_like(spread), spread)
    weights = 0.5 + 0.5 * (entropy - low) / spread
    return weights * mask if mask is not None else weights


def study_smoothing(teacher_probs: torch.Tensor, factor: float) -> torch.Tensor:
    """Calibration smoothing with the study's uniform (B, L', V) tensor."""
    max_prob = teacher_probs.max(dim=-1, keepdim=True)[0]  # (B, L', 1)
    eps = factor * (1.0 - max_prob)
    uniform = torch.ones_like(teacher_probs) / teacher_probs.size(-1)  # (B, L', V)
    return (1.0 - eps) * teacher_probs + eps * uniform


def study_loss(student_logits, teacher_logits, labels, attention_mask, *, temperature: float, alpha: float,
               uncertainty: bool, smoothing: float | None) -> torch.Tensor:
    """The study's loss on unshifted (B, L, V) logits; ``smoothing`` None = calibration off."""
    s = student_logits[..., :-1, :].contiguous()
    t = teacher_logits[..., :-1, :].contiguous()
    shift_labels = labels[..., 1:].contiguous()
    mask = attention_mask[..., 1:].contiguous() if attention_mask is not None else None
    probs = F.softmax(t / temperature, dim=-1)
    if smoothing is not None:
        probs = study_smoothing(probs, smoothing)
    student_log_probs = F.log_softmax(s / temperature, dim=-1)
    kl = torch.sum(probs * (torch.log(probs + 1e-10) - student_log_probs), dim=-1)  # (B, L')
    if uncertainty:
        kl = kl * study_position_weights(study_entropy(t), mask)
    if mask is not None:
        soft = (kl * mask).sum() / mask.sum().clamp(min=1)
    else:
        soft = kl.mean()
    hard = torch.nn.CrossEntropyLoss()(s.view(-1, s.size(-1)), shift_labels.view(-1))
    return alpha * hard + (1.0 - alpha) * temperature**2 * soft


class StudyTrainer(Trainer):
    """The study's ``DistillationTrainer``: teacher forward every step, ``study_loss``.

    ``timer`` (a ``distill.run.phases.PhaseTimer``) is charged with the phases of every step:
    student forward, teacher forward, loss, backward (``accelerator.backward``); the
    rest of the step is charged by ``StepClock``.
    """

    def __init__(self, temperature, alpha, teacher_model, use_uncertainty_weighting=False,
                 use_calibration_smoothing=False, smoothing_factor=0.1, *args, timer=NO_TIMER, **kwargs):
        super().__init__(*args, **kwargs)
        self.temperature, self.alpha, self.teacher_model = temperature, alpha, teacher_model
        self.use_uncertainty_weighting = use_uncertainty_weighting
        self.smoothing = smoothing_factor if use_calibration_smoothing else None
        self.timer = timer
        backward = self.accelerator.backward

        def timed_backward(loss, **kw):
            with self.timer.phase("backward"):
                return backward(loss, **kw)

        self.accelerator.backward = timed_backward

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        device = model.module.device if isinstance(model, torch.nn.DataParallel) else model.device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        with self.timer.phase("student forward"):
            outputs = model(**inputs)
        with self.timer.phase("teacher forward"):
            self.teacher_model = self.teacher_model.to(device)
            with torch.no_grad():
                teacher_logits = self.teacher_model(**inputs).logits
        with self.timer.phase("loss"):
            loss = study_loss(outputs.logits, teacher_logits, inputs["labels"], inputs.get("attention_mask"),
                              temperature=self.temperature, alpha=self.alpha,
                              uncertainty=self.use_uncertainty_weighting, smoothing=self.smoothing)
        return (loss, outputs) if return_outputs else loss


class StepClock(TrainerCallback):
    """Measures every optimizer step of a Trainer (``on_step_begin`` .. ``on_step_end``) with a
    ``benchmarks.step_meter.StepMeter``, for peak memory at the 0-based steps ``memory_steps``. What the step spends outside the timed phases (after
    backward: clipping, AdamW, LR schedule, zero_grad, and the Trainer loop's bookkeeping) is
    charged to ``optimizer``."""

    def __init__(self, meter, memory_steps=()):
        self.meter, self.memory_steps = meter, set(memory_steps)

    def on_step_begin(self, args, state, control, **kwargs):
        self.meter.begin(memory=state.global_step in self.memory_steps)

    def on_step_end(self, args, state, control, **kwargs):
        self.meter.end(rest="optimizer")


class FixedBatch(torch.utils.data.Dataset):
    """The same (B, L) blocks as one epoch: every optimizer step sees exactly this batch."""

    def __init__(self, blocks: torch.Tensor):
        self.blocks = blocks.cpu()

    def __len__(self):
        return len(self.blocks)

    def __getitem__(self, i):
        ids = self.blocks[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def study_arguments(out_dir: str, *, batch: int, steps: int, lr: float, device: torch.device) -> TrainingArguments:
    """``scripts/train.py``'s TrainingArguments, with max_steps for a benchmark, no W&B, no tqdm."""
    return TrainingArguments(
        output_dir=out_dir,
        max_steps=steps,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        learning_rate=lr,
        weight_decay=0.01,
        adam_epsilon=1e-8,
        logging_strategy="steps",
        logging_steps=10,
        save_strategy="no",
        bf16=device.type == "cuda",  # the study: fp16=True; see the module docstring
        use_cpu=device.type == "cpu",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
