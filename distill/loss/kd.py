"""Knowledge-distillation loss (method §3), computed in chunks over positions.

Math
----
Inputs are UNSHIFTED: student logits ``s`` and teacher logits ``t`` of shape
(B, L, V), labels ``y`` of shape (B, L) with -100 where ignored. Position ``i``
predicts token ``i + 1``, so the loss uses ``s[:, :-1]``, ``t[:, :-1]`` against
``y[:, 1:]`` (L' = L - 1 positions per sequence); ``m = y[:, 1:] != -100``.

1. ``p = softmax(t / tau)``.
2. Calibration smoothing (``smoothing = lam`` not None): ``eps = lam * (1 - max_v p)``
   per position and ``p_bar = (1 - eps) * p + eps / V``. The uniform part is the
   scalar ``eps / V``; no (B, L, V) uniform tensor is ever built.
3. ``kl = sum_v p_bar * (log p_bar - log_softmax(s / tau))`` per position.
4. Uncertainty weighting (``uncertainty=True``): ``H = entropy(softmax(t))`` at
   tau = 1 and ``w = 0.5 + 0.5 * (H - min H) / (max H - min H)`` with min/max per
   sequence over valid positions (``w = 0.5`` when max - min < 1e-8); ``kl <- w * kl``.
   Without it, ``w = 1``.
5. ``soft = sum(m * w * kl) / norm`` where ``norm`` depends on ``weight_norm``:

   * ``"mask"``: ``norm = sum(m)``, the study's normalization. The soft term is
     then the weighted KL times the mean weight (in [0.5, 1]), i.e. uncertainty
     weighting also shrinks the whole soft term relative to the hard term.
   * ``"weight"``: ``norm = sum(m * w)``, a true weighted mean: weighting only
     redistributes the soft term across positions, its scale stays that of a KL.

   With uncertainty off both are ``sum(m * kl) / sum(m)``.
6. ``hard = cross_entropy(s, y)`` averaged over valid positions only.
7. ``loss = alpha * hard + (1 - alpha) * tau**2 * soft``.

Chunking and memory
-------------------
With V = 50,257 one (8, 511, V) fp32 tensor is 0.8 GB, so nothing of shape
(B, L, V) is built except one gradient buffer. The positions are walked in chunks
of at most ``chunk_rows`` rows (default ~16M elements per chunk), each a view
``x[b0:b1, l0:l1]`` of the inputs (never a copy of the shifted logits), upcast to
fp32 for the math (fp64 inputs stay fp64, for gradcheck).

Plain autograd would keep every chunk's softmax alive until backward. Instead
``_ChunkedKD`` (a ``torch.autograd.Function``) computes, in its single forward
walk, the per-position terms AND the analytic gradient wrt the student logits:

    d loss / d s = (1 - alpha) * tau * w * (softmax(s / tau) - p_bar) / norm
                 + alpha * (softmax(s) - onehot(y)) / sum(m)

on valid positions (0 elsewhere, including the last position, which predicts
nothing). It is stored in the student logits' dtype in one buffer of the
logits' shape (B, L, V); backward only scales it by the incoming gradient
(and returns the buffer itself when that is exactly 1, as for a plain
``loss.backward()``; a scaled loss, e.g. under gradient accumulation or a
GradScaler, briefly needs a second logits-sized tensor for the product).
Peak memory above the inputs is thus that buffer plus ~3 chunk-sized fp32
temporaries (each chunk's tensors are freed before the next chunk starts).
The uncertainty weights depend on the teacher alone, so a first, teacher-only
chunked pass computes the entropies (B, L') and the weights before the main walk.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
WEIGHT_NORMS = ("mask", "weight")
# Elements (rows * V) per chunk when chunk_rows is not given: 64 MB per fp32 temporary.
CHUNK_ELEMENTS = 2**24
# Below this spread of entropies in a sequence, all its weights are 0.5 (method §3.4).
MIN_ENTROPY_RANGE = 1e-8


@dataclass(frozen=True)
class KDOptions:
    """The options of the method §3 loss, checked once, when made: plain values, so the loss
    stays a pure function of its tensors and this.

    ``temperature`` tau > 0; ``alpha`` the weight of the hard (CE) loss, in [0, 1];
    ``uncertainty``: weight each position's KL by the teacher's entropy; ``smoothing``: the
    calibration smoothing factor lambda in [0, 1], or None (off); ``weight_norm``: "mask"
    (divide the soft sum by the number of valid positions, the study's choice) or "weight"
    (by the sum of weights). ``chunk_rows``: positions per chunk, None for the
    implementation's default (``kd_loss``: ``max(1, 2**24 // V)``; ``fused_kd_loss``:
    ``default_chunk_rows``); ``block_rows``: positions at a time of a chunk's elementwise
    math in ``fused_kd_loss`` (None: ``default_block_rows``; ``kd_loss`` ignores it).
    """

    temperature: float
    alpha: float
    uncertainty: bool
    smoothing: float | None
    weight_norm: str = "mask"
    chunk_rows: int | None = None
    block_rows: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.smoothing is not None and not 0.0 <= self.smoothing <= 1.0:
            raise ValueError(f"smoothing must be None or in [0, 1], got {self.smoothing}")
        if self.weight_norm not in WEIGHT_NORMS:
            raise ValueError(f"weight_norm must be one of {WEIGHT_NORMS}, got {self.weight_norm!r}")
        for name in ("chunk_rows", "block_rows"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")


def loss_options(caller: str, options: KDOptions | None, changes: dict) -> KDOptions:
    """What a loss entry point was called with: ``options`` with the keyword ``changes``
    (fields of KDOptions) applied, or KDOptions(**changes) alone. A bad value's message
    starts with ``caller``."""
    try:
        if options is None:
            return KDOptions(**changes)
        return dataclasses.replace(options, **changes) if changes else options
    except ValueError as e:
        raise ValueError(f"{caller}: {e}") from None


class KDTerms(NamedTuple):
    """One batch's loss and its parts (0-dim tensors).

    ``loss`` is differentiable wrt the student logits; ``hard`` (mean CE), ``soft``
    (normalized, weighted KL, before the ``(1 - alpha) * tau**2`` factor) and
    ``mean_weight`` (mean uncertainty weight over valid positions, 1 when off)
    are detached, for logging.
    """

    loss: torch.Tensor
    hard: torch.Tensor
    soft: torch.Tensor
    mean_weight: torch.Tensor


def kd_loss(*args, **kwargs) -> torch.Tensor:
    """The method §3 distillation loss: a 0-dim tensor, differentiable wrt ``student_logits``.

    ``kd_loss_terms(...).loss``; see it for the arguments.
    """
    return kd_loss_terms(*args, **kwargs).loss


def kd_loss_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    options: KDOptions | None = None,
    **changes,
) -> KDTerms:
    """The method §3 loss and its parts.

    Args:
        student_logits: (B, L, V), unshifted; any float dtype (fp16/bf16 are
            upcast per chunk). The gradient comes back in this dtype.
        teacher_logits: (B, L, V), unshifted; never receives a gradient.
        labels: (B, L) integer token ids, -100 where ignored.
        options: the loss's ``KDOptions``; or None, and its fields as keywords
            (``temperature=2.0, alpha=0.5, uncertainty=False, smoothing=None``).
        changes: KDOptions fields that replace those of ``options``.

    The result is fp32 (fp64 when the logits are fp64).

    Raises:
        ValueError: on bad shapes or arguments, or if no position has a label.
    """
    options = loss_options("kd_loss", options, changes)
    _validate(student_logits, teacher_logits, labels)
    vocab = student_logits.shape[-1]
    chunk_rows = options.chunk_rows
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_ELEMENTS // vocab)
        options = dataclasses.replace(options, chunk_rows=chunk_rows)
    shifted_student, targets = shift_for_next_token(student_logits, labels)  # (B, L', V), (B, L')
    shifted_teacher, _ = shift_for_next_token(teacher_logits.detach(), labels)  # (B, L', V)
    mask = targets != IGNORE_INDEX  # (B, L')
    n_valid = count_valid(mask, labels)
    weights = None
    if options.uncertainty:
        weights = uncertainty_weights(
            teacher_entropy(shifted_teacher, chunk_rows=chunk_rows), mask)  # (B, L')
    weight_sum, soft_norm = soft_normalization(
        weights, n_valid, options.weight_norm, dtype=compute_dtype(student_logits, teacher_logits),
        device=student_logits.device)

    args = (shifted_teacher, targets, mask, weights, n_valid, soft_norm, options)
    if torch.is_grad_enabled() and student_logits.requires_grad:
        loss, hard, soft = _ChunkedKD.apply(student_logits, *args)
    else:  # evaluation: no gradient buffer needed
        hard, soft = _chunked_kd_pass(shifted_student, *args, grad_out=None)
        loss = combine(hard, soft, options)
    return KDTerms(loss, hard.detach(), soft.detach(), (weight_sum / n_valid).detach())


def shift_for_next_token(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, V) logits, (B, L) labels -> views (B, L-1, V), (B, L-1): position i predicts i+1."""
    return logits[:, :-1], labels[:, 1:]


