"""distill.eval.metrics against naive per-protein reference implementations (method §5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from kdsweep.distill.data.batches import unigram_log_probs
from kdsweep.distill.eval.metrics import (
    STANDARD_AA,
    UNIPROT_BACKGROUND,
    HeldOutScorer,
    aa_composition,
    aa_counts,
    aa_kl,
    bootstrap_gap,
    compression,
    count_params,
    score_heldout,
    student_ppl,
)

VOCAB = 11
# Token counts per protein: different lengths, one with a single token (no scored
# position) and one with two (one scored position).
LENGTHS = [6, 13, 1, 9, 2, 11, 7]


# ---------------------------------------------------------------------------- helpers


def make_proteins(seed: int, lengths=LENGTHS, vocab=VOCAB):
    """Unpadded token ids per protein, (n,) each, and residue counts."""
    g = torch.Generator().manual_seed(seed)
    proteins = [torch.randint(0, vocab, (n,), generator=g) for n in lengths]
    n_residues = [max(n - 2, 0) * 3 for n in lengths]  # ~3 residues per token, minus bos/eos
    return proteins, n_residues


def pad_batches(proteins, n_residues, batch_size, *, pad_id=5):
    """Right-padded batches {input_ids (B, L), attention_mask (B, L), n_residues (B,)}."""
    batches = []
    for start in range(0, len(proteins), batch_size):
        rows = proteins[start:start + batch_size]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = r
            mask[i, :len(r)] = 1
        batches.append({
            "input_ids": ids,
            "attention_mask": mask,
            "n_residues": torch.tensor(n_residues[start:start + batch_size]),
        })
    return batches


def pad_logits(per_protein, batch, seed):
    """(B, L, V) logits: each protein's (n, V) logits, random garbage on padding."""
    g = torch.Generator().manual_seed(seed)
    b, length = batch["input_ids"].shape
    out = 50 * torch.randn(b, length, per_protein[0].shape[-1], generator=g)
    for i, logits in enumerate(per_protein):
        out[i, :len(logits)] = logits
    return out


def random_logits(proteins, seed, scale=2.5, vocab=VOCAB):
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(len(p), vocab, generator=g) for p in proteins]


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def naive_metrics(proteins, n_residues, student_logits, teacher_logits):
    """Reference: one protein at a time, one position at a time, float64 numpy."""
    nll, nll_t, kl, conf, correct = [], [], [], [], []
    for ids, s, t in zip(proteins, student_logits, teacher_logits):
        ids, s, t = ids.numpy(), s.double().numpy(), t.double().numpy()
        for i in range(len(ids) - 1):  # position i predicts token i + 1
            q, p, y = softmax(s[i]), softmax(t[i]), ids[i + 1]
            nll.append(-math.log(q[y]))
            nll_t.append(-math.log(p[y]))
            kl.append(float(np.sum(p * np.log(p / q))))
            conf.append(q.max())
            correct.append(float(q.argmax() == y))
    n = len(nll)
    conf, correct = np.array(conf), np.array(correct)
    bins = np.minimum((conf * 10).astype(int), 9)
    counts = np.bincount(bins, minlength=10)
    ece = sum(
        counts[b] / n * abs(correct[bins == b].mean() - conf[bins == b].mean())
        for b in range(10) if counts[b]
    )
    return {
        "n_tokens": n,
        "nll_per_token": np.mean(nll),
        "ppl": math.exp(np.mean(nll)),
        "nll_per_residue": np.sum(nll) / sum(n_residues),
        "ppl_teacher": math.exp(np.mean(nll_t)),
        "ppl_ratio": math.exp(np.mean(nll)) / math.exp(np.mean(nll_t)),
        "kl_teacher": np.mean(kl),
        "accuracy": correct.mean(),
        "confidence": conf.mean(),
        "ece": ece,
        "bin_counts": counts.tolist(),
    }


def assert_matches_naive(result, ref):
    assert result["n_tokens"] == ref["n_tokens"]
    assert [b["count"] for b in result["ece_bins"]] == ref["bin_counts"]
    for key in ("nll_per_token", "ppl", "nll_per_residue", "ppl_teacher", "ppl_ratio",
                "kl_teacher", "accuracy", "confidence", "ece"):
        assert result[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), key


