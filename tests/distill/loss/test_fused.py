"""Tests of distill/loss/fused.py: equal to kd_loss on the materialized logits, without them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import GPT2Config, GPT2LMHeadModel

from kdsweep.distill.loss.fused import (
    CUDA_MIN_CHUNK_ROWS,
    default_block_rows,
    default_chunk_rows,
    fused_kd_loss,
    fused_kd_loss_terms,
    teacher_entropy_from_hidden,
)
from kdsweep.distill.loss.heads import head_inputs
from kdsweep.distill.loss.kd import kd_loss, kd_loss_terms
from kdsweep.distill.loss.reference import ARMS, reference_kd_loss

PROTGPT2_VOCAB = 50_257
WEIGHT_NORMS = ("mask", "weight")


def random_batch(batch, length, vocab, *, d_s=6, d_t=10, seed, dtype=torch.float32,
                 masked=((0, 3), (1, 1)), masked_rows=()):
    """Hidden states and heads whose logits have a realistic spread (std ~2 student, ~3
    teacher), labels with some -100 (after the shift) and whole masked sequences."""
    gen = torch.Generator().manual_seed(seed)
    student_hidden = torch.randn(batch, length, d_s, generator=gen, dtype=dtype)
    student_head = 2.0 / d_s**0.5 * torch.randn(vocab, d_s, generator=gen, dtype=dtype)
    teacher_hidden = torch.randn(batch, length, d_t, generator=gen, dtype=dtype)
    teacher_head = 3.0 / d_t**0.5 * torch.randn(vocab, d_t, generator=gen, dtype=dtype)
    labels = torch.randint(0, vocab, (batch, length), generator=gen)
    labels[:, 0] = -100  # never predicted anyway
    for b, i in masked:
        labels[b, i] = -100
    for b in masked_rows:
        labels[b] = -100
    return student_hidden, student_head, teacher_hidden, teacher_head, labels


def fused_grads(student_hidden, student_head, teacher_hidden, teacher_head, labels, **kwargs):
    """(loss, d loss / d student_hidden, d loss / d student_head) of the fused loss."""
    hidden = student_hidden.detach().clone().requires_grad_(True)
    head = student_head.detach().clone().requires_grad_(True)
    loss = fused_kd_loss(hidden, head, teacher_hidden, teacher_head, labels, **kwargs)
    grad_hidden, grad_head = torch.autograd.grad(loss, (hidden, head))
    return loss.detach(), grad_hidden, grad_head


def logits_grads(loss_fn, student_hidden, student_head, teacher_hidden, teacher_head, labels,
                 **kwargs):
    """The same for ``loss_fn`` (kd_loss or the study reference) on materialized logits."""
    hidden = student_hidden.detach().clone().requires_grad_(True)
    head = student_head.detach().clone().requires_grad_(True)
    loss = loss_fn(hidden @ head.T, teacher_hidden @ teacher_head.T, labels, **kwargs)
    grad_hidden, grad_head = torch.autograd.grad(loss, (hidden, head))
    return loss.detach(), grad_hidden, grad_head


def assert_same(got, expected, rtol):
    """Loss and gradients equal to ``rtol``, relative to each tensor's largest element."""
    for actual, wanted in zip(got, expected):
        assert actual.dtype == wanted.dtype
        torch.testing.assert_close(actual, wanted, rtol=rtol,
                                   atol=rtol * wanted.abs().max().item())


def arm_kwargs(arm, **overrides):
    uncertainty, smoothing = ARMS[arm]
    kwargs = dict(temperature=2.0, alpha=0.4, uncertainty=uncertainty, smoothing=smoothing)
    kwargs.update(overrides)
    return kwargs


def relative_error(actual, expected):
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


# ---------------------------------------------------------------- equal to kd_loss


@pytest.mark.parametrize("arm", list(ARMS))
@pytest.mark.parametrize("weight_norm", WEIGHT_NORMS)
@pytest.mark.parametrize("chunk_rows", [1, 3, 4, 18, None])
def test_matches_kd_loss(arm, weight_norm, chunk_rows):
    # B=3, L'=9: chunk_rows 3 divides L', 4 leaves a ragged chunk, 18 groups two whole
    # sequences, None is one chunk. Sequence 2 is masked entirely.
    batch = random_batch(3, 10, 23, seed=1, masked_rows=(2,))
    kwargs = arm_kwargs(arm, weight_norm=weight_norm)
    fused = fused_grads(*batch, chunk_rows=chunk_rows, **kwargs)
    expected = logits_grads(kd_loss, *batch, **kwargs)
    assert_same(fused, expected, rtol=1e-5)
    assert torch.all(fused[1][2] == 0)  # the masked sequence gets no gradient


@pytest.mark.parametrize("arm", list(ARMS))
@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.5), (3.0, 0.1), (8.0, 0.9),
                                               (2.0, 0.0), (2.0, 1.0)])