def teacher_entropy(shifted_teacher_logits: torch.Tensor, *, chunk_rows: int) -> torch.Tensor:
    """Entropy of softmax(t) at tau = 1 per position: (B, L', V) -> (B, L'), fp32 (fp64 if fp64).

    Walked in chunks without autograd; only the (B, L') result is kept (each
    chunk's (b, l, V) temporaries die within its statement).
    """
    batch, length, _ = shifted_teacher_logits.shape
    dtype = compute_dtype(shifted_teacher_logits)
    entropy = torch.empty(batch, length, dtype=dtype, device=shifted_teacher_logits.device)
    with torch.no_grad():
        for rows in chunks(batch, length, chunk_rows):
            entropy[rows] = logits_entropy(shifted_teacher_logits[rows].to(dtype))
    return entropy


def count_valid(mask: torch.Tensor, labels: torch.Tensor, *, caller: str = "kd_loss") -> int:
    """Number of scored positions, ``mask.sum()`` for the (B, L') mask of shifted labels.

    Raises ValueError when it is 0: a loss over no positions is 0 / 0.
    """
    n_valid = int(mask.sum())
    if n_valid == 0:
        raise ValueError(
            f"{caller}: no valid positions: every shifted label labels[:, 1:] is "
            f"{IGNORE_INDEX} (labels shape {tuple(labels.shape)}), nothing to score"
        )
    return n_valid


