"""Fused LM head + KD loss (method §3): the loss from hidden states, no (B, L, V) logits.

What it computes
----------------
Student hidden states ``h_s`` (B, L, d_s) and LM-head weight ``W_s`` (V, d_s)
(bias ``b_s`` (V,) optional), teacher ``h_t`` (B, L, d_t), ``W_t`` (V, d_t), labels
(B, L) with -100 where ignored, all UNSHIFTED. With ``s = h_s W_s^T + b_s`` and
``t = h_t W_t^T + b_t`` the loss is exactly ``distill.loss.kd.kd_loss(s, t, labels, ...)``:
the shift (position i predicts token i + 1), calibration smoothing, uncertainty
weighting, both ``weight_norm`` choices, the hard CE over valid positions and
``alpha * hard + (1 - alpha) * tau**2 * soft``; see ``distill/loss/kd.py`` for the math.
The per-chunk math is ``distill.loss.kd.row_terms`` and ``chunk_gradient`` themselves, not
a copy.

Gradient
--------
For a chunk of ``rows`` positions with hidden states ``h`` (rows, d_s), let
``g = d loss / d s`` (rows, V), the analytic gradient of the loss:

    g = alpha * (softmax(s) - onehot(y)) / sum(m)                      the hard part
      + (1 - alpha) * tau * w / norm * (softmax(s / tau) - p_bar)      the soft part

on valid rows and 0 on masked rows. As ``s = h W^T + b``:

    d loss / d h  = g @ W            (rows, V) @ (V, d_s) -> (rows, d_s)
    d loss / d W += g^T @ h          (V, rows) @ (rows, d_s) -> (V, d_s), summed over chunks
    d loss / d b += sum_rows g       (V,)

The last position (it predicts nothing) and masked positions have g = 0, so their
hidden-state gradient is exactly 0. Like Liger-Kernel's fused linear distillation,
``_FusedKD`` computes these during its single forward walk; backward only scales
them by the incoming gradient (and casts them). The teacher never gets a gradient.

One teacher-head pass: uncertainty weights
------------------------------------------
Uncertainty weighting needs each position's teacher entropy H at tau = 1, and a
position's weight ``w = 0.5 + 0.5 * (H - min H) / (max H - min H)`` needs the min and max
over its whole SEQUENCE; ``weight_norm="weight"`` also divides by ``norm = sum(m * w)``
over the whole BATCH. When the caller passes the entropies (a teacher cache stores
them) every w and norm is known before the walk. Otherwise (``_entropy_plan``):

* chunks of whole sequences (``chunk_rows >= L - 1``: ``default_chunk_rows`` at
  ProtGPT2's L = 512 on every device) compute H from the teacher logits the walk makes
  anyway (``row_terms(entropy=True)``) and know their rows' w within the chunk. With
  ``weight_norm="mask"`` (norm = number of valid positions) the gradient is made as
  above, at no extra matmul. With ``"weight"`` the gradient is linear in ``1 / norm``:
  the walk sends the hard part through the gradient matmuls at once and the soft part,
  weighted by w, into a second set of accumulators that ``_fused_pass`` divides by
  norm after the walk; that costs the soft part's own ``g @ W`` and ``g^T h`` (4 V d_s
  FLOPs per row), which is done when it is cheaper than a pass of the teacher's head
  (2 V d_t per row plus its softmax), i.e. when ``2 d_s <= d_t``;
* otherwise (a sequence cut over several chunks, by an explicit small ``chunk_rows``,
  or the weight-norm case above with a wide student) a teacher-only chunked pass
  (``teacher_entropy_from_hidden``) makes the entropies before the walk. Keeping a cut
  sequence's soft part apart until its min and max are known would cost 6 V d_s FLOPs
  per row and round the gradient differently from autograd, so it is not done.
* Without gradients (evaluation) the walk keeps each row's unweighted KL and weights
  it after the walk: one teacher-head pass in every case.

Chunks, blocks and memory
-------------------------
A chunk is ``chunk_rows`` positions whose student and teacher logits (rows, V) are made
from the hidden states by two large matmuls; its elementwise math (softmaxes, KL, CE,
the gradient) then runs ``block_rows`` rows at a time, each block's gradient written
over its own rows of the student logits (and, in the weight-norm split, the soft part
over the teacher's); then the gradient matmuls take the whole chunk. Everything is
freed before the next chunk; nothing of shape (B, L, V) is allocated. Peak memory above
the inputs is the fp32 gradients (B, L, d_s) + (V, d_s) (+ V), the chunk's two logits
and about six block-sized fp32 temporaries (the soft targets, the student's two
log-softmaxes, the gradient parts, one transient; under autocast also a low-precision
copy of the chunk's gradient and a low-precision (V, d_s) product); with the weight-norm
split (above) a second set of gradients (B, L, d_s) + (V, d_s).

``chunk_rows=None`` picks the chunk per device (``default_chunk_rows``): on CUDA from a
memory budget (``CUDA_CHUNK_BUDGET`` of the device's memory for ``CHUNK_TEMPORARIES``
chunk-sized tensors, at least ``CUDA_MIN_CHUNK_ROWS`` rows: few large kernels instead of
thousands of small launches), with blocks the size of the chunk; on the CPU from the
measured ``CPU_CHUNK_ELEMENTS`` and ``CPU_BLOCK_ELEMENTS`` (docs/benchmarks.md, "fused
loss chunk size"): large matmuls, and block temporaries under glibc's 32 MiB mmap
threshold that the heap reuses, where chunk-sized ones would be mapped and page-faulted
afresh by each op.

Precision contract
------------------
* Matmuls (the chunk logits ``h W^T + b``, ``g @ W``, ``g^T @ h``) run in the ambient
  ``torch.autocast`` dtype when autocast is enabled for the inputs' device (as
  ``F.linear`` would under autocast; on CUDA training runs under bf16/fp16), else in
  the inputs' dtype. fp64 inputs always run in fp64 (autocast leaves fp64 alone).
* Everything else (softmaxes, logs, the KL and CE, every reduction) runs in fp32, or
  fp64 when any input is fp64 (for gradcheck), with autocast disabled: CPU autocast
  would otherwise run the row dot products of ``row_terms`` (a matmul) in bf16.
* ``g`` (or, in the weight-norm split, each of its two parts) is computed in fp32 and
  rounded to the matmul dtype before the gradient matmuls, as plain autograd does for
  logits made under autocast, but first divided by a power of two >= max |g| of its
  chunk (exact; undone in fp32 after the matmuls): its entries, ~probability / n_valid,
  would otherwise mostly flush to 0 in fp16.
* The gradients are kept in fp32 (fp64): ``d loss / d W`` and ``d loss / d b``
  accumulated across chunks. backward scales them by the upstream gradient (e.g. a
  GradScaler's scale) and only then casts them to the dtypes of ``student_hidden``,
  ``student_head`` and the bias. The loss and its terms are fp32 (fp64).
"""