def test_matches_kd_loss_across_temperatures_and_alphas(arm, temperature, alpha):
    batch = random_batch(2, 11, 19, seed=2)
    kwargs = arm_kwargs(arm, temperature=temperature, alpha=alpha, weight_norm="weight")
    assert_same(fused_grads(*batch, chunk_rows=4, **kwargs),
                logits_grads(kd_loss, *batch, **kwargs), rtol=1e-5)


@pytest.mark.parametrize("arm", ["both", "baseline"])
def test_matches_kd_loss_full_vocab(arm):
    batch = random_batch(2, 16, PROTGPT2_VOCAB, d_s=16, d_t=24, seed=3,
                         masked=((0, 5), (1, 9), (1, 10)))
    kwargs = arm_kwargs(arm, temperature=1.5, alpha=0.3, weight_norm="mask")
    # chunk_rows=6 on (2, 15) positions: 6 chunks, two of them ragged.
    fused = fused_grads(*batch, chunk_rows=6, **kwargs)
    assert fused[0].dtype == fused[1].dtype == fused[2].dtype == torch.float32
    assert_same(fused, logits_grads(kd_loss, *batch, **kwargs), rtol=1e-5)


@pytest.mark.parametrize("arm", list(ARMS))
@pytest.mark.parametrize("weight_norm", WEIGHT_NORMS)
@pytest.mark.parametrize("chunk_rows", [5, None])
def test_matches_study_reference_in_float64(arm, weight_norm, chunk_rows):
    """Independent of kd_loss: the unchunked study-style reference, in fp64, with sequences
    cut over chunks (entropies from a teacher-only pass) and whole (from the walk). (The
    reference cannot take a wholly masked sequence under uncertainty weighting: min of
    nothing.)"""
    batch = random_batch(3, 8, 17, seed=4, dtype=torch.float64)
    kwargs = arm_kwargs(arm, weight_norm=weight_norm)
    fused = fused_grads(*batch, chunk_rows=chunk_rows, **kwargs)
    assert fused[0].dtype == torch.float64
    assert_same(fused, logits_grads(reference_kd_loss, *batch, **kwargs), rtol=1e-10)


def test_head_biases():
    student_hidden, student_head, teacher_hidden, teacher_head, labels = random_batch(
        2, 9, 13, seed=5)
    gen = torch.Generator().manual_seed(6)
    student_bias, teacher_bias = torch.randn(13, generator=gen), torch.randn(13, generator=gen)
    kwargs = arm_kwargs("both", weight_norm="weight")

    inputs = [x.clone().requires_grad_(True) for x in (student_hidden, student_head, student_bias)]
    loss = fused_kd_loss(inputs[0], inputs[1], teacher_hidden, teacher_head, labels, chunk_rows=5,
                         student_head_bias=inputs[2], teacher_head_bias=teacher_bias, **kwargs)
    grads = torch.autograd.grad(loss, inputs)

    ref_inputs = [x.clone().requires_grad_(True)
                  for x in (student_hidden, student_head, student_bias)]
    ref_loss = kd_loss(F.linear(*ref_inputs), F.linear(teacher_hidden, teacher_head, teacher_bias),
                       labels, **kwargs)
    ref_grads = torch.autograd.grad(ref_loss, ref_inputs)
    assert_same((loss, *grads), (ref_loss, *ref_grads), rtol=1e-5)
    assert grads[2].abs().sum() > 0


def test_terms_match_kd_loss_terms():
    student_hidden, student_head, teacher_hidden, teacher_head, labels = random_batch(
        2, 10, 19, seed=7)
    kwargs = dict(temperature=2.5, alpha=0.25, uncertainty=True, smoothing=0.05,
                  weight_norm="weight")
    fused = fused_kd_loss_terms(student_hidden, student_head, teacher_hidden, teacher_head,
                                labels, chunk_rows=7, **kwargs)
    expected = kd_loss_terms(student_hidden @ student_head.T, teacher_hidden @ teacher_head.T,
                             labels, **kwargs)
    for name in ("loss", "hard", "soft", "mean_weight"):
        torch.testing.assert_close(getattr(fused, name), getattr(expected, name),
                                   rtol=1e-5, atol=0)
    assert 0.5 < fused.mean_weight.item() < 1.0
    assert torch.equal(fused.loss, fused_kd_loss(student_hidden, student_head, teacher_hidden,
                                                 teacher_head, labels, chunk_rows=7, **kwargs))


# ---------------------------------------------------------------- masks, scaling, modes


