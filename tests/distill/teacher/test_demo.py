"""The demo teacher's yardstick: paired NLL against the amino-acid composition, on real proteins."""

import math
from collections import Counter

import pytest
import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from kdsweep.distill.data.batches import prepare_data
from kdsweep.distill.data.splits import SplitSpec
from kdsweep.distill.eval.metrics import bootstrap_gap
from kdsweep.distill.models import DEMO_TEACHER_DIR
from kdsweep.distill.teacher.demo import (
    AA_LETTERS,
    build_aa_tokenizer,
    composition_nll,
    paired_residue_nll,
    unigram_entropy,
)


def _paired(model, tok, held_out):
    residue_ids = torch.tensor(tok.convert_tokens_to_ids(list(AA_LETTERS)))
    comp = composition_nll(held_out.sequences, tok)
    return paired_residue_nll(model, held_out.batches(5, 512, tok.eos_token_id), comp, residue_ids), comp


def test_unigram_entropy_and_composition_nll_agree_with_counting():
    seqs = ["MKKLLA", "AAW"]
    counts = Counter("".join(seqs))
    n = sum(counts.values())
    assert unigram_entropy(seqs) == pytest.approx(-sum(c / n * math.log(c / n) for c in counts.values()))
    tok = build_aa_tokenizer()
    comp = composition_nll(seqs, tok)
    for letter in AA_LETTERS:
        expected = -math.log(counts[letter] / n) if letter in counts else 0.0
        assert comp[tok.convert_tokens_to_ids(letter)].item() == pytest.approx(expected)
    assert comp[tok.eos_token_id] == 0


def test_paired_nll_matches_one_protein_at_a_time(small_fasta, char_teacher):
    tok = PreTrainedTokenizerFast.from_pretrained(char_teacher)
    model = GPT2LMHeadModel.from_pretrained(char_teacher).eval()
    held_out = prepare_data(str(small_fasta), tok, block_size=128, split=SplitSpec(method="hash")).test
    paired, comp = _paired(model, tok, held_out)
    naive = []
    with torch.no_grad():
        for ids in held_out.ids:  # unpadded, one protein per forward
            ids = torch.as_tensor(ids[:512]).unsqueeze(0)  # (1, L)
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)  # (L-1, V)
            targets = ids[0, 1:].tolist()
            scored = [(i, t) for i, t in enumerate(targets) if tok.convert_ids_to_tokens(t) in AA_LETTERS]
            naive.append((sum(-logp[i, t].item() for i, t in scored), sum(comp[t].item() for _, t in scored),
                          len(scored)))
    got = sorted(zip(paired["model"], paired["composition"], paired["count"]), key=lambda r: (r[2], r[0]))
    naive.sort(key=lambda r: (r[2], r[0]))
    assert len(got) == len(naive) == len(held_out)
    for g, n in zip(got, naive):
        assert g == pytest.approx(n, rel=1e-4)


def test_committed_demo_teacher_beats_composition_on_held_out_proteins():
    tok = PreTrainedTokenizerFast.from_pretrained(DEMO_TEACHER_DIR)
    model = GPT2LMHeadModel.from_pretrained(DEMO_TEACHER_DIR).eval()
    held_out = prepare_data("bundled", tok, block_size=512).test.subset(150)
    paired, _ = _paired(model, tok, held_out)
    gap = bootstrap_gap(paired["model"] - paired["composition"], paired["count"])
    assert gap["ci95_high"] < 0, gap  # a random-init or composition-only model fails this