def score_logits(batches, student, teacher, **kwargs):
    scorer = HeldOutScorer(**kwargs)
    for k, batch in enumerate(batches):
        scorer.update(student[k], teacher[k], batch["input_ids"], batch["attention_mask"],
                      batch["n_residues"])
    return scorer.result()


def tiny_gpt2(seed, vocab=VOCAB, n_embd=16):
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab, n_positions=32, n_layer=1, n_head=2, n_embd=n_embd,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


# ---------------------------------------------------------------------- scorer on logits


@pytest.mark.parametrize("batch_size,chunk_elements", [(3, 2**24), (4, 3 * VOCAB)])
def test_scorer_matches_naive_per_protein(batch_size, chunk_elements):
    proteins, n_res = make_proteins(0)
    s_logits, t_logits = random_logits(proteins, 1), random_logits(proteins, 2)
    batches = pad_batches(proteins, n_res, batch_size)
    student = [pad_logits(s_logits[k:k + batch_size], b, 3)
               for k, b in zip(range(0, len(proteins), batch_size), batches)]
    teacher = [pad_logits(t_logits[k:k + batch_size], b, 4)
               for k, b in zip(range(0, len(proteins), batch_size), batches)]

    result = score_logits(batches, student, teacher, chunk_elements=chunk_elements)

    ref = naive_metrics(proteins, n_res, s_logits, t_logits)
    assert_matches_naive(result, ref)
    assert result["n_sequences"] == len(proteins)
    assert result["n_residues"] == sum(n_res)
    assert 0 < result["accuracy"] < 1
    assert result["accuracy_is_zero"] is False
    # Teacher calibration is the same computation with the roles swapped.
    swapped = naive_metrics(proteins, n_res, t_logits, s_logits)
    assert result["ece_teacher"] == pytest.approx(swapped["ece"], rel=1e-5)
    assert result["accuracy_teacher"] == pytest.approx(swapped["accuracy"])
    assert [b["count"] for b in result["ece_bins_teacher"]] == swapped["bin_counts"]


def test_unigram_floor_on_the_same_scored_tokens():
    """The floor is the NLL of train token frequencies (add-1/2 smoothed) on exactly the positions the
    student is scored on; the gap is the student's NLL minus it, per token; the flag fires when the
    student is not measurably below it."""
    proteins, n_res = make_proteins(0)
    train = torch.tensor([1, 1, 1, 2, 2, 3, 4, 4, 4, 4])
    uni = unigram_log_probs(train, VOCAB)
    counts = np.bincount(train.numpy(), minlength=VOCAB) + 0.5
    assert uni.numpy() == pytest.approx(np.log(counts / counts.sum()))
    s_logits, t_logits = random_logits(proteins, 1), random_logits(proteins, 2)
    batches = pad_batches(proteins, n_res, 3)
    student = [pad_logits(s_logits[i:i + 3], b, 10 + i) for i, b in zip(range(0, 7, 3), batches)]
    teacher = [pad_logits(t_logits[i:i + 3], b, 20 + i) for i, b in zip(range(0, 7, 3), batches)]
    out = score_logits(batches, student, teacher, unigram=uni)
    scored = [int(t) for p in proteins for t in p[1:]]
    want = -np.mean([uni[t].item() for t in scored])
    assert out["unigram_nll_per_token"] == pytest.approx(want) and out["unigram_ppl"] == pytest.approx(math.exp(want))
    assert out["unigram_gap"] == pytest.approx(out["nll_per_token"] - want)
    assert out["unigram_ppl_ratio"] == pytest.approx(math.exp(want) / out["ppl_teacher"])
    # random logits with scale 2.5 are far worse than frequencies: at (above) the floor, flagged
    assert out["unigram_gap"] > 0 and out["at_unigram_floor"]
    assert out["unigram_gap_ci95_low"] <= out["unigram_gap"] <= out["unigram_gap_ci95_high"]
    # a student that predicts every next token near-perfectly is far below the floor: not flagged
    sharp = [pad_logits([torch.nn.functional.one_hot(torch.cat([p[1:], p[:1]]), VOCAB).float() * 30 for p in
                         proteins[i:i + 3]], b, 30 + i) for i, b in zip(range(0, 7, 3), batches)]
    good = score_logits(batches, sharp, sharp, unigram=uni)
    assert good["unigram_gap"] < 0 and not good["at_unigram_floor"]
    assert good["unigram_gain_recovered"] == pytest.approx(1.0)  # as good as its teacher
    assert math.isnan(out["unigram_gain_recovered"])  # that teacher is no better than composition: no gain