@pytest.mark.parametrize("arm", ["both", "baseline"])
def test_masked_positions_are_ignored_and_get_zero_gradient(arm):
    student_hidden, student_head, teacher_hidden, teacher_head, labels = random_batch(
        2, 9, 13, seed=8, masked=((0, 3), (0, 4), (1, 6)))
    ignored = torch.zeros(2, 9, dtype=torch.bool)  # positions whose shifted label is -100
    ignored[:, :-1] = labels[:, 1:] == -100
    ignored[:, -1] = True  # the last position predicts nothing
    assert ignored.sum() == 5

    gen = torch.Generator().manual_seed(9)
    student2, teacher2 = student_hidden.clone(), teacher_hidden.clone()
    student2[ignored] = 50 * torch.randn(int(ignored.sum()), 6, generator=gen)
    # Very peaked / flat teachers would become the entropy min / max if masking leaked.
    teacher2[ignored] = 200 * torch.randn(int(ignored.sum()), 10, generator=gen)
    teacher2[1, 5] = 0.0  # flat: maximal entropy, at an ignored position
    assert ignored[1, 5]

    kwargs = arm_kwargs(arm, weight_norm="weight", chunk_rows=4)
    loss1, grad_hidden1, grad_head1 = fused_grads(student_hidden, student_head, teacher_hidden,
                                                  teacher_head, labels, **kwargs)
    loss2, grad_hidden2, grad_head2 = fused_grads(student2, student_head, teacher2,
                                                  teacher_head, labels, **kwargs)
    torch.testing.assert_close(loss1, loss2, rtol=0, atol=0)
    torch.testing.assert_close(grad_hidden1[~ignored], grad_hidden2[~ignored], rtol=0, atol=0)
    torch.testing.assert_close(grad_head1, grad_head2, rtol=0, atol=0)
    assert torch.all(grad_hidden1[ignored] == 0) and torch.all(grad_hidden2[ignored] == 0)
    assert grad_hidden1[~ignored].abs().sum() > 0


def test_gradient_accumulation_scaling():
    """(loss / accum).backward() over micro-batches sharing one head: the hidden states get
    their micro-batch's gradient / accum, the head the mean of the micro-batches' gradients."""
    accum = 2
    micro = [random_batch(2, 7, 11, seed=seed) for seed in (10, 11)]
    shared_head = micro[0][1]
    kwargs = arm_kwargs("both", chunk_rows=3)
    singles = [fused_grads(hidden, shared_head, *rest, **kwargs)
               for hidden, _, *rest in micro]

    head = shared_head.clone().requires_grad_(True)
    leaves = []
    for hidden, _, teacher_hidden, teacher_head, labels in micro:
        leaves.append(hidden.clone().requires_grad_(True))
        loss = fused_kd_loss(leaves[-1], head, teacher_hidden, teacher_head, labels, **kwargs)
        (loss / accum).backward()
    for leaf, (_, grad_hidden, _) in zip(leaves, singles):
        torch.testing.assert_close(leaf.grad, grad_hidden / accum, rtol=1e-6, atol=0)
    torch.testing.assert_close(head.grad, (singles[0][2] + singles[1][2]) / accum,
                               rtol=1e-6, atol=1e-8)


def test_scaled_and_repeated_backward():
    """Upstream gradients other than 1 scale the stored gradients; retain_graph reuse is safe."""
    batch = random_batch(2, 6, 9, seed=12)
    _, grad_hidden, grad_head = fused_grads(*batch, **arm_kwargs("both"))
    hidden = batch[0].clone().requires_grad_(True)
    head = batch[1].clone().requires_grad_(True)
    loss = fused_kd_loss(hidden, head, *batch[2:], **arm_kwargs("both"))
    (3.0 * loss).backward(retain_graph=True)
    torch.testing.assert_close(hidden.grad, 3 * grad_hidden)
    torch.testing.assert_close(head.grad, 3 * grad_head)
    loss.backward(retain_graph=True)
    loss.backward()
    torch.testing.assert_close(hidden.grad, 5 * grad_hidden)
    torch.testing.assert_close(head.grad, 5 * grad_head)


def test_precomputed_teacher_entropy_equals_computing_it():
    batch = random_batch(3, 9, 17, seed=13, masked_rows=(1,))
    student_hidden, student_head, teacher_hidden, teacher_head, labels = batch
    kwargs = arm_kwargs("both", chunk_rows=5, weight_norm="weight")
    entropy = teacher_entropy_from_hidden(teacher_hidden, teacher_head, chunk_rows=4)
    assert entropy.shape == (3, 8) and entropy.dtype == torch.float32
    computed = fused_grads(*batch, **kwargs)
    given = fused_grads(*batch, teacher_entropy=entropy, **kwargs)
    assert_same(given, computed, rtol=1e-6)
    # The argument is really used: other entropies give other weights and another loss.
    shuffled = fused_grads(*batch, teacher_entropy=entropy.flip(-1), **kwargs)
    assert abs(shuffled[0].item() - computed[0].item()) > 1e-4
    # ... and ignored without uncertainty weighting.
    off = arm_kwargs("calibration", chunk_rows=5)
    assert_same(fused_grads(*batch, teacher_entropy=entropy.flip(-1), **off),
                fused_grads(*batch, **off), rtol=0)


