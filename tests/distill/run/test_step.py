"""distill.run.step: the fused path trains exactly like the logits path, alone and under DDP (real tiny models, CPU)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kdsweep.distill.config import TrainConfig
from kdsweep.distill.errors import ModelError
from kdsweep.distill.loss.kd import KDOptions
from kdsweep.distill.models import build_student, load_teacher
from kdsweep.distill.run.checkpoint import latest_checkpoint
from kdsweep.distill.run.phases import NO_TIMER, PHASES, PhaseTimer
from kdsweep.distill.run.probe import HeldTeacher
from kdsweep.distill.run.rundir import eval_rows
from kdsweep.distill.run.step import LossSettings, Stepper
from kdsweep.distill.runtime import Runtime
from kdsweep.distill.teacher.source import LiveTeacher, open_teacher
from tests.fixtures import start_row, tiny_config

ROOT = Path(__file__).resolve().parents[3]
BOTH_ARM = dict(uncertainty=True, smoothing=0.1, temperature=2.0, alpha=0.3)



def _weights(run_dir: Path) -> dict:
    return load_file(str(latest_checkpoint(run_dir / "checkpoints") / "model.safetensors"))


def assert_same_training(a: Path, b: Path, *, rtol: float, atol: float) -> None:
    """Two runs' loss rows, val ppl and final weights agree to tolerance."""
    rows_a, rows_b = eval_rows(a), eval_rows(b)
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
    for ra, rb in zip(rows_a, rows_b):
        for key in ("train_loss", "train_hard", "train_soft", "val_ppl"):
            assert rb[key] == pytest.approx(ra[key], rel=rtol), (key, ra["step"])
    wa, wb = _weights(a), _weights(b)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=rtol, atol=atol, msg=k)


def test_fused_training_equals_logits_training(tmp_path, char_teacher, small_fasta):
    """Same seed, fp32, the arm with every loss term (uncertainty weighting + smoothing), dropout on:
    6 steps of 2 accumulated micro-batches give the same loss rows and weights either way."""
    runs = {}
    for impl in ("fused", "logits"):
        cfg = tiny_config(char_teacher, small_fasta, tmp_path / impl, loss_impl=impl, final_eval=False, **BOTH_ARM)
        from kdsweep.distill.run.train import run_training

        assert run_training(cfg).status == "completed"
        runs[impl] = tmp_path / impl
    assert start_row(runs["fused"])["loss_impl"] == "fused"
    assert_same_training(runs["logits"], runs["fused"], rtol=1e-5, atol=1e-6)


def test_fused_is_the_default():
    assert TrainConfig().loss_impl == "fused"


def _stepper(teacher, impl: str = "fused") -> Stepper:
    student = build_student(teacher.config, {"n_layer": 1, "n_head": 2, "n_embd": 16}, dropout=0.1, seed=0)
    loss = LossSettings(KDOptions(2.0, 0.3, True, 0.1, "mask"), impl)
    return Stepper(student, teacher, Runtime(torch.device("cpu"), "fp32"), loss, lr=1e-2, total_steps=10)