from __future__ import annotations

import dataclasses
from functools import reduce
from typing import NamedTuple

import torch
import torch.nn.functional as F

from kdsweep.distill.loss.kd import (
    IGNORE_INDEX,
    KDOptions,
    KDTerms,
    chunk_gradient,
    chunks,
    combine,
    compute_dtype,
    count_valid,
    logits_entropy,
    loss_options,
    row_terms,
    soft_normalization,
    uncertainty_weights,
    validate_labels,
)

# On the CPU, elements (rows * V) per chunk and per block of its elementwise math when
# chunk_rows / block_rows are not given, measured (docs/benchmarks.md, "fused loss chunk
# size"; benchmarks/fused_chunks.py).
CPU_CHUNK_ELEMENTS = 2**25
CPU_BLOCK_ELEMENTS = 2**22
# On CUDA: the chunk's fp32 temporaries may take this share of the device's memory ...
CUDA_CHUNK_BUDGET = 1 / 32
# ... counted as this many (rows, V) fp32 tensors (the module docstring's peak, blocks = chunk) ...
CHUNK_TEMPORARIES = 8
# ... and a chunk has at least this many rows (Liger-Kernel's JSD uses 1024).
CUDA_MIN_CHUNK_ROWS = 1024
CALLER = "fused_kd_loss"