class TeacherLogitRows(TorchDispatchMode):
    """Counts the rows of teacher logits made: matmul outputs (rows, V) from an input of
    the teacher's width (distinct from the student's in these tests)."""

    def __init__(self, teacher_width, vocab):
        super().__init__()
        self.teacher_width, self.vocab, self.rows = teacher_width, vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        aten = torch.ops.aten
        if func in (aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default) \
                and out.shape[-1] == self.vocab \
                and any(isinstance(a, torch.Tensor) and a.shape[-1] == self.teacher_width for a in args):
            self.rows += out.numel() // self.vocab
        return out


@pytest.mark.parametrize("weight_norm,d_s,chunk_rows,grad,passes", [
    ("mask", 6, None, True, 1),  # whole sequences: entropies from the walk's own logits
    ("mask", 6, 18, True, 1),  # two whole sequences per chunk
    ("weight", 4, None, True, 1),  # the soft part split until norm is known (2 d_s <= d_t)
    ("weight", 8, None, True, 2),  # a wide student: the teacher pass is the cheaper way
    ("mask", 6, 4, True, 2),  # sequences cut over chunks: the teacher-only pass first
    ("mask", 6, 4, False, 1),  # evaluation weights the soft sum after the walk
])
def test_one_teacher_head_pass(weight_norm, d_s, chunk_rows, grad, passes):
    """The uncertainty arm makes each position's teacher logits once when its chunk holds
    whole sequences (the default chunk at L = 512), and matches kd_loss either way."""
    d_t, vocab = 10, 23
    batch = random_batch(3, 10, vocab, d_s=d_s, d_t=d_t, seed=40, masked_rows=(2,))
    kwargs = arm_kwargs("uncertainty", weight_norm=weight_norm)
    hidden = batch[0].clone().requires_grad_(grad)
    with TeacherLogitRows(d_t, vocab) as counted:
        loss = fused_kd_loss(hidden, *batch[1:], chunk_rows=chunk_rows, **kwargs)
    assert counted.rows == passes * 3 * 9  # B * L' positions per pass
    expected = kd_loss(batch[0] @ batch[1].T, batch[2] @ batch[3].T, batch[4], **kwargs)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=0)
    if grad:
        assert_same(fused_grads(*batch, chunk_rows=chunk_rows, **kwargs),
                    logits_grads(kd_loss, *batch, **kwargs), rtol=1e-5)


@pytest.mark.parametrize("arm", ["uncertainty", "both"])
def test_weight_norm_split_matches_reference_in_float64(arm):
    """The weight-norm split (a narrow student, whole-sequence chunks, entropies from the
    walk) against the unchunked study-style reference in fp64, with head biases and a
    wholly masked sequence's neighbour; and gradcheck."""
    student_hidden, student_head, teacher_hidden, teacher_head, labels = random_batch(
        3, 8, 17, d_s=3, d_t=9, seed=41, dtype=torch.float64)
    gen = torch.Generator().manual_seed(42)
    bias = torch.randn(17, generator=gen, dtype=torch.float64)
    teacher_bias = torch.randn(17, generator=gen, dtype=torch.float64)
    kwargs = arm_kwargs(arm, weight_norm="weight", chunk_rows=14)  # two sequences, then one
    inputs = [x.clone().requires_grad_(True) for x in (student_hidden, student_head, bias)]
    loss = fused_kd_loss(inputs[0], inputs[1], teacher_hidden, teacher_head, labels,
                         student_head_bias=inputs[2], teacher_head_bias=teacher_bias, **kwargs)
    grads = torch.autograd.grad(loss, inputs)
    ref_inputs = [x.clone().requires_grad_(True) for x in (student_hidden, student_head, bias)]
    ref_loss = reference_kd_loss(F.linear(*ref_inputs), F.linear(teacher_hidden, teacher_head, teacher_bias),
                                 labels, **{k: v for k, v in kwargs.items() if k != "chunk_rows"})
    assert_same((loss, *grads), (ref_loss, *torch.autograd.grad(ref_loss, ref_inputs)), rtol=1e-10)

    def fn(hidden, head, head_bias):
        return fused_kd_loss(hidden, head, teacher_hidden, teacher_head, labels, student_head_bias=head_bias,
                             teacher_head_bias=teacher_bias, **kwargs)

    # fast_mode: a random projection of the Jacobian (140 inputs: the full check takes ~1 min).
    assert torch.autograd.gradcheck(fn, tuple(x.detach().clone().requires_grad_(True)
                                              for x in (student_hidden, student_head, bias)), fast_mode=True)


def test_teacher_entropy_from_hidden_matches_direct_formula():
    _, _, teacher_hidden, teacher_head, _ = random_batch(3, 9, 13, seed=14)
    bias = torch.randn(13, generator=torch.Generator().manual_seed(15))
    entropy = teacher_entropy_from_hidden(teacher_hidden, teacher_head, bias, chunk_rows=4)
    p = torch.softmax(F.linear(teacher_hidden[:, :-1], teacher_head, bias).double(), -1)
    torch.testing.assert_close(entropy.double(), -(p * p.log()).sum(-1), rtol=1e-5, atol=1e-6)