@pytest.mark.parametrize("impl", ["fused", "logits"])
def test_a_timed_step_is_the_same_step(char_teacher, impl):
    """The phase timer the benchmarks and `estimate` pass charges every phase of the step, and
    changes nothing it computes: timed and untimed steps give the same losses and weights."""
    live = LiveTeacher(load_teacher(str(char_teacher)), "char")
    x = torch.randint(0, live.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    blocks = torch.arange(2)
    runs = {}
    for name, timer in (("untimed", NO_TIMER), ("timed", PhaseTimer())):
        torch.manual_seed(1)  # dropout
        stepper = _stepper(live, impl)
        losses = [float(stepper.step(blocks, x, timer).terms[0]) for _ in range(3)]
        runs[name] = losses, stepper.student.state_dict()
    assert runs["timed"][0] == runs["untimed"][0]
    for k, v in runs["untimed"][1].items():
        assert torch.equal(runs["timed"][1][k], v), k
    assert set(timer.wall) == set(PHASES) and all(timer.wall[p] > 0 for p in PHASES), timer.wall
    assert runs["untimed"][0][2] < runs["untimed"][0][0]  # it trains


def test_a_held_teacher_batch_is_the_live_teacher(char_teacher):
    """`kdsweep estimate`'s student probe steps on a precomputed teacher batch (with the
    entropies uncertainty weighting needs, as a cache stores them): the same step as live."""
    live = LiveTeacher(load_teacher(str(char_teacher)), "char")
    x = torch.randint(0, live.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    rt = Runtime(torch.device("cpu"), "fp32")
    losses = []
    for teacher in (live, HeldTeacher(live, x, rt, entropy=True)):
        torch.manual_seed(1)
        losses.append(float(_stepper(teacher).step(torch.arange(2), x).terms[0]))
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)


_DDP_WORKER = textwrap.dedent("""
    import sys, torch.distributed as dist
    from kdsweep.distill.config import load_config
    from kdsweep.distill.run.train import run_training
    rank, init = int(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    run_training(load_config(sys.argv[3]), log=lambda _: None)
    dist.destroy_process_group()
""")


def test_fused_path_under_ddp_matches_one_process(tmp_path, char_teacher, small_fasta):
    """Two gloo ranks (one micro-batch each) leave the weights one process leaves with both micro-batches
    accumulated: the gradients of the body and of the tied head (through the DDP-wrapped
    StudentHidden's forward) are all-reduced."""
    from kdsweep.distill.config import dump_config
    from kdsweep.distill.run.train import run_training

    common = dict(batch_size=4, micro_batch_size=2, dropout=0.0, final_eval=False, max_steps=4, eval_interval=2,
                  **BOTH_ARM)
    run_training(tiny_config(char_teacher, small_fasta, tmp_path / "one", **common))
    cfg_file = tmp_path / "ddp.yaml"
    dump_config(tiny_config(char_teacher, small_fasta, tmp_path / "ddp", device="cpu", **common), cfg_file)
    init = f"file://{tmp_path / 'pg'}"
    procs = [subprocess.Popen([sys.executable, "-c", _DDP_WORKER, str(rank), init, str(cfg_file)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    assert start_row(tmp_path / "ddp")["world_size"] == 2
    # rank 0 logs its own slice's train loss, so only the weights and the val ppl (computed from them) compare
    wa, wb = _weights(tmp_path / "one"), _weights(tmp_path / "ddp")
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6, msg=k)
    for ra, rb in zip(eval_rows(tmp_path / "one"), eval_rows(tmp_path / "ddp")):
        assert rb["val_ppl"] == pytest.approx(ra["val_ppl"], rel=1e-5)


def test_fused_refuses_a_teacher_whose_logits_are_not_a_linear_head(tmp_path):
    """A Gemma 2 teacher with an active logit soft cap: the fused path names the fallback; logits accepts it."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    Gemma2ForCausalLM(Gemma2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                   final_logit_softcapping=0.05)).save_pretrained(tmp_path / "capped")
    rt = Runtime(torch.device("cpu"), "fp32")
    fused = TrainConfig(teacher=str(tmp_path / "capped"), loss_impl="fused")
    with pytest.raises(ModelError, match="loss_impl: 'fused' needs a teacher whose logits are a linear head.*"
                                         "set loss_impl: logits"):
        open_teacher(fused, fused.teacher, None, {}, 1, rt)
    logits = fused.replace(loss_impl="logits")
    assert open_teacher(logits, logits.teacher, None, {}, 1, rt).describe() == f"live {logits.teacher}"


# ------------------------------------------------------------------------------ mixed precision

CUDA = pytest.param("cuda", marks=[pytest.mark.cuda,
                                   pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])


def _run(tmp_path, teacher, data, name, **overrides) -> Path:
    from kdsweep.distill.run.train import run_training

    cfg = tiny_config(teacher, data, tmp_path / name, final_eval=False, dropout=0.0, max_steps=4, eval_interval=2,
                      **BOTH_ARM, **overrides)
    assert run_training(cfg).status == "completed"
    return tmp_path / name


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_fused_training(tmp_path, request, small_fasta, device, precision):
    """On the CPU (the char teacher: 2 cores) and on a GPU (ProtGPT2's vocabulary): fused training under bf16/fp16
    autocast (fp16 with a GradScaler) stays near fp32 fused training, and near the logits path at the same
    precision; autocast was on (the losses are not the fp32 ones bit for bit)."""
    teacher = request.getfixturevalue("char_teacher" if device == "cpu" else "protgpt2_tiny_teacher")
    fp32 = _run(tmp_path, teacher, small_fasta, "fp32", device=device, precision="fp32")
    fused = _run(tmp_path, teacher, small_fasta, precision, device=device, precision=precision)
    logits = _run(tmp_path, teacher, small_fasta, f"{precision}-logits", device=device, precision=precision,
                  loss_impl="logits")
    assert start_row(fused)["precision"] == precision and start_row(fused)["loss_impl"] == "fused"
    assert [r["train_loss"] for r in eval_rows(fused)] != [r["train_loss"] for r in eval_rows(fp32)]
    for ref, other, rel in ((fp32, fused, 2e-2), (logits, fused, 1e-2)):
        for ra, rb in zip(eval_rows(ref), eval_rows(other), strict=True):
            assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=rel), (ref.name, other.name, ra["step"])
            assert rb["val_ppl"] == pytest.approx(ra["val_ppl"], rel=rel), (ref.name, other.name, ra["step"])
