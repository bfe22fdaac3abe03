"""benchmarks/vs_seed.py's parts: the study's trainer re-implemented (its loss is method §3
where the two agree, and it runs the teacher every step through HF's real Trainer), the
memory meter, and the script end to end at a tiny shape."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from benchmarks.memory import MB, PeakExtra
from benchmarks.step_meter import StepMeter
from benchmarks.study_trainer import FixedBatch, StepClock, StudyTrainer, study_arguments, study_loss
from kdsweep.distill.loss.reference import ARMS, reference_kd_loss
from kdsweep.distill.models import PROTGPT2_TOKENIZER_DIR, load_tokenizer
from kdsweep.distill.run.phases import PHASES, PhaseTimer

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("arm", list(ARMS))
def test_study_loss_is_method_3_on_unpadded_blocks(arm):
    """On blocks without padding the study's loss and method §3 (weight_norm mask) agree: what the
    study adds (log(p + 1e-10), the hard term over every position) changes nothing there."""
    uncertainty, smoothing = ARMS[arm]
    gen = torch.Generator().manual_seed(0)
    s, t = (3 * torch.randn(2, 9, 37, generator=gen, dtype=torch.float64) for _ in range(2))
    y = torch.randint(0, 37, (2, 9), generator=gen)
    options = dict(temperature=2.0, alpha=0.3, uncertainty=uncertainty, smoothing=smoothing)
    study = study_loss(s, t, y, torch.ones_like(y), **options)
    assert study.item() == pytest.approx(reference_kd_loss(s, t, y, weight_norm="mask", **options).item(), rel=1e-8)


def _gpt2(vocab: int, layers: int, seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=32, n_layer=layers, n_head=2, n_embd=32))


def test_study_trainer_runs_the_teacher_every_step(tmp_path):
    tokenizer = load_tokenizer(str(PROTGPT2_TOKENIZER_DIR))
    tokenizer.pad_token = tokenizer.eos_token
    teacher, student = _gpt2(len(tokenizer), 2, 0).eval(), _gpt2(len(tokenizer), 1, 1)
    teacher_before = [p.detach().clone() for p in teacher.parameters()]
    student_before = [p.detach().clone() for p in student.parameters()]
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    cpu = torch.device("cpu")
    timer = PhaseTimer(cpu)
    meter = StepMeter(cpu, timer)
    blocks = torch.randint(0, len(tokenizer), (2, 16), generator=torch.Generator().manual_seed(0))
    trainer = StudyTrainer(2.0, 0.5, teacher, use_uncertainty_weighting=True, use_calibration_smoothing=True,
                           model=student, args=study_arguments(str(tmp_path), batch=2, steps=3, lr=1e-2, device=cpu),
                           train_dataset=FixedBatch(blocks), processing_class=tokenizer,
                           callbacks=[StepClock(meter, memory_steps=[2])], timer=timer)
    trainer.train()
    assert len(calls) == 3  # the teacher's forward, every step
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, teacher.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(student_before, student.parameters()))
    assert len(meter.steps) == 3 and [s["peak_extra"] is not None for s in meter.steps] == [False, False, True]
    assert set(meter.steps[0]["phases"]) == set(PHASES)
    summary = meter.summary(1)
    assert summary["wall"] > 0 and summary["peak_extra"] >= 0


def test_peak_extra_sees_an_allocation():
    with PeakExtra(torch.device("cpu")) as peak:
        block = torch.ones(64 * 2**20 // 4)  # 67 MB, written so its pages are resident
    del block
    assert peak.extra > 0.9 * 64 * 2**20 and peak.extra / MB < 200


def test_vs_seed_runs_end_to_end_at_a_tiny_shape():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "vs_seed.py"), "--teacher-layers", "1",
                          "--teacher-width", "64", "--teacher-heads", "2", "--batch", "2", "--length", "32",
                          "--warmup", "0", "--steps", "1", "--rounds", "1", "--arms", "baseline,both", "--ops"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    for line in ("arm baseline ===", "arm both ===", "kdsweep, live teacher / study: tokens/s x",
                 "kdsweep, cached teacher / study: tokens/s x", "FLOP bound x1.00, goal >= x1.00",
                 "ratio kdsweep / study:", "where a step's time goes", "ATen ops per step"):
        assert line in out.stdout, out.stdout
    summary = out.stdout[out.stdout.index("summary:"):].splitlines()
    assert [row.split()[:2] for row in summary[2:4]] == [["micro", "baseline"], ["micro", "both"]], summary


def test_flop_bound_of_the_cache_at_protgpt2s_shape():
    """The issue's figures (NOTES-perf.md): study / cached at ProtGPT2's 36 x 1280 teacher, L = 512, micro 7.5x,
    tiny 5.1x; the live teacher does the study's matmuls (bound 1.0). Models on the meta device: counts only."""
    from kdsweep.distill.models import student_config, student_sizes
    from kdsweep.distill.run.probe import step_flops_per_token

    config = GPT2Config.from_pretrained(PROTGPT2_TOKENIZER_DIR)
    with torch.device("meta"):
        teacher = GPT2LMHeadModel(config)
        students = {s: GPT2LMHeadModel(student_config(config, dropout=0.0, **student_sizes(s, None, None, None)))
                    for s in ("micro", "tiny")}
    assert (config.n_layer, config.n_embd) == (36, 1280)
    bounds = {s: step_flops_per_token(m, teacher, 512, teacher_live=True)
              / step_flops_per_token(m, teacher, 512, teacher_live=False) for s, m in students.items()}
    assert bounds["micro"] == pytest.approx(7.5, abs=0.05) and bounds["tiny"] == pytest.approx(5.1, abs=0.05)