def test_no_grad_evaluation_gives_the_same_value():
    batch = random_batch(2, 6, 9, seed=16)
    kwargs = arm_kwargs("both", chunk_rows=4)
    with_grad = fused_kd_loss(batch[0].clone().requires_grad_(True), *batch[1:], **kwargs)
    with torch.no_grad():
        without = fused_kd_loss(batch[0].clone().requires_grad_(True), *batch[1:], **kwargs)
    assert without.grad_fn is None and with_grad.grad_fn is not None
    torch.testing.assert_close(without, with_grad.detach(), rtol=0, atol=0)


def test_teacher_gets_no_gradient_nor_a_frozen_student_head():
    student_hidden, student_head, teacher_hidden, teacher_head, labels = random_batch(
        2, 6, 9, seed=17)
    for tensor in (student_hidden, teacher_hidden, teacher_head):
        tensor.requires_grad_(True)
    fused_kd_loss(student_hidden, student_head, teacher_hidden, teacher_head, labels,
                  **arm_kwargs("both")).backward()
    assert student_hidden.grad is not None and student_hidden.grad.abs().sum() > 0
    assert teacher_hidden.grad is None and teacher_head.grad is None
    assert student_head.grad is None  # it did not require a gradient


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.numel = max(self.numel, leaf.numel())
        return out


def test_nothing_logits_sized_is_allocated():
    vocab, chunk_rows = 97, 7
    batch = random_batch(3, 20, vocab, d_s=4, d_t=6, seed=18)
    hidden = batch[0].clone().requires_grad_(True)
    head = batch[1].clone().requires_grad_(True)
    with LargestTensor() as fused:
        fused_kd_loss(hidden, head, *batch[2:], **arm_kwargs("both", chunk_rows=chunk_rows)
                      ).backward()
    # Chunk tensors are (<= 7, 97); heads (97, <= 6); hidden states (3, 20, <= 6).
    assert fused.numel == chunk_rows * vocab
    # The check can fail: the logits path builds (3, 20, 97) tensors.
    with LargestTensor() as materialized:
        kd_loss(hidden @ head.T, batch[2] @ batch[3].T, batch[4],
                **arm_kwargs("both", chunk_rows=chunk_rows)).backward()
    assert materialized.numel == 3 * 20 * vocab


class TensorSizes(TorchDispatchMode):
    """Records the number of elements of every tensor an op produces."""

    def __init__(self):
        super().__init__()
        self.numels = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.numels += [leaf.numel() for leaf in tree_leaves(out) if isinstance(leaf, torch.Tensor)]
        return out


def test_default_chunk_and_blocks_on_the_cpu():
    """On the CPU the default chunk is 2**25 // V rows and at least one whole sequence (so the
    uncertainty arms make their entropies in the walk), its elementwise math blocks of
    2**22 // V rows: only the chunk's two logits are chunk-sized."""
    cpu = torch.device("cpu")
    assert default_chunk_rows(PROTGPT2_VOCAB, cpu, 511) == 667  # one sequence of ProtGPT2's L = 512
    assert default_chunk_rows(PROTGPT2_VOCAB, cpu, 1023) == 1023  # a longer sequence: still whole
    assert default_block_rows(PROTGPT2_VOCAB, cpu, 667) == 83  # 16.8 MB fp32 temporaries
    vocab = 2**16  # chunk 512 rows: all three sequences of 100 positions; blocks of 64 rows
    batch = random_batch(3, 101, vocab, d_s=4, d_t=6, seed=19)
    hidden = batch[0].clone().requires_grad_(True)
    with TensorSizes() as sizes:
        fused_kd_loss(hidden, *batch[1:], **arm_kwargs("both")).backward()
    assert sizes.numels.count(300 * vocab) == 2  # the student's and the teacher's logits
    assert max(n for n in sizes.numels if n != 300 * vocab) == 64 * vocab


def test_default_chunk_on_cuda_by_memory_budget(monkeypatch):
    """On CUDA: CHUNK_TEMPORARIES fp32 (rows, V) tensors in 1/32 of the device's memory, at least
    1024 rows, blocks as large as the chunk (each block is a round of kernel launches)."""
    props = type("Props", (), {"total_memory": 141 * 10**9})  # an H200
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    cuda = torch.device("cuda")
    rows = default_chunk_rows(PROTGPT2_VOCAB, cuda, 511)
    assert rows == 141 * 10**9 // 32 // (8 * 4 * PROTGPT2_VOCAB) == 2739
    assert default_block_rows(PROTGPT2_VOCAB, cuda, rows) == rows
    props.total_memory = 16 * 10**9  # a 16 GB card: the floor
    assert default_chunk_rows(PROTGPT2_VOCAB, cuda, 511) == CUDA_MIN_CHUNK_ROWS == 1024


