"""distill.eval.generation with a tiny random GPT-2 and a character-level tokenizer."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from kdsweep.distill.eval.generation import (RepetitionPenaltyExceptEnd, aa_kl_natural, draw_samples, expected_aa_kl_bias,
                                generation_throughput, natural_resampling_floor, sample_proteins)
from kdsweep.distill.eval.metrics import STANDARD_AA, UNIPROT_BACKGROUND, aa_kl

LETTERS = "ACDEFGHIKLMNPQRSTVWYBXZUO"
HELDOUT = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQ",
           "MSLFDKLGGWDNILEAVKPRHCEW"]


@pytest.fixture(scope="module")
def tokenizer():
    # ProtGPT2-like: <|endoftext|> = 0 is bos/eos/unk, "\n" separates 60-residue lines.
    vocab = {"<|endoftext|>": 0, "\n": 1, **{c: i + 2 for i, c in enumerate(LETTERS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", unk_token="<|endoftext|>")


def tiny_gpt2(seed=0):
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=2 + len(LETTERS), n_positions=64, n_layer=1, n_head=2,
                        n_embd=16, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


def test_sample_proteins_reproducible_letters_only(tokenizer):
    model = tiny_gpt2()
    model.train()  # sampling must switch dropout off and then restore train mode
    kwargs = dict(num_sequences=6, max_new_tokens=30, device="cpu", batch_size=4)

    torch.manual_seed(123)
    expected_next_random = torch.rand(3)
    torch.manual_seed(123)
    first = sample_proteins(model, tokenizer, seed=7, **kwargs)
    # The caller's RNG stream is untouched by the seeded sampling.
    assert torch.equal(torch.rand(3), expected_next_random)
    assert model.training

    assert sample_proteins(model, tokenizer, seed=7, **kwargs) == first
    model.eval()  # dropout was off during sampling, so eval mode changes nothing
    assert sample_proteins(model, tokenizer, seed=7, **kwargs) == first
    assert sample_proteins(model, tokenizer, seed=8, **kwargs) != first
    assert len(first) == 6
    assert all(re.fullmatch(r"[A-Z]*", p) for p in first)
    # One character-level token per residue, cut at eos: never longer than the budget.
    assert all(len(p) <= 30 for p in first)
    assert sum(len(p) for p in first) > 0


def constant_output_model(row_weights: dict[int, float]):
    """A GPT-2 whose logits are the same at every step: the final layer norm outputs a
    constant vector (its bias, all ones), so token t's logit is 16 · row_weights[t]."""
    model = tiny_gpt2()
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.transformer.wte.weight.zero_()
        for token, weight in row_weights.items():
            model.transformer.wte.weight[token] = weight
    return model


def test_sample_proteins_strips_newlines(tokenizer):
    # Newline (id 1) and "A" (id 2) are favoured, <|endoftext|> (id 0) is rare, so the
    # raw samples hold many newlines and run long.
    model = constant_output_model({1: 0.1, 2: 0.1, 0: -0.2})
    proteins = sample_proteins(model, tokenizer, num_sequences=4, max_new_tokens=40, seed=3,
                               device="cpu")
    assert all(re.fullmatch(r"[A-Z]+", p) for p in proteins)
    assert all("A" in p for p in proteins)
    # Newlines took up some of the 40 tokens and were removed.
    assert sum(len(p) for p in proteins) < 4 * 40


def test_sample_proteins_rejects_too_long_generation(tokenizer):
    with pytest.raises(ValueError, match="positions"):
        sample_proteins(tiny_gpt2(), tokenizer, num_sequences=1, max_new_tokens=64, seed=0,
                        device="cpu")


def test_aa_kl_natural_finite_for_random_model(tokenizer):
    assert set("".join(HELDOUT)) == set("ACDEFGHIKLMNPQRSTVWY")  # so KL < inf
    result = aa_kl_natural(tiny_gpt2(1), tokenizer, HELDOUT, seed=0, min_residues=200,
                           max_new_tokens=40, device="cpu", batch_size=4)
    assert result["aa_gen_residues"] >= 200  # sampled until the sample size was reached
    assert result["aa_gen_sequences"] % 4 == 0 and result["aa_gen_sequences"] >= 200 // 40
    assert result["aa_kl_expected_bias"] == pytest.approx(19 / (2 * result["aa_gen_residues"]))
    assert result["aa_note"] is None
    for key in ("aa_kl_natural", "aa_kl_uniprot"):
        # A random model's composition is far from natural: a KL > 0 that is finite.
        assert math.isfinite(result[key]) and result[key] > 0, key


def test_aa_kl_natural_reports_no_residues(tokenizer):
    # <|endoftext|> has logit 1600, everything else 0: every sample ends at once.
    model = constant_output_model({0: 100.0})
    result = aa_kl_natural(model, tokenizer, HELDOUT, seed=0, min_residues=30,
                           max_new_tokens=10, device="cpu", batch_size=4)
    assert result["aa_gen_residues"] == 0
    assert result["aa_gen_sequences"] == 8 * 4  # gave up after ceil(30 / 4) = 8 batches of 4, not forever
    assert math.isnan(result["aa_kl_natural"]) and math.isnan(result["aa_kl_uniprot"])
    assert "no standard amino-acid residue" in result["aa_note"]