def test_bootstrap_gap_is_count_weighted_with_a_ci():
    out = bootstrap_gap(np.array([10.0, 30.0, 5.0]) - np.array([12.0, 29.0, 8.0]), np.array([5.0, 10.0, 5.0]))
    assert out["gap"] == pytest.approx((-2 + 1 - 3) / 20)
    assert out["ci95_low"] <= out["gap"] <= out["ci95_high"] and out["ci95_low"] < out["ci95_high"]
    assert out["share_of_proteins_better"] == pytest.approx(2 / 3)
    # the same gap per position in every protein: no spread to resample
    flat = bootstrap_gap(np.array([-1.0, -2.0]), np.array([10.0, 20.0]))
    assert flat["ci95_low"] == pytest.approx(-0.1) and flat["ci95_high"] == pytest.approx(-0.1)


def test_ppl_counts_L_minus_1_positions():
    # One protein, 4 tokens -> 3 scored positions. Position 0 gives the next token
    # probability 1/2, positions 1 and 2 are uniform over V = 4 (probability 1/4);
    # position 3 predicts past the end and holds garbage that must not count.
    ids = torch.tensor([[0, 1, 2, 0]])
    logits = torch.tensor([[[0.0, math.log(3.0), 0.0, 0.0],
                            [0.0, 0.0, 0.0, 0.0],
                            [0.0, 0.0, 0.0, 0.0],
                            [50.0, -50.0, 7.0, 0.0]]])
    scorer = HeldOutScorer()
    scorer.update(logits, logits.clone(), ids, torch.ones_like(ids), torch.tensor([2]))
    result = scorer.result()

    nll_sum = math.log(2) + 2 * math.log(4)  # = 5 log 2
    assert result["n_tokens"] == 3
    assert result["nll_per_token"] == pytest.approx(nll_sum / 3)
    assert result["ppl"] == pytest.approx(2 ** (5 / 3))
    assert result["nll_per_residue"] == pytest.approx(nll_sum / 2)
    assert result["ppl_ratio"] == pytest.approx(1.0)
    assert result["kl_teacher"] == pytest.approx(0.0, abs=1e-7)


def test_padding_changes_nothing():
    proteins, n_res = make_proteins(5)
    s_logits, t_logits = random_logits(proteins, 6), random_logits(proteins, 7)
    batches = pad_batches(proteins, n_res, len(proteins))
    student = [pad_logits(s_logits, batches[0], 8)]
    teacher = [pad_logits(t_logits, batches[0], 9)]
    base = score_logits(batches, student, teacher)

    # Change every padded id and every unscored logit row: the padded positions and the
    # last real position of each protein (it predicts a padded token).
    g = torch.Generator().manual_seed(10)
    mask = batches[0]["attention_mask"]
    unscored = torch.ones_like(mask, dtype=torch.bool)
    unscored[:, :-1] = mask[:, 1:] == 0
    ids = batches[0]["input_ids"].clone()
    ids[mask == 0] = torch.randint(0, VOCAB, (int((mask == 0).sum()),), generator=g)
    s2, t2 = student[0].clone(), teacher[0].clone()
    s2[unscored] = 100 * torch.randn(int(unscored.sum()), VOCAB, generator=g)
    t2[unscored] = 100 * torch.randn(int(unscored.sum()), VOCAB, generator=g)
    changed = score_logits([{**batches[0], "input_ids": ids}], [s2], [t2])
    assert changed == base

    # Same proteins one per batch, no padding at all.
    singles = pad_batches(proteins, n_res, 1)
    unpadded = score_logits(singles, [s[None] for s in s_logits], [t[None] for t in t_logits])
    for key in ("ppl", "nll_per_residue", "ppl_ratio", "kl_teacher", "ece", "accuracy"):
        assert unpadded[key] == pytest.approx(base[key], rel=1e-6), key