@pytest.mark.parametrize("arm,weight_norm", [("both", "mask"), ("uncertainty", "weight"), ("calibration", "mask")])
def test_blocks_change_nothing_but_rounding(arm, weight_norm):
    """Blocks of the elementwise math (1 row, ragged, the whole chunk) give the loss and gradients of
    kd_loss; the weight-norm split (d_s = 4 <= d_t / 2) included."""
    batch = random_batch(3, 10, 23, d_s=4, d_t=10, seed=43, masked_rows=(2,))
    kwargs = arm_kwargs(arm, weight_norm=weight_norm)
    expected = logits_grads(kd_loss, *batch, **kwargs)
    for chunk_rows, block_rows in ((18, 1), (18, 5), (9, 4), (27, None)):
        assert_same(fused_grads(*batch, chunk_rows=chunk_rows, block_rows=block_rows, **kwargs), expected,
                    rtol=1e-5)


@pytest.mark.parametrize("weight_norm", WEIGHT_NORMS)
@pytest.mark.parametrize("arm", ["both", "baseline"])
def test_gradcheck_float64(arm, weight_norm):
    student_hidden, student_head, teacher_hidden, teacher_head, labels = random_batch(
        2, 5, 7, d_s=3, d_t=4, seed=20, dtype=torch.float64, masked=((0, 2),))
    bias = torch.randn(7, generator=torch.Generator().manual_seed(21), dtype=torch.float64)
    inputs = tuple(x.requires_grad_(True) for x in (student_hidden, student_head, bias))
    kwargs = arm_kwargs(arm, weight_norm=weight_norm, chunk_rows=3)

    def loss(hidden, head, head_bias):
        return fused_kd_loss(hidden, head, teacher_hidden, teacher_head, labels,
                             student_head_bias=head_bias, **kwargs)

    assert loss(*inputs).dtype == torch.float64
    assert torch.autograd.gradcheck(loss, inputs)


# ---------------------------------------------------------------- tied GPT-2 head


def tiny_gpt2(n_embd, seed, vocab=61):
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab, n_positions=32, n_embd=n_embd, n_layer=2, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


@pytest.mark.parametrize("arm", ["both", "baseline"])
def test_tied_gpt2_head_every_parameter_gradient(arm):
    student, teacher = tiny_gpt2(16, seed=0), tiny_gpt2(24, seed=1)
    assert student.lm_head.weight is student.transformer.wte.weight  # tied
    gen = torch.Generator().manual_seed(22)
    x = torch.randint(0, 61, (3, 12), generator=gen)
    labels = x.clone()
    labels[1, 8:] = -100  # padding
    # The logits of a random GPT-2 are ~0.1 wide; a low temperature makes the soft
    # term's gradient as large as the hard term's, so both are checked.
    kwargs = arm_kwargs(arm, temperature=0.5, alpha=0.5, weight_norm="mask")

    with torch.no_grad():
        teacher_logits = teacher(x).logits
    kd_loss(student(x).logits, teacher_logits, labels, **kwargs).backward()
    expected = {name: p.grad.clone() for name, p in student.named_parameters()}
    student.zero_grad(set_to_none=True)

    hidden = student.transformer(x).last_hidden_state  # (3, 12, 16)
    with torch.no_grad():
        teacher_hidden = teacher.transformer(x).last_hidden_state  # (3, 12, 24)
    fused_kd_loss(hidden, student.lm_head.weight, teacher_hidden, teacher.lm_head.weight,
                  labels, chunk_rows=5, **kwargs).backward()
    got = dict(student.named_parameters())
    assert expected.keys() == got.keys() and "transformer.wte.weight" in got
    for name, grad in expected.items():
        torch.testing.assert_close(got[name].grad, grad, rtol=1e-5,
                                   atol=1e-5 * grad.abs().max().item(), msg=name)
    # The tied matrix's gradient holds both parts: the head's and the embedding lookup's.
    head_part = torch.autograd.grad(
        fused_kd_loss(hidden.detach(), student.lm_head.weight, teacher_hidden,
                      teacher.lm_head.weight, labels, **kwargs), student.lm_head.weight)[0]
    embedding_part = got["transformer.wte.weight"].grad - head_part
    assert head_part.abs().max() > 0 and embedding_part[x.unique()].abs().max() > 0


def test_head_inputs_feed_the_fused_loss_like_logits():
    student, teacher = tiny_gpt2(16, seed=2), tiny_gpt2(24, seed=3)
    x = torch.randint(0, 61, (2, 10), generator=torch.Generator().manual_seed(23))
    kwargs = arm_kwargs("both")
    with torch.no_grad():
        via_heads = fused_kd_loss(*head_inputs(student, x)[:2], *head_inputs(teacher, x)[:2], x,
                                  **kwargs)
        via_logits = kd_loss(student(x).logits, teacher(x).logits, x, **kwargs)
    torch.testing.assert_close(via_heads, via_logits, rtol=1e-5, atol=0)


