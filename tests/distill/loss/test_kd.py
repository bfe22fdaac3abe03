"""Tests of distill/loss/kd.py against the naive, unchunked reference (distill/loss/reference.py)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from kdsweep.distill.loss.kd import (
    KDTerms,
    calibration_epsilon,
    kd_loss,
    kd_loss_terms,
    shift_for_next_token,
    smooth_targets,
    teacher_entropy,
    uncertainty_weights,
)
from kdsweep.distill.loss.reference import ARMS, reference_kd_loss

PROTGPT2_VOCAB = 50_257
WEIGHT_NORMS = ("mask", "weight")


def random_batch(batch, length, vocab, *, seed, dtype=torch.float32, masked=((0, 3), (1, 1))):
    """Student/teacher logits with a realistic spread, labels with some -100 (after the shift)."""
    gen = torch.Generator().manual_seed(seed)
    student = 2.0 * torch.randn(batch, length, vocab, generator=gen, dtype=dtype)
    teacher = 3.0 * torch.randn(batch, length, vocab, generator=gen, dtype=dtype)
    labels = torch.randint(0, vocab, (batch, length), generator=gen)
    labels[:, 0] = -100  # never predicted anyway
    for b, i in masked:
        labels[b, i] = -100
    return student, teacher, labels


def loss_and_grad(fn, student, *args, **kwargs):
    student = student.detach().clone().requires_grad_(True)
    loss = fn(student, *args, **kwargs)
    (grad,) = torch.autograd.grad(loss, student)
    return loss.detach(), grad


def arm_kwargs(arm, **overrides):
    uncertainty, smoothing = ARMS[arm]
    kwargs = dict(temperature=2.0, alpha=0.4, uncertainty=uncertainty, smoothing=smoothing)
    kwargs.update(overrides)
    return kwargs


# ---------------------------------------------------------------- helpers


def test_shift_for_next_token_pairs_position_i_with_label_i_plus_1():
    logits = torch.arange(2 * 4 * 3.0).reshape(2, 4, 3)
    labels = torch.tensor([[9, 1, 2, 3], [9, 5, 6, 7]])
    shifted_logits, shifted_labels = shift_for_next_token(logits, labels)
    assert shifted_logits.shape == (2, 3, 3) and shifted_labels.shape == (2, 3)
    assert torch.equal(shifted_logits, logits[:, :3])
    assert shifted_labels.tolist() == [[1, 2, 3], [5, 6, 7]]
    assert shifted_logits.data_ptr() == logits.data_ptr()  # a view, not a copy


def test_uncertainty_weights_hand_computed():
    entropy = torch.tensor([[1.0, 2.0, 3.0, 100.0, -50.0],
                            [5.0, 5.0, 5.0, 0.0, 5.0]])
    mask = torch.tensor([[True, True, True, False, False],
                         [True, True, True, False, True]])
    weights = uncertainty_weights(entropy, mask)
    # Row 0: min/max over valid positions only (1 and 3), masked positions get 0.
    assert weights[0].tolist() == [0.5, 0.75, 1.0, 0.0, 0.0]
    # Row 1: constant entropy over valid positions -> 0.5 (the masked 0.0 is ignored).
    assert weights[1].tolist() == [0.5, 0.5, 0.5, 0.0, 0.5]


def test_uncertainty_weights_range_and_extremes_on_random_entropies():
    gen = torch.Generator().manual_seed(1)
    entropy = 5 * torch.rand(4, 30, generator=gen)
    mask = torch.rand(4, 30, generator=gen) > 0.3
    weights = uncertainty_weights(entropy, mask)
    for b in range(4):
        valid = weights[b][mask[b]]
        assert valid.min() >= 0.5 and valid.max() <= 1.0
        assert weights[b][mask[b]][entropy[b][mask[b]].argmin()] == 0.5
        assert weights[b][mask[b]][entropy[b][mask[b]].argmax()] == 1.0
        assert torch.all(weights[b][~mask[b]] == 0)


def test_uncertainty_weights_tiny_spread_counts_as_constant():
    entropy = torch.tensor([[1.0, 1.0 + 5e-9, 1.0]], dtype=torch.float64)
    weights = uncertainty_weights(entropy, torch.ones(1, 3, dtype=torch.bool))
    assert weights.tolist() == [[0.5, 0.5, 0.5]]


def test_uncertainty_weights_shape_mismatch():
    with pytest.raises(ValueError, match="entropy shape"):
        uncertainty_weights(torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.bool))


def test_calibration_epsilon_values():
    eps = calibration_epsilon(torch.tensor([1.0, 0.2, 0.5]), 0.1)
    torch.testing.assert_close(eps, torch.tensor([0.0, 0.08, 0.05]))


@pytest.mark.parametrize("smoothing", [0.0, 0.05, 0.5, 1.0])
def test_smoothed_targets_stay_a_distribution(smoothing):
    gen = torch.Generator().manual_seed(2)
    probs = torch.softmax(4 * torch.randn(3, 5, 7, generator=gen, dtype=torch.float64), dim=-1)
    probs[0, 0] = F.one_hot(torch.tensor(2), 7)  # a one-hot teacher: eps = 0
    smoothed = smooth_targets(probs, smoothing)
    assert smoothed.shape == probs.shape
    assert torch.all(smoothed >= 0)
    torch.testing.assert_close(smoothed.sum(-1), torch.ones(3, 5, dtype=torch.float64))
    torch.testing.assert_close(smoothed[0, 0], probs[0, 0])  # nothing to smooth
    eps = smoothing * (1 - probs.amax(-1, keepdim=True))
    torch.testing.assert_close(smoothed, (1 - eps) * probs + eps / 7)
    if smoothing > 0:  # smoothing lowers the peak of every non-one-hot row
        assert torch.all(smoothed.amax(-1)[1:] < probs.amax(-1)[1:])


def test_teacher_entropy_matches_direct_formula_in_chunks():
    _, teacher, _ = random_batch(3, 9, 13, seed=3)
    entropy = teacher_entropy(teacher, chunk_rows=4)
    p = torch.softmax(teacher.double(), -1)
    torch.testing.assert_close(entropy.double(), -(p * p.log()).sum(-1), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- the loss


@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.5), (2.0, 0.1), (4.0, 0.9)])
def test_plain_hinton_kd_when_enhancements_off(temperature, alpha):
    student, teacher, labels = random_batch(2, 7, 11, seed=4)
    loss = kd_loss(student, teacher, labels, temperature=temperature, alpha=alpha,
                   uncertainty=False, smoothing=None, chunk_rows=3)
    s, t, y = student[:, :-1], teacher[:, :-1], labels[:, 1:]
    valid = y != -100
    hard = F.cross_entropy(s.reshape(-1, 11), y.reshape(-1), ignore_index=-100)
    kl = F.kl_div(F.log_softmax(s[valid] / temperature, -1),
                  F.log_softmax(t[valid] / temperature, -1), log_target=True, reduction="batchmean")
    expected = alpha * hard + (1 - alpha) * temperature**2 * kl
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("uncertainty", [False, True])
def test_zero_when_student_equals_teacher(uncertainty):
    _, teacher, labels = random_batch(2, 8, 17, seed=5)
    student = teacher.clone().requires_grad_(True)
    loss = kd_loss(student, teacher, labels, temperature=3.0, alpha=0.0,
                   uncertainty=uncertainty, smoothing=None)
    loss.backward()
    assert abs(loss.item()) < 1e-6
    assert student.grad.abs().max() < 1e-6


def test_smoothing_makes_the_identical_student_pay():
    """Sanity check of the arm: p_bar != p, so the teacher itself no longer scores 0."""
    _, teacher, labels = random_batch(2, 8, 17, seed=5)
    loss = kd_loss(teacher, teacher, labels, temperature=1.0, alpha=0.0,
                   uncertainty=False, smoothing=0.2)
    assert loss.item() > 1e-4


@pytest.mark.parametrize("arm", ["both", "baseline"])
def test_masked_positions_are_ignored(arm):
    student, teacher, labels = random_batch(2, 9, 13, seed=6, masked=((0, 3), (0, 4), (1, 6)))
    ignored = torch.zeros(2, 9, dtype=torch.bool)  # positions whose shifted label is -100
    ignored[:, :-1] = labels[:, 1:] == -100
    ignored[:, -1] = True  # the last position predicts nothing
    assert ignored.sum() == 5

    gen = torch.Generator().manual_seed(7)
    student2, teacher2 = student.clone(), teacher.clone()
    noise = torch.randn(int(ignored.sum()), 13, generator=gen)
    student2[ignored] = 50 * noise
    # Very peaked / flat teachers would become the entropy min / max if masking leaked.
    teacher2[ignored] = 200 * noise
    teacher2[1, 5] = 0.0  # flat: maximal entropy, at an ignored position
    assert ignored[1, 5]

    kwargs = arm_kwargs(arm, weight_norm="weight", chunk_rows=4)
    loss1, grad1 = loss_and_grad(kd_loss, student, teacher, labels, **kwargs)
    loss2, grad2 = loss_and_grad(kd_loss, student2, teacher2, labels, **kwargs)
    torch.testing.assert_close(loss1, loss2, rtol=0, atol=0)
    torch.testing.assert_close(grad1[~ignored], grad2[~ignored], rtol=0, atol=0)
    assert torch.all(grad1[ignored] == 0) and torch.all(grad2[ignored] == 0)
    assert grad1[~ignored].abs().sum() > 0


def test_masked_positions_may_hold_non_finite_logits():
    student, teacher, labels = random_batch(2, 6, 9, seed=8)
    loss1, grad1 = loss_and_grad(kd_loss, student, teacher, labels, **arm_kwargs("both"))
    student[0, 2], teacher[0, 2] = float("inf"), float("nan")  # labels[0, 3] == -100
    loss2, grad2 = loss_and_grad(kd_loss, student, teacher, labels, **arm_kwargs("both"))
    assert torch.isfinite(loss2) and torch.isfinite(grad2).all()
    torch.testing.assert_close(loss1, loss2, rtol=0, atol=0)


@pytest.mark.parametrize("arm", list(ARMS))
@pytest.mark.parametrize("weight_norm", WEIGHT_NORMS)
@pytest.mark.parametrize("chunk_rows", [1, 5, 20, None])
def test_matches_reference_small_vocab(arm, weight_norm, chunk_rows):
    # B=3, L'=7: chunk_rows 1 and 5 cut sequences, 20 groups two whole sequences.
    student, teacher, labels = random_batch(3, 8, 23, seed=9)
    kwargs = arm_kwargs(arm, weight_norm=weight_norm)
    loss, grad = loss_and_grad(kd_loss, student, teacher, labels, chunk_rows=chunk_rows, **kwargs)
    ref_loss, ref_grad = loss_and_grad(reference_kd_loss, student.double(), teacher.double(),
                                       labels, **kwargs)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4,
                               atol=1e-5 * ref_grad.abs().max().item())


@pytest.fixture(scope="module")
def protgpt2_sized_batch():
    return random_batch(2, 16, PROTGPT2_VOCAB, seed=10, masked=((0, 5), (1, 9), (1, 10)))


@pytest.mark.parametrize("arm", list(ARMS))
@pytest.mark.parametrize("weight_norm", WEIGHT_NORMS)
def test_matches_reference_full_vocab(protgpt2_sized_batch, arm, weight_norm):
    student, teacher, labels = protgpt2_sized_batch
    kwargs = arm_kwargs(arm, weight_norm=weight_norm, temperature=1.5, alpha=0.3)
    # chunk_rows=6 on (2, 15) positions: 6 chunks, two of them ragged.
    loss, grad = loss_and_grad(kd_loss, student, teacher, labels, chunk_rows=6, **kwargs)
    ref_loss, ref_grad = loss_and_grad(reference_kd_loss, student.double(), teacher.double(),
                                       labels, **kwargs)
    assert loss.dtype == torch.float32 and grad.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-4, atol=1e-6)
    # Per-element gradients are ~1e-6 here; an absolute tolerance relative to
    # their scale keeps the check meaningful.
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4,
                               atol=1e-4 * ref_grad.abs().max().item())


def test_terms_are_consistent():
    student, teacher, labels = random_batch(2, 10, 19, seed=11)
    common = dict(temperature=2.5, alpha=0.25, uncertainty=True, smoothing=0.05, chunk_rows=7)
    by_mask = kd_loss_terms(student, teacher, labels, weight_norm="mask", **common)
    by_weight = kd_loss_terms(student, teacher, labels, weight_norm="weight", **common)
    assert isinstance(by_mask, KDTerms)
    for terms in (by_mask, by_weight):
        torch.testing.assert_close(terms.loss, 0.25 * terms.hard + 0.75 * 2.5**2 * terms.soft)
        assert not terms.hard.requires_grad and not terms.soft.requires_grad
    assert 0.5 < by_mask.mean_weight.item() < 1.0
    torch.testing.assert_close(by_mask.hard, by_weight.hard)
    # "mask" divides by sum(m), "weight" by sum(m * w) = sum(m) * mean weight.
    torch.testing.assert_close(by_weight.soft, by_mask.soft / by_mask.mean_weight)
    without = kd_loss_terms(student, teacher, labels, **{**common, "uncertainty": False})
    assert without.mean_weight.item() == 1.0


def test_kd_loss_is_kd_loss_terms_loss():
    student, teacher, labels = random_batch(2, 5, 7, seed=12)
    kwargs = arm_kwargs("both")
    assert torch.equal(kd_loss(student, teacher, labels, **kwargs),
                       kd_loss_terms(student, teacher, labels, **kwargs).loss)


def test_scaled_and_repeated_backward():
    """Upstream gradients other than 1 scale the stored gradient; retain_graph reuse is safe."""
    student, teacher, labels = random_batch(2, 6, 9, seed=13)
    _, grad = loss_and_grad(kd_loss, student, teacher, labels, **arm_kwargs("both"))

    leaf = student.clone().requires_grad_(True)
    loss = kd_loss(leaf, teacher, labels, **arm_kwargs("both"))
    (3.0 * loss).backward(retain_graph=True)
    torch.testing.assert_close(leaf.grad, 3 * grad)
    loss.backward(retain_graph=True)
    loss.backward()
    torch.testing.assert_close(leaf.grad, 5 * grad)


def test_gradient_flows_through_a_non_leaf_student():
    student, teacher, labels = random_batch(2, 6, 9, seed=14)
    scale = torch.tensor(1.5, requires_grad=True)
    kd_loss(scale * student, teacher, labels, **arm_kwargs("calibration")).backward()
    ref_scale = scale.detach().double().requires_grad_(True)
    reference_kd_loss(ref_scale * student.double(), teacher.double(), labels,
                      weight_norm="mask", **arm_kwargs("calibration")).backward()
    torch.testing.assert_close(scale.grad.double(), ref_scale.grad, rtol=1e-5, atol=1e-7)


def test_no_grad_evaluation_gives_the_same_value():
    student, teacher, labels = random_batch(2, 6, 9, seed=15)
    kwargs = arm_kwargs("both", chunk_rows=4)
    with_grad = kd_loss(student.clone().requires_grad_(True), teacher, labels, **kwargs)
    with torch.no_grad():
        without = kd_loss(student.clone().requires_grad_(True), teacher, labels, **kwargs)
    assert without.grad_fn is None
    torch.testing.assert_close(without, with_grad.detach(), rtol=0, atol=0)


def test_teacher_gets_no_gradient():
    student, teacher, labels = random_batch(2, 6, 9, seed=16)
    teacher.requires_grad_(True)
    student.requires_grad_(True)
    kd_loss(student, teacher, labels, **arm_kwargs("both")).backward()
    assert teacher.grad is None and student.grad is not None


def test_bf16_student_logits(protgpt2_sized_batch):
    student, teacher, labels = protgpt2_sized_batch
    kwargs = arm_kwargs("both", chunk_rows=8)
    loss32, grad32 = loss_and_grad(kd_loss, student.bfloat16().float(), teacher, labels, **kwargs)
    loss16, grad16 = loss_and_grad(kd_loss, student.bfloat16(), teacher, labels, **kwargs)
    assert loss16.dtype == torch.float32 and grad16.dtype == torch.bfloat16
    assert torch.isfinite(loss16)
    # Same bf16-representable inputs: the fp32 math agrees; only the stored gradient is rounded.
    torch.testing.assert_close(loss16, loss32, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad16.float(), grad32, rtol=1e-2,
                               atol=1e-3 * grad32.abs().max().item())
    # Against the unrounded fp32 logits the loss moves only by bf16 input rounding.
    loss_unrounded = kd_loss(student, teacher, labels, **kwargs)
    torch.testing.assert_close(loss16, loss_unrounded, rtol=1e-3, atol=0)


@pytest.mark.parametrize("weight_norm", WEIGHT_NORMS)
@pytest.mark.parametrize("arm", ["both", "baseline"])
def test_gradcheck_float64(arm, weight_norm):
    student, teacher, labels = random_batch(2, 5, 7, seed=17, dtype=torch.float64,
                                            masked=((0, 2),))
    student.requires_grad_(True)
    kwargs = arm_kwargs(arm, weight_norm=weight_norm, chunk_rows=3)
    assert kd_loss(student, teacher, labels, **kwargs).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda s: kd_loss(s, teacher, labels, **kwargs), (student,))


# ---------------------------------------------------------------- errors


def test_error_student_teacher_shape_mismatch():
    student, teacher, labels = random_batch(2, 5, 7, seed=18)
    with pytest.raises(ValueError, match=r"\(2, 4, 7\).*\(2, 5, 7\)"):
        kd_loss(student, teacher[:, :4], labels, **arm_kwargs("baseline"))


def test_error_vocab_mismatch():
    student, teacher, labels = random_batch(2, 5, 7, seed=18)
    with pytest.raises(ValueError, match="vocabulary mismatch: student V=7, teacher V=6"):
        kd_loss(student, teacher[..., :6], labels, **arm_kwargs("baseline"))


def test_error_labels_shape_mismatch():
    student, teacher, labels = random_batch(2, 5, 7, seed=18)
    with pytest.raises(ValueError, match=r"labels shape \(2, 4\)"):
        kd_loss(student, teacher, labels[:, :4], **arm_kwargs("baseline"))


def test_error_not_three_dimensional():
    student, teacher, labels = random_batch(2, 5, 7, seed=18)
    with pytest.raises(ValueError, match=r"\(B, L, V\)"):
        kd_loss(student[0], teacher[0], labels[0], **arm_kwargs("baseline"))


def test_error_label_out_of_vocabulary():
    student, teacher, labels = random_batch(2, 5, 7, seed=18)
    labels[1, 2] = 7
    with pytest.raises(ValueError, match=r"labels must be in \[0, 7\)"):
        kd_loss(student, teacher, labels, **arm_kwargs("baseline"))


@pytest.mark.parametrize("name,value,message", [
    ("alpha", -0.1, r"alpha must be in \[0, 1\]"),
    ("alpha", 1.5, r"alpha must be in \[0, 1\]"),
    ("temperature", 0.0, "temperature must be > 0"),
    ("temperature", -1.0, "temperature must be > 0"),
    ("smoothing", 1.2, "smoothing must be None or in"),
    ("smoothing", -0.01, "smoothing must be None or in"),
    ("weight_norm", "mean", "weight_norm must be one of"),
    ("chunk_rows", 0, "chunk_rows must be >= 1"),
])
def test_error_bad_arguments(name, value, message):
    student, teacher, labels = random_batch(2, 5, 7, seed=18)
    kwargs = {**arm_kwargs("both"), name: value}
    with pytest.raises(ValueError, match=message):
        kd_loss(student, teacher, labels, **kwargs)


@pytest.mark.parametrize("length", [1, 5])
def test_error_no_valid_positions(length):
    student, teacher, _ = random_batch(2, length, 7, seed=18, masked=())
    labels = torch.full((2, length), -100)
    labels[:, 0] = 3  # position 0 is never a target: still nothing to score
    with pytest.raises(ValueError, match="no valid positions"):
        kd_loss(student, teacher, labels, **arm_kwargs("both"))


def test_boundary_arguments_are_accepted():
    student, teacher, labels = random_batch(2, 5, 7, seed=18)
    for alpha, smoothing in itertools.product((0.0, 1.0), (0.0, 1.0)):
        loss = kd_loss(student, teacher, labels, temperature=1.0, alpha=alpha,
                       uncertainty=True, smoothing=smoothing)
        assert torch.isfinite(loss)
