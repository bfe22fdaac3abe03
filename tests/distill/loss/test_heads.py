"""Tests of distill/loss/heads.py on real tiny Hugging Face models (random weights, no network)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Model,
)

from kdsweep.distill.loss.heads import PROBE_LENGTH, head_inputs, is_linear_head


def tiny_gpt2(dropout=0.0):
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=61, n_positions=32, n_embd=16, n_layer=2,
                                      n_head=2, resid_pdrop=dropout, embd_pdrop=dropout,
                                      attn_pdrop=dropout))


def tiny_gemma2(softcap):
    torch.manual_seed(0)
    return Gemma2ForCausalLM(Gemma2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8,
        final_logit_softcapping=softcap, attn_implementation="eager"))


def test_head_inputs_of_gpt2_are_the_tied_head_and_last_hidden_state():
    model = tiny_gpt2()
    x = torch.randint(0, 61, (2, 9), generator=torch.Generator().manual_seed(1))
    hidden, weight, bias = head_inputs(model, x)
    assert hidden.shape == (2, 9, 16) and hidden.requires_grad
    assert weight is model.transformer.wte.weight and bias is None
    torch.testing.assert_close(hidden, model.transformer(x).last_hidden_state, rtol=0, atol=0)
    torch.testing.assert_close(F.linear(hidden, weight), model(x).logits, rtol=1e-6, atol=1e-6)


def test_is_linear_head_for_protgpt2_config(protgpt2_tiny_teacher):
    assert is_linear_head(GPT2LMHeadModel.from_pretrained(protgpt2_tiny_teacher))


@pytest.mark.parametrize("training", [True, False])
def test_is_linear_head_despite_dropout_and_keeps_the_mode(training):
    model = tiny_gpt2(dropout=0.5)  # two training-mode forwards would differ
    model.train(training)
    assert is_linear_head(model)
    assert model.training is training
    assert all(m.training is training for m in model.modules())


def test_is_linear_head_false_for_soft_capped_logits():
    # A random Gemma 2's logits are ~0.2 wide: a cap of 0.05 makes tanh bite, as Gemma 2's
    # cap of 30 does on a trained model's logits of tens. Without the cap: a linear head.
    assert not is_linear_head(tiny_gemma2(softcap=0.05))
    assert is_linear_head(tiny_gemma2(softcap=None))


def test_is_linear_head_takes_a_given_input():
    model = tiny_gemma2(softcap=0.05)
    x = torch.arange(3, 3 + PROBE_LENGTH + 3).unsqueeze(0)  # not id 0, its padding_idx
    assert not is_linear_head(model, x)
    # With a tolerance wider than the cap's effect the check passes: it is numerical.
    assert is_linear_head(model, x, atol=1.0)


def test_models_without_a_linear_lm_head():
    model = GPT2Model(GPT2Config(vocab_size=61, n_positions=32, n_embd=16, n_layer=1,
                                 n_head=2))
    assert not is_linear_head(model)
    with pytest.raises(ValueError, match="GPT2Model has no separate base model"):
        head_inputs(model, torch.zeros(1, 4, dtype=torch.long))