def default_block_rows(vocab: int, device: torch.device, chunk_rows: int) -> int:
    """Positions of a chunk's elementwise math at a time when ``block_rows`` is None: the
    whole chunk on CUDA (each block is a round of kernel launches), the measured
    ``CPU_BLOCK_ELEMENTS // V`` elsewhere (temporaries glibc reuses instead of mapping
    and page-faulting them afresh, and that stay nearer the caches)."""
    if device.type == "cuda":
        return chunk_rows
    return max(1, min(chunk_rows, CPU_BLOCK_ELEMENTS // vocab))


def default_chunk_rows(vocab: int, device: torch.device, length: int) -> int:
    """Positions per chunk when ``chunk_rows`` is None, for sequences of ``length`` scored
    positions (L - 1): on CUDA ``CHUNK_TEMPORARIES`` fp32 (rows, V) tensors within
    ``CUDA_CHUNK_BUDGET`` of the device's memory and at least ``CUDA_MIN_CHUNK_ROWS``;
    elsewhere the measured ``CPU_CHUNK_ELEMENTS // V`` and at least one whole sequence (the
    CPU's chunk holds only its two logits at that size, its math runs in blocks), so that
    uncertainty weights come from the walk's own teacher logits."""
    if device.type == "cuda":
        budget = torch.cuda.get_device_properties(device).total_memory * CUDA_CHUNK_BUDGET
        return max(CUDA_MIN_CHUNK_ROWS, int(budget) // (CHUNK_TEMPORARIES * 4 * vocab))
    return max(CPU_CHUNK_ELEMENTS // vocab, length)


def fused_kd_loss(*args, **kwargs) -> torch.Tensor:
    """The method §3 loss from hidden states and LM heads: a 0-dim tensor.

    ``fused_kd_loss_terms(...).loss``; see it for the arguments.
    """
    return fused_kd_loss_terms(*args, **kwargs).loss


def fused_kd_loss_terms(
    student_hidden: torch.Tensor,
    student_head: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_head: torch.Tensor,
    labels: torch.Tensor,
    options: KDOptions | None = None,
    *,
    teacher_entropy: torch.Tensor | None = None,
    student_head_bias: torch.Tensor | None = None,
    teacher_head_bias: torch.Tensor | None = None,
    **changes,
) -> KDTerms:
    """The method §3 loss and its parts, equal to ``kd_loss_terms`` on the materialized logits.

    Args:
        student_hidden: (B, L, d_s) the student's last hidden states (after its final
            layer norm: what its LM head consumes), unshifted. Receives a gradient.
        student_head: (V, d_s) the student's LM-head weight; pass the model's own
            Parameter (GPT-2: ``lm_head.weight``, tied to ``transformer.wte.weight``)
            and autograd adds the head gradient to the embedding's. Receives a gradient.
        teacher_hidden: (B, L, d_t) the teacher's last hidden states; no gradient.
        teacher_head: (V, d_t) the teacher's LM-head weight; no gradient.
        labels: (B, L) integer token ids, -100 where ignored.
        options, changes: the loss's ``KDOptions``, as in ``kd_loss_terms``. Its
            ``chunk_rows`` (positions per chunk: the logits' matmuls) defaults to
            ``default_chunk_rows(V, device, L - 1)``, its ``block_rows`` (positions at a
            time of a chunk's elementwise math) to ``default_block_rows(V, device, chunk_rows)``.
        teacher_entropy: (B, L - 1) entropy of softmax(t) at tau = 1 per SHIFTED
            position (``teacher_entropy_from_hidden``), e.g. precomputed by a teacher
            cache; without it the walk computes it from its own teacher logits.
            Ignored when ``options.uncertainty`` is False.
        student_head_bias, teacher_head_bias: (V,) LM-head biases, or None (GPT-2).

    See the module docstring for the precision contract.

    Raises:
        ValueError: on bad shapes or arguments, or if no position has a label.
    """
    options = loss_options(CALLER, options, changes)
    _validate(student_hidden, student_head, student_head_bias, teacher_hidden, teacher_head,
              teacher_head_bias, labels, teacher_entropy)
    vocab = student_head.shape[0]
    validate_labels(labels, vocab, caller=CALLER)
    chunk_rows = options.chunk_rows or default_chunk_rows(vocab, student_hidden.device, labels.shape[1] - 1)
    options = dataclasses.replace(options, chunk_rows=chunk_rows, block_rows=options.block_rows
                                  or default_block_rows(vocab, student_hidden.device, chunk_rows))
    weight_norm = options.weight_norm
    targets = labels[:, 1:]  # (B, L'): position i predicts token i + 1
    mask = targets != IGNORE_INDEX  # (B, L')
    n_valid = count_valid(mask, labels, caller=CALLER)
    dtype = compute_dtype(student_hidden, student_head, teacher_hidden, teacher_head)
    teacher_hidden, teacher_head = teacher_hidden.detach(), teacher_head.detach()
    if teacher_head_bias is not None:
        teacher_head_bias = teacher_head_bias.detach()

    student_inputs = (student_hidden, student_head, student_head_bias)
    needs_grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in student_inputs)
    entropy_in_walk = False
    if options.uncertainty and teacher_entropy is None:
        entropy_in_walk = _entropy_plan(chunk_rows >= labels.shape[1] - 1, weight_norm, needs_grad,
                                        student_head.shape[1], teacher_head.shape[1])
        if not entropy_in_walk:
            teacher_entropy = teacher_entropy_from_hidden(
                teacher_hidden, teacher_head, teacher_head_bias, chunk_rows=chunk_rows)
    weights, soft_norm = None, float(n_valid)
    if options.uncertainty and not entropy_in_walk:
        weights = uncertainty_weights(teacher_entropy.to(dtype), mask)  # (B, L')
        _, soft_norm = soft_normalization(weights, n_valid, weight_norm, dtype=dtype,
                                          device=student_hidden.device)
    elif entropy_in_walk and weight_norm == "weight":
        soft_norm = None  # sum(m * w): known once the walk has made every entropy

    # Decided here, under the caller's autocast state; the walk itself runs with
    # autocast off and casts explicitly.
    student_mm = matmul_dtype(student_hidden, student_head, student_head_bias)
    teacher_mm = matmul_dtype(teacher_hidden, teacher_head, teacher_head_bias)
    walk = _Walk(teacher_hidden, teacher_head, teacher_head_bias, targets, mask, weights,
                 entropy_in_walk, n_valid, n_valid == mask.numel(), soft_norm, options,
                 student_mm, teacher_mm, dtype)
    if needs_grad:
        loss, hard, soft, mean_weight = _FusedKD.apply(*student_inputs, walk)
    else:  # evaluation: no gradient buffers
        with _autocast_off(student_hidden):
            hard, soft, mean_weight = _fused_pass(*student_inputs, walk, grads=None)
        loss = combine(hard, soft, options)
    return KDTerms(loss, hard.detach(), soft.detach(), mean_weight.detach())


def _entropy_plan(whole: bool, weight_norm: str, needs_grad: bool, student_width: int,
                  teacher_width: int) -> bool:
    """Whether the walk makes the teacher entropies itself (True) or a teacher-only pass
    makes them first (False); module docstring, "One teacher-head pass". ``whole``: the
    chunks hold whole sequences."""
    if not needs_grad:
        return True  # the soft sum is weighted after the walk
    if not whole:
        return False
    return weight_norm == "mask" or 2 * student_width <= teacher_width


def teacher_entropy_from_hidden(
    teacher_hidden: torch.Tensor,
    teacher_head: torch.Tensor,
    teacher_head_bias: torch.Tensor | None = None,
    *,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Entropy of softmax(t) at tau = 1 for ``t = teacher_hidden @ teacher_head.T (+ bias)``.

    (B, L, d_t) UNSHIFTED hidden states, (V, d_t) head -> (B, L - 1) entropies of the
    shifted positions 0 .. L-2 (the last position predicts nothing), fp32 (fp64 if an
    input is fp64): what ``fused_kd_loss_terms(teacher_entropy=...)`` takes, and what a
    teacher cache stores. Walked in chunks of ``chunk_rows`` positions (default
    ``default_chunk_rows``) without autograd; the matmul follows the ambient autocast
    like the loss's.
    """
    if teacher_hidden.dim() != 3 or teacher_head.dim() != 2 \
            or teacher_hidden.shape[-1] != teacher_head.shape[-1]:
        raise ValueError(f"teacher_entropy_from_hidden: hidden (B, L, d) and head (V, d) do "
                         f"not match: hidden shape {tuple(teacher_hidden.shape)}, head shape "
                         f"{tuple(teacher_head.shape)}")
    if chunk_rows is None:
        chunk_rows = default_chunk_rows(teacher_head.shape[0], teacher_hidden.device, teacher_hidden.shape[1] - 1)
    dtype = compute_dtype(teacher_hidden, teacher_head)
    mm_dtype = matmul_dtype(teacher_hidden, teacher_head, teacher_head_bias)
    shifted = teacher_hidden[:, :-1]  # (B, L', d_t), a view
    batch, length, _ = shifted.shape
    entropy = torch.empty(batch, length, dtype=dtype, device=shifted.device)
    with torch.no_grad(), _autocast_off(teacher_hidden):
        head = _Head.cast(teacher_head, teacher_head_bias, mm_dtype)
        for rows in chunks(batch, length, chunk_rows):
            block = shifted[rows]  # (b, l, d_t); flattened as the loss's walk does (the same logits)
            entropy[rows] = logits_entropy(head.logits(block.reshape(-1, block.shape[-1]), dtype)).view(
                block.shape[:2])
    return entropy


def matmul_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """The dtype the chunk matmuls run in (see the precision contract)."""
    present = [x for x in tensors if x is not None]
    dtype = reduce(torch.promote_types, (x.dtype for x in present))
    device_type = present[0].device.type
    if dtype != torch.float64 and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return dtype


class _Head(NamedTuple):
    """An LM head cast once to its matmul dtype: weight (V, d), bias (V,) or None."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    @classmethod
    def cast(cls, weight, bias, dtype) -> _Head:
        # .to is a no-op when the dtype already matches: no copy of the (V, d) weight.
        return cls(weight.to(dtype), None if bias is None else bias.to(dtype))

    def logits(self, hidden: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(..., d) hidden states -> (..., V) logits in ``dtype``; the matmul-dtype
        product dies within the statement when a cast is needed."""
        return F.linear(hidden.to(self.weight.dtype), self.weight, self.bias).to(dtype)


class _Walk(NamedTuple):
    """Everything a walk over the chunks needs besides the student's inputs."""

    teacher_hidden: torch.Tensor  # (B, L, d_t) unshifted, detached
    teacher_head: torch.Tensor  # (V, d_t), detached
    teacher_bias: torch.Tensor | None  # (V,), detached
    targets: torch.Tensor  # (B, L') shifted labels
    mask: torch.Tensor  # (B, L') bool, targets != -100
    weights: torch.Tensor | None  # (B, L') uncertainty weights known before the walk, or None
    entropy_in_walk: bool  # uncertainty weights from entropies the walk computes
    n_valid: int  # mask.sum()
    all_valid: bool  # n_valid == B * L': no row to mask
    soft_norm: torch.Tensor | float | None  # denominator of the soft term; None: after the walk
    options: KDOptions  # chunk_rows and block_rows (rows of the elementwise math at a time) set
    student_mm: torch.dtype  # matmul dtypes (precision contract)
    teacher_mm: torch.dtype
    dtype: torch.dtype  # compute dtype: fp32, or fp64


class _Grads(NamedTuple):
    """The gradients the forward walk fills, or None where no gradient is needed.

    All in the compute dtype (fp32, or fp64), cast to the inputs' dtypes only in
    backward, after the scaling by the upstream gradient (an fp16 GradScaler's
    scale must act before an fp16 cast, or small gradients flush to 0):
    ``hidden`` (B, L, d_s), 0 at the last position; ``weight`` (V, d_s) and
    ``bias`` (V,), accumulated over chunks.
    """

    hidden: torch.Tensor | None
    weight: torch.Tensor | None
    bias: torch.Tensor | None

    def add_chunk(self, rows, g: torch.Tensor, h: torch.Tensor, weight: torch.Tensor) -> None:
        """Add one chunk, positions ``rows`` (a (b, l) block of the shifted positions) flattened:
        ``g`` (b * l, V) dloss/dlogits in the compute dtype (overwritten), ``h`` (b * l, d_s)
        hidden states and ``weight`` (V, d_s) in the matmul dtype."""
        if self.bias is not None:
            self.bias.add_(g.sum(0))
        scale = None
        if g.dtype != h.dtype:
            # Low-precision matmuls. Entries of g are ~probability / n_valid, mostly
            # 1e-9 .. 1e-6: below fp16's smallest subnormal (6e-8) they would flush to 0.
            # Divide by the power of two >= max |g| (exact), multiply back in fp32 after
            # the matmuls. (bf16 has fp32's exponent range; there it changes nothing.)
            _, exponent = torch.frexp(g.abs().amax())
            scale = torch.ldexp(g.new_ones(()), exponent)
            g = g.div_(scale).to(h.dtype)  # (b * l, V)
        if self.hidden is not None:
            grad = g @ weight  # (b * l, d_s)
            target = self.hidden[:, :-1][rows]  # (b, l, d_s), a view
            target.copy_((grad if scale is None else grad.to(scale.dtype) * scale).view(target.shape))
        if self.weight is not None:
            if scale is None:
                self.weight.addmm_(g.T, h)  # no (V, d_s) product tensor
            else:  # a low-precision (V, d_s) product, accumulated in fp32
                self.weight.addcmul_(g.T @ h, scale)


class _FusedKD(torch.autograd.Function):
    """Loss whose gradients wrt the student's hidden states, head weight and bias are
    computed during forward. forward returns (loss, hard, soft, mean_weight); only
    ``loss`` is differentiable. The stored gradients are for an upstream gradient of 1."""

    @staticmethod
    def forward(ctx, student_hidden, student_head, student_bias, walk: _Walk):
        inputs = (student_hidden, student_head, student_bias)
        with _autocast_off(student_hidden):
            grads = _Grads(*(
                torch.zeros(x.shape, dtype=walk.dtype, device=x.device) if needed else None
                for x, needed in zip(inputs, ctx.needs_input_grad)))
            hard, soft, mean_weight = _fused_pass(*inputs, walk, grads=grads)
        ctx.save_for_backward(*grads)
        ctx.input_dtypes = [None if x is None else x.dtype for x in inputs]
        ctx.mark_non_differentiable(hard, soft, mean_weight)
        return combine(hard, soft, walk.options), hard, soft, mean_weight

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_hard, _grad_soft, _grad_mean_weight):
        grads = ctx.saved_tensors
        # Plain loss.backward() passes exactly 1: hand back the stored gradients
        # themselves when no cast is needed either (see distill.loss.kd._ChunkedKD.backward
        # for why that is safe).
        if not bool(grad_loss == 1):
            grads = [None if grad is None else grad * grad_loss for grad in grads]
        return (*(None if grad is None else grad.to(dtype)
                  for grad, dtype in zip(grads, ctx.input_dtypes)), None)


class _Rows(NamedTuple):
    """Per-position results of the walk, (B, L') in the compute dtype."""

    ce: torch.Tensor  # cross-entropy, 0 where masked
    kl: torch.Tensor  # unweighted KL, 0 where masked
    entropy: torch.Tensor | None  # teacher entropy at tau = 1 (entropy_in_walk only)


def _fused_pass(
    student_hidden: torch.Tensor,  # (B, L, d_s) unshifted
    student_head: torch.Tensor,  # (V, d_s)
    student_bias: torch.Tensor | None,  # (V,)
    walk: _Walk,
    *,
    grads: _Grads | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One walk over the position chunks: returns (hard, soft, mean weight), fills ``grads``
    if given."""
    # Heads cast once for the whole walk, not per chunk: (V, d) copies under autocast.
    student = _Head.cast(student_head, student_bias, walk.student_mm)
    teacher = _Head.cast(walk.teacher_head, walk.teacher_bias, walk.teacher_mm)
    shifted_student = student_hidden[:, :-1]  # (B, L', d_s), a view
    shifted_teacher = walk.teacher_hidden[:, :-1]  # (B, L', d_t), a view
    batch, length, _ = shifted_student.shape
    kw = dict(dtype=walk.dtype, device=student_hidden.device)
    out = _Rows(torch.zeros(batch, length, **kw), torch.zeros(batch, length, **kw),
                torch.zeros(batch, length, **kw) if walk.entropy_in_walk else None)
    # The soft part's gradients, w-weighted, while norm = sum(m * w) is unknown (weight_norm
    # "weight", entropies from the walk): divided by norm and added to grads after the walk.
    soft_grads = None
    if grads is not None and walk.soft_norm is None:
        soft_grads = _Grads(*(None if x is None else torch.zeros_like(x) for x in grads))
    for rows in chunks(batch, length, walk.options.chunk_rows):
        _chunk(shifted_student[rows].to(walk.student_mm), shifted_teacher[rows], student, teacher,
               walk, rows, out, grads, soft_grads)
    weights = uncertainty_weights(out.entropy, walk.mask) if walk.entropy_in_walk else walk.weights
    weight_sum, soft_norm = soft_normalization(weights, walk.n_valid, walk.options.weight_norm, **kw)
    if soft_grads is not None:
        for total, soft in zip(grads, soft_grads):
            if total is not None:
                total.add_(soft.div_(soft_norm))
    soft_sum = (out.kl if weights is None else out.kl * weights).sum()
    return out.ce.sum() / walk.n_valid, soft_sum / soft_norm, weight_sum / walk.n_valid


def _chunk(
    h: torch.Tensor,  # (b, l, d_s) student hidden states, matmul dtype
    th: torch.Tensor,  # (b, l, d_t) teacher hidden states
    student: _Head,
    teacher: _Head,
    walk: _Walk,
    rows: tuple[slice, slice],
    out: _Rows,
    grads: _Grads | None,
    soft_grads: _Grads | None,
) -> None:
    """One chunk, its positions flattened to n = b * l rows: both logits (n, V) from the
    hidden states (large matmuls), then the elementwise math in blocks of
    ``walk.options.block_rows`` rows (small temporaries), each block's gradient written over its
    own rows of the logits, then the gradient matmuls over the whole chunk. A function of
    its own so that the chunk's (n, V) tensors are freed on return."""
    h = h.reshape(-1, h.shape[-1])  # (n, d_s)
    s = student.logits(h, walk.dtype)  # (n, V)
    t = teacher.logits(th.reshape(-1, th.shape[-1]), walk.dtype)  # (n, V)
    n = s.shape[0]
    valid, targets = walk.mask[rows].reshape(n), walk.targets[rows].reshape(n)
    ce, kl = out.ce[rows].view(n), out.kl[rows].view(n)  # views: a chunk's rows are contiguous
    block_rows = walk.options.block_rows
    blocks = [slice(i, i + block_rows) for i in range(0, n, block_rows)]
    weights = None if walk.weights is None else walk.weights[rows].reshape(n)
    if walk.entropy_in_walk:
        # From the teacher logits the chunk holds, before any row's gradient: a row's weight
        # needs its whole sequence's entropies, and with gradients the chunk holds whole sequences.
        entropy = out.entropy[rows].view(n)
        for blk in blocks:
            entropy[blk] = logits_entropy(t[blk])
        if grads is not None:
            weights = uncertainty_weights(out.entropy[rows], walk.mask[rows]).reshape(n)
    for blk in blocks:
        terms = row_terms(s[blk], t[blk], targets[blk], valid[blk], walk.options, entropy=False,
                          grads=grads is not None)
        ce[blk], kl[blk] = terms.ce, terms.kl
        if grads is None:
            continue
        w = None if weights is None else weights[blk]
        if soft_grads is None:  # every coefficient known in the chunk: written over s's rows
            chunk_gradient(terms, valid[blk], w, walk.n_valid, walk.soft_norm, walk.options,
                           out=s[blk], all_valid=walk.all_valid)
        else:  # norm unknown: the hard part in s, the soft part (times w, not yet / norm) in t
            invalid = ~valid[blk].unsqueeze(-1)
            alpha = walk.options.alpha
            torch.mul(terms.hard, alpha / walk.n_valid, out=s[blk]).masked_fill_(invalid, 0.0)
            torch.mul(terms.soft, ((1.0 - alpha) * walk.options.temperature * w).unsqueeze(-1),
                      out=t[blk]).masked_fill_(invalid, 0.0)
        del terms
    if grads is not None:
        grads.add_chunk(rows, s, h, student.weight)
        if soft_grads is not None:
            soft_grads.add_chunk(rows, t, h, student.weight)


def _autocast_off(like: torch.Tensor) -> torch.autocast:
    return torch.autocast(like.device.type, enabled=False)


def _validate(student_hidden, student_head, student_bias, teacher_hidden, teacher_head,
              teacher_bias, labels, teacher_entropy) -> None:
    shapes = (f"student_hidden {tuple(student_hidden.shape)}, student_head "
              f"{tuple(student_head.shape)}, teacher_hidden {tuple(teacher_hidden.shape)}, "
              f"teacher_head {tuple(teacher_head.shape)}")
    if student_hidden.dim() != 3 or teacher_hidden.dim() != 3:
        raise ValueError(f"{CALLER}: hidden states must be (B, L, d), got {shapes}")
    if student_head.dim() != 2 or teacher_head.dim() != 2:
        raise ValueError(f"{CALLER}: head weights must be (V, d), got {shapes}")
    if teacher_hidden.shape[:2] != student_hidden.shape[:2]:
        raise ValueError(f"{CALLER}: student and teacher hidden states differ in (B, L): "
                         f"{shapes}")
    for who, hidden, head in (("student", student_hidden, student_head),
                              ("teacher", teacher_hidden, teacher_head)):
        if hidden.shape[-1] != head.shape[-1]:
            raise ValueError(f"{CALLER}: {who} width mismatch: hidden d={hidden.shape[-1]}, "
                             f"head d={head.shape[-1]} ({shapes})")
    if student_head.shape[0] != teacher_head.shape[0]:
        raise ValueError(f"{CALLER}: vocabulary mismatch: student V={student_head.shape[0]}, "
                         f"teacher V={teacher_head.shape[0]}")
    vocab = student_head.shape[0]
    for who, bias in (("student_head_bias", student_bias), ("teacher_head_bias", teacher_bias)):
        if bias is not None and tuple(bias.shape) != (vocab,):
            raise ValueError(f"{CALLER}: {who} must be (V,) = ({vocab},), "
                             f"got {tuple(bias.shape)}")
    if tuple(labels.shape) != tuple(student_hidden.shape[:2]):
        raise ValueError(f"{CALLER}: labels shape {tuple(labels.shape)} does not match the "
                         f"hidden states' (B, L) = {tuple(student_hidden.shape[:2])}")
    batch, length = labels.shape
    if teacher_entropy is not None and tuple(teacher_entropy.shape) != (batch, length - 1):
        raise ValueError(f"{CALLER}: teacher_entropy must be (B, L - 1) = "
                         f"({batch}, {length - 1}) (shifted positions), "
                         f"got {tuple(teacher_entropy.shape)}")
    tensors = [student_hidden, student_head, teacher_hidden, teacher_head,
               *(x for x in (student_bias, teacher_bias) if x is not None)]
    if not all(x.is_floating_point() for x in tensors):
        raise ValueError(f"{CALLER}: hidden states and heads must be floating point, got "
                         f"{[x.dtype for x in tensors]}")