# --------------------------------------------------------------------------------- ECE


def test_ece_bin_edges_and_counts():
    # V = 4. Confidence 0.25 (uniform) -> bin [0.2, 0.3); exactly 0.5 -> bin [0.5, 0.6);
    # exactly 1.0 (fp32 saturates) -> last bin.
    ids = torch.tensor([[1, 2, 3, 1, 2, 0]])  # 5 scored positions
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0],          # conf 0.25, next 2
                            [0.0, 0.0, -100.0, -100.0],    # conf 0.5, argmax 0, next 3
                            [0.0, 100.0, 0.0, 0.0],        # conf 1.0, argmax 1, next 1: right
                            [0.0, 0.0, 100.0, 0.0],        # conf 1.0, argmax 2, next 2: right
                            [0.0, 0.0, 0.0, 100.0],        # conf 1.0, argmax 3, next 0: wrong
                            [0.0, 0.0, 0.0, 0.0]]])        # unscored
    scorer = HeldOutScorer(with_teacher=False)
    scorer.update(logits, None, ids, torch.ones_like(ids), torch.tensor([4]))
    result = scorer.result()

    bins = result["ece_bins"]
    assert len(bins) == 10
    assert [b["count"] for b in bins] == [0, 0, 1, 0, 0, 1, 0, 0, 0, 3]
    assert sum(b["count"] for b in bins) == result["n_tokens"] == 5
    assert bins[9]["lo"] == pytest.approx(0.9) and bins[9]["hi"] == pytest.approx(1.0)
    assert bins[9]["accuracy"] == pytest.approx(2 / 3)
    assert bins[9]["confidence"] == pytest.approx(1.0)
    assert bins[0]["accuracy"] is None
    expected_ece = (1 / 5) * 0.25 + (1 / 5) * 0.5 + (3 / 5) * (1 / 3)
    assert result["ece"] == pytest.approx(expected_ece)
    assert result["accuracy"] == pytest.approx(2 / 5)
    assert result["confidence"] == pytest.approx((0.25 + 0.5 + 3.0) / 5)
    assert "kl_teacher" not in result


def test_accuracy_zero_is_flagged_and_ece_equals_confidence():
    proteins, n_res = make_proteins(11)
    proteins = [1 + p % (VOCAB - 1) for p in proteins]  # token 0 never is a target
    batches = pad_batches(proteins, n_res, 4)
    g = torch.Generator().manual_seed(12)
    student = []
    for batch in batches:
        logits = torch.randn(*batch["input_ids"].shape, VOCAB, generator=g)
        logits[..., 0] += 8.0  # argmax is always token 0
        student.append(logits)

    scorer = HeldOutScorer(with_teacher=False)
    for batch, logits in zip(batches, student):
        scorer.update(logits, None, batch["input_ids"], batch["attention_mask"],
                      batch["n_residues"])
    result = scorer.result()

    assert result["accuracy"] == 0.0
    assert result["accuracy_is_zero"] is True
    assert result["ece"] == pytest.approx(result["confidence"])
    assert sum(b["count"] for b in result["ece_bins"]) == result["n_tokens"]


def test_scorer_rejects_bad_input():
    ids = torch.tensor([[0, 1, 2]])
    logits = torch.zeros(1, 3, VOCAB)
    with pytest.raises(ValueError, match="right-padded"):
        HeldOutScorer().update(logits, logits, ids, torch.tensor([[0, 1, 1]]), torch.tensor([1]))
    with pytest.raises(ValueError, match="teacher logits"):
        HeldOutScorer().update(logits, torch.zeros(1, 3, VOCAB + 1), ids, torch.ones_like(ids),
                               torch.tensor([1]))
    with pytest.raises(ValueError, match="with_teacher"):
        HeldOutScorer().update(logits, None, ids, torch.ones_like(ids), torch.tensor([1]))
    scorer = HeldOutScorer()
    scorer.update(logits[:, :1], logits[:, :1], ids[:, :1], torch.ones_like(ids[:, :1]),
                  torch.tensor([0]))
    with pytest.raises(ValueError, match="no scored positions"):
        scorer.result()