def soft_normalization(
    weights: torch.Tensor | None, n_valid: int, weight_norm: str, *,
    dtype: torch.dtype, device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor | float]:
    """(weight_sum, soft_norm) of method §3.5 for (B, L') ``weights`` (0 where masked) or None.

    ``weight_sum`` is sum(m * w) (n_valid when unweighted), a 0-dim tensor of ``dtype``;
    ``soft_norm``, the soft term's denominator, is it for ``"weight"``, n_valid for ``"mask"``.
    """
    if weights is None:
        weight_sum = torch.tensor(float(n_valid), dtype=dtype, device=device)
    else:
        weight_sum = weights.sum()  # masked positions hold 0
    return weight_sum, weight_sum if weight_norm == "weight" else float(n_valid)


def uncertainty_weights(entropy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-position weights in [0.5, 1] from teacher entropies (method §3.4).

    ``entropy`` and ``mask`` are (B, L'); min and max are taken per sequence over
    positions where ``mask`` is True. A sequence whose valid entropies span less
    than 1e-8 gets 0.5 everywhere. Masked positions get weight 0, so
    ``weights.sum()`` is the sum over valid positions.
    """
    if entropy.shape != mask.shape:
        raise ValueError(f"uncertainty_weights: entropy shape {tuple(entropy.shape)} "
                         f"!= mask shape {tuple(mask.shape)}")
    inf = torch.tensor(float("inf"), dtype=entropy.dtype, device=entropy.device)
    low = torch.where(mask, entropy, inf).amin(dim=-1, keepdim=True)  # (B, 1)
    high = torch.where(mask, entropy, -inf).amax(dim=-1, keepdim=True)  # (B, 1)
    spread = high - low  # -inf for a sequence with no valid position
    # torch.where evaluates both branches; the division's inf/nan for flat
    # sequences is discarded.
    scaled = torch.where(spread >= MIN_ENTROPY_RANGE, (entropy - low) / spread, 0.0)
    return torch.where(mask, 0.5 + 0.5 * scaled, 0.0)


def calibration_epsilon(max_prob: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Per-position smoothing mass ``eps = smoothing * (1 - max_prob)`` (same shape as max_prob)."""
    return smoothing * (1.0 - max_prob)


def smooth_targets(probs: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Calibration-aware smoothing of teacher probabilities (..., V) -> p_bar (..., V).

    ``p_bar = (1 - eps) * p + eps / V`` with ``eps = calibration_epsilon(max_v p)``;
    the uniform part enters as the per-position scalar ``eps / V``.
    """
    eps = calibration_epsilon(probs.amax(dim=-1, keepdim=True), smoothing)  # (..., 1)
    # eps / V + (1 - eps) * p in one op: a single (..., V) allocation.
    return torch.addcmul(eps / probs.shape[-1], 1.0 - eps, probs)


class _ChunkedKD(torch.autograd.Function):
    """Loss whose gradient wrt the student logits is computed during forward.

    Takes the UNSHIFTED student logits (B, L, V), so that the gradient lands
    directly in a buffer of their shape: returning a gradient for a shifted view
    would make autograd allocate a second logits-sized tensor for the slice.
    forward returns (loss, hard, soft); only ``loss`` is differentiable. The
    stored gradient is d(loss)/d(student_logits) for an upstream gradient of 1.
    """

    @staticmethod
    def forward(ctx, student_logits, shifted_teacher, targets, mask, weights, n_valid,
                soft_norm, options):
        # (B, L, V) in the student dtype. The last position predicts nothing and
        # stays 0; the chunk walk writes positions 0..L-2 (0 where masked).
        grad = torch.zeros_like(student_logits)
        # The same shift as shift_for_next_token, applied to logits and buffer.
        hard, soft = _chunked_kd_pass(
            student_logits[:, :-1], shifted_teacher, targets, mask, weights, n_valid,
            soft_norm, options, grad_out=grad[:, :-1])
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(hard, soft)
        return combine(hard, soft, options), hard, soft

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_hard, _grad_soft):
        (grad,) = ctx.saved_tensors
        # Plain loss.backward() passes exactly 1: hand back the stored buffer
        # itself rather than allocating a second logits-sized product. This is
        # safe: the autograd engine only accumulates in place into a gradient
        # nothing else references, so the saved buffer stays intact (retain_graph).
        # The comparison costs one scalar device sync on GPU.
        if not bool(grad_loss == 1):
            grad = grad * grad_loss
        return grad, *([None] * 7)


def _chunked_kd_pass(
    student: torch.Tensor,  # (B, L', V) shifted student logits (a view)
    teacher: torch.Tensor,  # (B, L', V) shifted teacher logits (a view)
    targets: torch.Tensor,  # (B, L') shifted labels
    mask: torch.Tensor,  # (B, L') bool, targets != -100
    weights: torch.Tensor | None,  # (B, L') uncertainty weights, or None (all 1)
    n_valid: int,  # mask.sum()
    soft_norm: torch.Tensor | float,  # denominator of the soft term
    options: KDOptions,  # chunk_rows set
    *,
    grad_out: torch.Tensor | None,  # (B, L', V) view of the gradient buffer, or None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One walk over the position chunks: returns (hard, soft), fills ``grad_out`` if given."""
    batch, length, _ = student.shape
    dtype = compute_dtype(student, teacher)
    hard_sum = torch.zeros((), dtype=dtype, device=student.device)
    soft_sum = torch.zeros((), dtype=dtype, device=student.device)
    for rows in chunks(batch, length, options.chunk_rows):
        chunk_hard, chunk_soft = chunk_terms(
            student[rows].to(dtype), teacher[rows].to(dtype), targets[rows], mask[rows],
            None if weights is None else weights[rows], n_valid, soft_norm, options,
            None if grad_out is None else grad_out[rows])
        hard_sum += chunk_hard
        soft_sum += chunk_soft
    return hard_sum / n_valid, soft_sum / soft_norm


class RowTerms(NamedTuple):
    """One chunk's per-position terms (``row_terms``), before any weighting or scaling."""

    ce: torch.Tensor  # (b, l) cross-entropy per position, 0 where not valid
    kl: torch.Tensor  # (b, l) unweighted KL(p_bar || q) per position, 0 where not valid
    entropy: torch.Tensor | None  # (b, l) teacher entropy at tau = 1, or None (not asked)
    hard: torch.Tensor | None  # (b, l, V) softmax(s) - onehot(y): d ce / d s; None without grads
    soft: torch.Tensor | None  # (b, l, V) softmax(s / tau) - p_bar: tau * d kl / d s; None without grads


def row_terms(
    s: torch.Tensor,  # (b, l, V) student logits, compute dtype
    t: torch.Tensor,  # (b, l, V) teacher logits, compute dtype
    targets: torch.Tensor,  # (b, l)
    valid: torch.Tensor,  # (b, l) bool
    options: KDOptions,
    *,
    entropy: bool,
    grads: bool,
) -> RowTerms:
    """One chunk's per-position CE and KL (steps 1-3 and 6 of the module docstring), the
    teacher's entropy at tau = 1 if ``entropy`` (step 4's input, from the same teacher
    logits), and if ``grads`` the two (b, l, V) parts of the gradient wrt ``s``. Rows that
    are not valid hold any value in ``hard``, ``soft`` and ``entropy`` (masked logits may
    even be inf); ``ce`` and ``kl`` are 0 there."""
    tau, smoothing = options.temperature, options.smoothing
    # Teacher first, so that its temporaries are gone before the student's exist.
    ent = None
    if entropy and not (tau == 1 and smoothing is None):
        ent = logits_entropy(t)
    p_bar, neg_entropy = soft_targets(t, tau, smoothing)
    if entropy and ent is None:
        ent = -neg_entropy  # tau = 1, no smoothing: p_bar is softmax(t) itself
    log_q = F.log_softmax(s / tau, dim=-1)  # (b, l, V) student at tau
    log_q1 = log_q if tau == 1 else F.log_softmax(s, dim=-1)  # student at tau = 1
    kl = neg_entropy - _row_dot(p_bar, log_q)  # (b, l)
    label = targets.clamp_min(0).unsqueeze(-1)  # (b, l, 1); -100 -> 0, masked below
    ce = -log_q1.gather(-1, label).squeeze(-1)  # (b, l)
    hard = soft = None
    if grads:
        # softmax(s) - onehot(y), in place in log_q1 unless that is log_q (tau = 1), which
        # the soft part still needs; then softmax(s / tau) - p_bar in place in log_q.
        hard = log_q1.exp() if log_q1 is log_q else log_q1.exp_()
        hard.scatter_add_(-1, label, -torch.ones_like(label, dtype=hard.dtype))
        soft = log_q.exp_().sub_(p_bar)
    # torch.where, not a product with the mask: masked rows may hold any logits,
    # even inf, and must not leak nan into the sums.
    return RowTerms(torch.where(valid, ce, 0.0), torch.where(valid, kl, 0.0), ent, hard, soft)


def chunk_gradient(
    terms: RowTerms,
    valid: torch.Tensor,  # (b, l) bool
    weights: torch.Tensor | None,  # (b, l) or None (all 1)
    n_valid: int,
    soft_norm: torch.Tensor | float,
    options: KDOptions,
    *,
    out: torch.Tensor | None = None,  # (b, l, V) in the compute dtype, or None: terms.hard
    all_valid: bool = False,
) -> torch.Tensor:
    """d loss / d s of one chunk, (b, l, V), 0 on rows that are not valid:

        alpha / n_valid * hard + (1 - alpha) * tau * w / norm * soft

    built in ``out`` (default: in place in ``terms.hard``). ``all_valid``: the caller
    knows every row is valid (no masking pass)."""
    tau, alpha = options.temperature, options.alpha
    grad = torch.mul(terms.hard, alpha / n_valid, out=terms.hard if out is None else out)
    soft_coef = (1.0 - alpha) * tau / soft_norm  # scalar
    if weights is None and not isinstance(soft_coef, torch.Tensor):
        grad.add_(terms.soft, alpha=soft_coef)
    else:
        if weights is not None:
            soft_coef = (soft_coef * weights).unsqueeze(-1)  # (b, l, 1)
        grad.addcmul_(terms.soft, soft_coef)
    return grad if all_valid else grad.masked_fill_(~valid.unsqueeze(-1), 0.0)


def chunk_terms(
    s: torch.Tensor,  # (b, l, V) student logits, compute dtype
    t: torch.Tensor,  # (b, l, V) teacher logits, compute dtype
    targets: torch.Tensor,  # (b, l)
    valid: torch.Tensor,  # (b, l) bool
    weights: torch.Tensor | None,  # (b, l) or None
    n_valid: int,
    soft_norm: torch.Tensor | float,
    options: KDOptions,
    grad_out: torch.Tensor | None,  # (b, l, V) view of the gradient buffer, or None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk: (sum of CE, sum of weighted KL) over its valid positions; writes
    its gradient into ``grad_out``. A function of its own so that the chunk's
    (b, l, V) temporaries are freed on return, before the next chunk allocates."""
    terms = row_terms(s, t, targets, valid, options, entropy=False, grads=grad_out is not None)
    if grad_out is not None:
        grad_out.copy_(chunk_gradient(terms, valid, weights, n_valid, soft_norm, options))  # cast
    kl = terms.kl if weights is None else terms.kl * weights
    return terms.ce.sum(), kl.sum()


def soft_targets(
    teacher: torch.Tensor, tau: float, smoothing: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher chunk (b, l, V) -> (p_bar (b, l, V), sum_v p_bar * log p_bar (b, l))."""
    if smoothing is None:
        log_p = F.log_softmax(teacher / tau, dim=-1)
        p = log_p.exp()
        return p, _row_dot(p, log_p)
    p_bar = smooth_targets(F.softmax(teacher / tau, dim=-1), smoothing)
    # p_bar can be exactly 0 (eps = 0 where the teacher is one-hot): 0 * log(tiny) = 0, as
    # 0 * log 0 = 0 would be; every p_bar >= tiny keeps its own log. (torch.xlogy does the
    # same, at 2.4x the CPU time: docs/benchmarks.md, "fused loss chunk size".)
    tiny = torch.finfo(p_bar.dtype).tiny
    return p_bar, _row_dot(p_bar, p_bar.clamp_min(tiny).log_())


def logits_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per row, (..., V) -> (...): -sum_v p log p."""
    log_p = F.log_softmax(logits, dim=-1)
    return -_row_dot(log_p.exp(), log_p)


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_v a * b over the last dim, (..., V) x (..., V) -> (...), as a batched
    matmul so that no (..., V) product is allocated."""
    return (a.unsqueeze(-2) @ b.unsqueeze(-1)).squeeze(-1).squeeze(-1)


def combine(hard: torch.Tensor, soft: torch.Tensor, options: KDOptions) -> torch.Tensor:
    """method §3.7: alpha * hard + (1 - alpha) * tau**2 * soft."""
    alpha = options.alpha
    return alpha * hard + (1.0 - alpha) * options.temperature**2 * soft


def chunks(batch: int, length: int, chunk_rows: int) -> Iterator[tuple[slice, slice]]:
    """(batch, position) slices covering (batch, length), each at most ``chunk_rows`` rows.

    Slicing keeps every chunk a view of the (B, L, V) logits: whole sequences
    are grouped when they fit, otherwise each sequence is cut into position runs.
    """
    if chunk_rows >= length:
        per_chunk = chunk_rows // length
        for b in range(0, batch, per_chunk):
            yield slice(b, b + per_chunk), slice(0, length)
    else:
        for b in range(batch):
            for start in range(0, length, chunk_rows):
                yield slice(b, b + 1), slice(start, start + chunk_rows)


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """fp32 for half/bfloat16/fp32 inputs, fp64 if any input is fp64."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def _validate(student_logits, teacher_logits, labels) -> None:
    student_shape, teacher_shape = tuple(student_logits.shape), tuple(teacher_logits.shape)
    if student_logits.dim() != 3:
        raise ValueError(f"kd_loss: student_logits must be (B, L, V), got shape {student_shape}")
    if teacher_logits.dim() != 3 or teacher_shape[:2] != student_shape[:2]:
        raise ValueError(f"kd_loss: teacher_logits shape {teacher_shape} does not match "
                         f"student_logits shape {student_shape} in (B, L)")
    if teacher_shape[2] != student_shape[2]:
        raise ValueError(f"kd_loss: vocabulary mismatch: student V={student_shape[2]}, "
                         f"teacher V={teacher_shape[2]}")
    if tuple(labels.shape) != student_shape[:2]:
        raise ValueError(f"kd_loss: labels shape {tuple(labels.shape)} does not match the "
                         f"logits' (B, L) = {student_shape[:2]}")
    if not (student_logits.is_floating_point() and teacher_logits.is_floating_point()):
        raise ValueError(f"kd_loss: logits must be floating point, got "
                         f"{student_logits.dtype} and {teacher_logits.dtype}")
    validate_labels(labels, student_shape[2])


def validate_labels(labels, vocab, *, caller: str = "kd_loss") -> None:
    """The check every KD loss entry point shares, after its own shape checks: integer
    labels in [0, vocab) or -100 (the options were checked when made: ``KDOptions``).
    Messages start with ``caller``."""
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{caller}: labels must be integer token ids, got {labels.dtype}")
    out_of_range = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= vocab))
    if bool(out_of_range.any()):
        raise ValueError(f"{caller}: labels must be in [0, {vocab}) or "
                         f"{IGNORE_INDEX}; got e.g. {int(labels[out_of_range][0])}")
