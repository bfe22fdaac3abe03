import pytest
from transformers import GPT2Config

from kdsweep.distill.errors import ModelError
from kdsweep.distill.eval.metrics import count_params
from kdsweep.distill.models import (
    build_student, check_vocab, load_scales, load_teacher, load_tokenizer, student_sizes,
)
from kdsweep.distill.teacher.demo import build_aa_tokenizer


PROTGPT2 = GPT2Config(vocab_size=50257, n_positions=1024, bos_token_id=0, eos_token_id=0)


@pytest.mark.parametrize("scale, params_m", [("micro", 16.29), ("tiny", 38.87), ("small", 81.91)])
def test_spec_scale_presets_match_spec_param_counts(scale, params_m):
    # method §1 table: HF parameter counts for the ProtGPT2 vocabulary.
    student = build_student(PROTGPT2, student_sizes(scale, None, None, None))
    assert round(count_params(student) / 1e6, 2) == params_m
    assert student.config.activation_function == "gelu_new" and student.config.resid_pdrop == 0.1
    assert load_scales()[scale]["params_hf"] == pytest.approx(params_m * 1e6)


def test_explicit_sizes_override_preset():
    assert student_sizes("tiny", 2, None, None) == {"n_layer": 2, "n_head": 4, "n_embd": 512}


def test_teacher_frozen_and_student_shares_vocab(char_teacher):
    t = load_teacher(str(char_teacher))
    assert not t.training and not any(p.requires_grad for p in t.parameters())
    s = build_student(t.config, {"n_layer": 1, "n_head": 1, "n_embd": 8})
    assert s.config.vocab_size == t.config.vocab_size and s.config.n_positions == t.config.n_positions
    assert s.config.eos_token_id == 0


def test_missing_teacher_dir(tmp_path):
    with pytest.raises(ModelError, match="teacher directory not found"):
        load_teacher(str(tmp_path / "nope"))


def test_vocab_mismatch(protgpt2_tiny_teacher):
    t = load_teacher(str(protgpt2_tiny_teacher))
    check_vocab(load_tokenizer(str(protgpt2_tiny_teacher)), t.config)  # ProtGPT2 tokenizer fits
    small = GPT2Config(vocab_size=27, eos_token_id=0)
    with pytest.raises(ModelError, match="vocabulary mismatch: tokenizer has 50257 tokens but the teacher's vocab_size is 27"):
        check_vocab(load_tokenizer(str(protgpt2_tiny_teacher)), small)
    with pytest.raises(ModelError, match="tokenizer has 27 tokens but the teacher's vocab_size is 50257"):
        check_vocab(build_aa_tokenizer(), t.config)
    padded = GPT2Config(vocab_size=50304, eos_token_id=0)  # embedding padded to a multiple of 64: fine
    check_vocab(load_tokenizer(str(protgpt2_tiny_teacher)), padded)
    with pytest.raises(ModelError, match="eos id 0 but the teacher's is 50256"):
        check_vocab(load_tokenizer(str(protgpt2_tiny_teacher)), GPT2Config(vocab_size=50257))
    with pytest.raises(ModelError, match="student vocab_size 27 != teacher vocab_size 50257"):
        check_vocab(load_tokenizer(str(protgpt2_tiny_teacher)), t.config, small)