# ---------------------------------------------------------------- bf16 autocast


@pytest.fixture(scope="module")
def wide_batch():
    """Realistic widths and a large vocabulary, so bf16 rounding behaves as in training."""
    return random_batch(2, 24, 4096, d_s=128, d_t=256, seed=24, masked=((0, 5), (1, 9)))


def autocast_bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_bf16_autocast_makes_the_logits_as_autocast_would(wide_batch):
    """Under autocast the chunk logits are bf16 matmuls, the rest is fp32: the loss equals
    kd_loss on the logits autocast itself makes (the same bf16 values, fp32 math)."""
    kwargs = arm_kwargs("both", chunk_rows=16)
    with autocast_bf16():
        fused = fused_grads(*wide_batch, **kwargs)
    student_hidden, student_head, teacher_hidden, teacher_head, labels = wide_batch
    hidden = student_hidden.clone().requires_grad_(True)
    head = student_head.clone().requires_grad_(True)
    with autocast_bf16():
        student_logits = hidden @ head.T
        teacher_logits = teacher_hidden @ teacher_head.T
    assert student_logits.dtype == torch.bfloat16
    # Outside autocast, as distill/run/train.py calls it: kd_loss's own row dot products
    # are matmuls, which autocast would run in bf16.
    loss = kd_loss(student_logits, teacher_logits, labels, **kwargs)
    expected = (loss.detach(), *torch.autograd.grad(loss, (hidden, head)))
    # Grads come back in the inputs' dtype (fp32), the loss is fp32.
    assert [x.dtype for x in fused] == [torch.float32] * 3
    # The same bf16 logits and the same fp32 math: equal up to summation order (measured
    # 0 for the loss and the hidden-state gradient on this CPU).
    torch.testing.assert_close(fused[0], expected[0], rtol=1e-5, atol=0)
    assert relative_error(fused[1], expected[1]) < 1e-4
    # The head gradient is rounded to bf16 per chunk here (then summed in fp32), once for
    # the whole product by autograd: each rounding is <= 2**-9 relative (measured 2.2e-3).
    assert relative_error(fused[2], expected[2]) < 1e-2


def test_bf16_autocast_stays_close_to_fp32(wide_batch):
    """Tolerances from bf16's unit roundoff u = 2**-9 (8 significant bits). Each logit is
    rounded once (|ds| <= u |s|); every CE/KL term moves by at most ~2 max|ds| and the
    errors average out over positions, so the loss stays within 1e-3 relative (measured
    1.4e-4). The gradients pass through two more roundings (dloss/dlogits to bf16, the
    bf16 matmul's output): within 1e-2 in relative norm, ~2.5 u (measured 3.1e-3)."""
    kwargs = arm_kwargs("both", chunk_rows=16)
    fp32 = fused_grads(*wide_batch, **kwargs)
    with autocast_bf16():
        bf16 = fused_grads(*wide_batch, **kwargs)
    assert torch.isfinite(bf16[0])
    torch.testing.assert_close(bf16[0], fp32[0], rtol=1e-3, atol=0)
    assert relative_error(bf16[1], fp32[1]) < 1e-2
    assert relative_error(bf16[2], fp32[2]) < 1e-2
    # ... and the check can fail: bf16 is not fp32.
    assert bf16[0].item() != fp32[0].item()


def test_bf16_inputs_give_bf16_gradients(wide_batch):
    """bf16 tensors without autocast: bf16 matmuls, fp32 math, gradients back in bf16
    (the same roundings as under autocast, same tolerance; measured 3.0e-3)."""
    bf16_batch = [x.bfloat16() for x in wide_batch[:4]] + [wide_batch[4]]
    loss, grad_hidden, grad_head = fused_grads(*bf16_batch, **arm_kwargs("both", chunk_rows=16))
    assert loss.dtype == torch.float32
    assert grad_hidden.dtype == grad_head.dtype == torch.bfloat16
    _, ref_hidden, ref_head = fused_grads(*[x.float() for x in bf16_batch[:4]], wide_batch[4],
                                          **arm_kwargs("both", chunk_rows=16))
    assert relative_error(grad_hidden, ref_hidden) < 1e-2
    assert relative_error(grad_head, ref_head) < 1e-2


def test_fp16_autocast_keeps_the_small_gradient_entries():
    """With n_valid ~ 2000 positions and V = 4096, most entries of dloss/dlogits are
    ~1e-8, below fp16's smallest subnormal (6e-8): rounded as they are they would flush
    to 0 (relative gradient error 1e-2 measured). Scaled per chunk by a power of two
    first, the error stays at fp16's roundoff 2**-11 = 4.9e-4 (3.8e-4 measured)."""
    batch = random_batch(4, 512, 4096, d_s=64, d_t=96, seed=30)
    kwargs = arm_kwargs("both", chunk_rows=256)
    fp32 = fused_grads(*batch, **kwargs)
    with torch.autocast("cpu", dtype=torch.float16):
        fp16 = fused_grads(*batch, **kwargs)
    assert [x.dtype for x in fp16] == [torch.float32] * 3
    torch.testing.assert_close(fp16[0], fp32[0], rtol=1e-4, atol=0)
    assert relative_error(fp16[1], fp32[1]) < 2e-3
    assert relative_error(fp16[2], fp32[2]) < 2e-3