# ------------------------------------------------------------------------ model drivers


def test_score_heldout_matches_unpadded_model_runs():
    proteins, n_res = make_proteins(20)
    student, teacher = tiny_gpt2(21), tiny_gpt2(22, n_embd=32).eval()
    student.train()  # the driver must switch dropout off and then restore train mode
    batches = pad_batches(proteins, n_res, 3)

    def teacher_logits_fn(input_ids, attention_mask, _proteins):
        return teacher(input_ids=input_ids, attention_mask=attention_mask).logits

    result = score_heldout(student, teacher_logits_fn, batches, device="cpu")
    assert student.training

    with torch.no_grad():
        student.eval()
        s_logits = [student(input_ids=p[None]).logits[0] for p in proteins]
        t_logits = [teacher(input_ids=p[None]).logits[0] for p in proteins]
    assert_matches_naive(result, naive_metrics(proteins, n_res, s_logits, t_logits))

    fast = student_ppl(student, batches, device="cpu")
    assert set(fast) == {"ppl", "nll_per_token", "nll_per_residue", "ece", "accuracy", "confidence", "n_tokens",
                         "n_residues", "n_sequences"}
    assert fast["n_tokens"] == sum(len(p) - 1 for p in proteins)
    for key in ("ppl", "nll_per_token", "nll_per_residue", "ece", "accuracy", "confidence"):
        assert fast[key] == pytest.approx(result[key], rel=1e-6), key


# ------------------------------------------------------------------- size, composition


def test_count_params_counts_tied_weights_once_and_compression():
    vocab, positions, n_embd, n_layer = 27, 32, 16, 2
    config = GPT2Config(vocab_size=vocab, n_positions=positions, n_layer=n_layer, n_head=2,
                        n_embd=n_embd)
    model = GPT2LMHeadModel(config)
    assert model.lm_head.weight is model.transformer.wte.weight
    # wte + wpe + per layer (2 layer norms, qkv, attn proj, 2 MLP linears) + final norm;
    # this formula gives 774,030,080 for ProtGPT2.
    expected = (vocab * n_embd + positions * n_embd
                + n_layer * (12 * n_embd**2 + 13 * n_embd) + 2 * n_embd)
    assert count_params(model) == expected
    assert compression(774_030_080, 16_290_000) == pytest.approx(47.5, rel=1e-3)
    assert compression(2 * expected, count_params(model)) == 2.0


def test_uniprot_background():
    assert UNIPROT_BACKGROUND.shape == (20,)
    assert STANDARD_AA == "ACDEFGHIKLMNPQRSTVWY"
    assert UNIPROT_BACKGROUND.sum() == pytest.approx(1.0, abs=1e-12)
    assert UNIPROT_BACKGROUND[STANDARD_AA.index("A")] == pytest.approx(8.25 / 99.89)
    assert UNIPROT_BACKGROUND[STANDARD_AA.index("W")] == pytest.approx(1.08 / 99.89)


def test_aa_composition_hand_example():
    # X, B and newline are ignored; lower case counts as its residue.
    comp = aa_composition(["AAC", "XB\n", "a", "W"])
    expected = np.zeros(20)
    expected[STANDARD_AA.index("A")] = 3 / 5
    expected[STANDARD_AA.index("C")] = 1 / 5
    expected[STANDARD_AA.index("W")] = 1 / 5
    np.testing.assert_allclose(comp, expected)
    assert aa_counts(["XXBZ"]).sum() == 0
    with pytest.raises(ValueError):
        aa_composition(["XXBZ", ""])


def test_aa_kl_hand_examples():
    assert aa_kl(UNIPROT_BACKGROUND, UNIPROT_BACKGROUND) == 0.0
    p = np.zeros(20)
    p[:2] = 0.5  # 0 · log 0 = 0 on the other 18 letters
    uniform = np.full(20, 1 / 20)
    assert aa_kl(p, uniform) == pytest.approx(math.log(10))
    assert aa_kl(uniform, UNIPROT_BACKGROUND) > 0
    assert aa_kl(uniform, p) == math.inf