def test_expected_bias_is_what_a_perfect_sampler_scores():
    """The KL of a sample drawn from q itself, against q, averages (K - 1) / (2 N): the floor any
    aa_kl_natural at N residues sits on. Checked by drawing 400 perfect samples of N = 10,000."""
    rng = np.random.default_rng(0)
    q = UNIPROT_BACKGROUND
    n = 10_000
    kls = [aa_kl(rng.multinomial(n, q) / n, q) for _ in range(400)]
    assert np.mean(kls) == pytest.approx(expected_aa_kl_bias(n), rel=0.1)
    assert expected_aa_kl_bias(n) == pytest.approx(19 / 20_000)


def test_penalty_spares_the_end_token_and_equals_hugging_faces_elsewhere():
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([[0, 3, 5, 3], [0, 7, 2, 2]])  # (B, T): the prompt is the end token, id 0
    scores = torch.randn(2, 9, generator=g)  # (B, V), positive and negative logits
    ours = RepetitionPenaltyExceptEnd(1.2, end_id=0)(ids, scores.clone())
    hf = RepetitionPenaltyLogitsProcessor(1.2)(ids, scores.clone())
    assert torch.equal(ours[:, 1:], hf[:, 1:])  # every other seen token penalised exactly as HF does
    assert torch.equal(ours[:, 0], scores[:, 0]) and not torch.equal(hf[:, 0], scores[:, 0])


def test_samples_end_where_the_model_ends_them_and_the_cap_is_counted(tokenizer):
    # The end token (id 0) and "A" (id 2) are equally likely at every step. Under HF's penalty the
    # prompt (= the end token) would be divided by 1.2 from the first step on; here it is not, so
    # about half the samples end at each step and none reach a 30-token cap.
    model = constant_output_model({0: 0.1, 2: 0.1})
    ends = draw_samples(model, tokenizer, num_sequences=64, max_new_tokens=30, seed=0, device="cpu",
                        batch_size=64, repetition_penalty=1.0)
    penalised = draw_samples(model, tokenizer, num_sequences=64, max_new_tokens=30, seed=0, device="cpu",
                             batch_size=64)
    # "A" is penalised once seen (its logit 1.6 -> 1.33), the end token never: samples end sooner
    assert np.mean([len(p) for p in penalised.proteins]) <= np.mean([len(p) for p in ends.proteins])
    assert ends.capped == 0 and ends.capped_share == 0.0
    # A model that never ends: every sample is cut at the cap
    stuck = draw_samples(constant_output_model({2: 1.0, 0: -5.0}), tokenizer, num_sequences=4, max_new_tokens=12,
                         seed=0, device="cpu", batch_size=4)
    assert stuck.capped == 4 and stuck.capped_share == 1.0 and all(len(p) == 12 for p in stuck.proteins)


def test_resampling_floor_matches_the_iid_closed_form():
    """For proteins whose residues are i.i.d. draws from q, resampling whole proteins to N residues is
    (K - 1) / 2N on average, like a perfect i.i.d. sampler: the resampled floor reduces to the closed form."""
    rng = np.random.default_rng(1)
    q = UNIPROT_BACKGROUND
    proteins = ["".join(rng.choice(list(STANDARD_AA), size=int(n), p=q)) for n in rng.integers(50, 400, 2000)]
    n = 10_000
    floor = natural_resampling_floor(proteins, n, n_resamples=400, seed=0)
    # Monte-Carlo error of the mean of 400 KLs (sd ~ mean * sqrt(2 / 19)): ~1.6 %; the tolerance is 4 sd
    assert floor["aa_kl_floor_mean"] == pytest.approx(expected_aa_kl_bias(n), rel=0.07)
    assert floor["aa_kl_floor_mean"] < floor["aa_kl_floor_p95"] < 3 * expected_aa_kl_bias(n)


def test_resampling_floor_of_real_proteins_is_far_above_the_iid_figure(bundled_proteins):
    """Real proteins each have their own composition, so natural resamples of N residues vary several times
    more than i.i.d. residues would (the issue measured ~0.0036 against 0.00093 at ~10,200 residues)."""
    heldout = bundled_proteins[:900]
    floor = natural_resampling_floor(heldout, 10_000, seed=0)
    assert floor["aa_kl_floor_mean"] > 2.5 * expected_aa_kl_bias(10_000)
    assert floor["aa_kl_floor_diff_p95"] > 0 and floor["aa_kl_floor_interaction_p95"] > floor["aa_kl_floor_diff_p95"]


def test_generation_throughput_positive():
    result = generation_throughput(tiny_gpt2(), batch_size=2, new_tokens=12, device="cpu",
                                   seed=0)
    assert result["tokens_per_s"] > 0
    assert result["tokens_per_s"] == pytest.approx(2 * 12 / result["seconds"])
    assert result["param_dtype"] == "float32"
    assert result["autocast_dtype"] is None