# ---------------------------------------------------------------- errors


def small():
    return random_batch(2, 5, 7, seed=25)


def call(student_hidden, student_head, teacher_hidden, teacher_head, labels, **overrides):
    kwargs = {**arm_kwargs("both"), **overrides}
    return fused_kd_loss(student_hidden, student_head, teacher_hidden, teacher_head, labels,
                         **kwargs)


def test_error_hidden_not_three_dimensional():
    sh, sw, th, tw, y = small()
    with pytest.raises(ValueError, match=r"hidden states must be \(B, L, d\).*\(5, 6\)"):
        call(sh[0], sw, th, tw, y)


def test_error_head_not_two_dimensional():
    sh, sw, th, tw, y = small()
    with pytest.raises(ValueError, match=r"head weights must be \(V, d\).*\(1, 7, 10\)"):
        call(sh, sw, th, tw[None], y)


def test_error_batch_or_length_mismatch():
    sh, sw, th, tw, y = small()
    with pytest.raises(ValueError, match=r"differ in \(B, L\).*\(2, 5, 6\).*\(2, 4, 10\)"):
        call(sh, sw, th[:, :4], tw, y)


@pytest.mark.parametrize("who", ["student", "teacher"])
def test_error_width_mismatch(who):
    sh, sw, th, tw, y = small()
    if who == "student":
        sw, message = sw[:, :5], r"student width mismatch: hidden d=6, head d=5"
    else:
        th, message = th[..., :9], r"teacher width mismatch: hidden d=9, head d=10"
    with pytest.raises(ValueError, match=message):
        call(sh, sw, th, tw, y)


def test_error_vocab_mismatch():
    sh, sw, th, tw, y = small()
    with pytest.raises(ValueError, match="vocabulary mismatch: student V=7, teacher V=6"):
        call(sh, sw, th, tw[:6], y)


def test_error_bias_shape():
    sh, sw, th, tw, y = small()
    with pytest.raises(ValueError, match=r"student_head_bias must be \(V,\) = \(7,\), got \(6,\)"):
        call(sh, sw, th, tw, y, student_head_bias=torch.zeros(6))


def test_error_labels_shape():
    sh, sw, th, tw, y = small()
    with pytest.raises(ValueError, match=r"labels shape \(2, 4\) does not match.*\(2, 5\)"):
        call(sh, sw, th, tw, y[:, :4])


def test_error_teacher_entropy_shape():
    sh, sw, th, tw, y = small()
    with pytest.raises(ValueError, match=r"teacher_entropy must be \(B, L - 1\) = \(2, 4\).*"
                                         r"got \(2, 5\)"):
        call(sh, sw, th, tw, y, teacher_entropy=torch.zeros(2, 5))


def test_error_not_floating_point():
    sh, sw, th, tw, y = small()
    with pytest.raises(ValueError, match="must be floating point"):
        call(sh, sw, th.long(), tw, y)


def test_error_entropy_helper_shapes():
    _, _, th, tw, _ = small()
    with pytest.raises(ValueError, match=r"hidden shape \(2, 5, 10\), head shape \(7, 9\)"):
        teacher_entropy_from_hidden(th, tw[:, :9])


@pytest.mark.parametrize("name,value,message", [
    ("alpha", 1.5, r"fused_kd_loss: alpha must be in \[0, 1\]"),
    ("temperature", 0.0, "fused_kd_loss: temperature must be > 0"),
    ("smoothing", 1.2, "fused_kd_loss: smoothing must be None or in"),
    ("weight_norm", "mean", "fused_kd_loss: weight_norm must be one of"),
    ("chunk_rows", 0, "fused_kd_loss: chunk_rows must be >= 1"),
    ("block_rows", 0, "fused_kd_loss: block_rows must be >= 1"),
])
def test_error_bad_arguments(name, value, message):
    with pytest.raises(ValueError, match=message):
        call(*small(), **{name: value})


def test_error_label_out_of_vocabulary():
    sh, sw, th, tw, y = small()
    y[1, 2] = 7
    with pytest.raises(ValueError, match=r"fused_kd_loss: labels must be in \[0, 7\)"):
        call(sh, sw, th, tw, y)


def test_error_no_valid_positions():
    sh, sw, th, tw, _ = small()
    labels = torch.full((2, 5), -100)
    labels[:, 0] = 3  # position 0 is never a target: still nothing to score
    with pytest.raises(ValueError, match=r"fused_kd_loss: no valid positions.*\(2, 5\)"):
        call(sh, sw, th, tw, labels)
