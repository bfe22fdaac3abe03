"""A damaged newest checkpoint: resume sets it aside and continues from the one before."""

from __future__ import annotations

import os

import pytest

from kdsweep.distill.run.checkpoint import CORRUPT_PREFIX, STATE, WEIGHTS, list_checkpoints
from kdsweep.distill.run.rundir import CHECKPOINTS_DIR, eval_rows, read_log
from kdsweep.distill.run.train import run_training
from tests.fixtures import tiny_config


class Interrupted(BaseException):
    """Stands for the kill that ends a run mid-way (KeyboardInterrupt would stop pytest)."""


def _stop_after(step: int):
    def report(row):
        if row.get("step") == step:
            raise Interrupted

    return report


@pytest.mark.parametrize("damaged", [WEIGHTS, STATE])
def test_resume_falls_back_past_a_damaged_checkpoint(damaged, tmp_path, char_teacher, small_fasta):
    out = tmp_path / "run"
    cfg = tiny_config(char_teacher, small_fasta, out, max_steps=6, eval_interval=2, keep_checkpoints=2,
                      final_eval=False)
    with pytest.raises(Interrupted):
        run_training(cfg, report=_stop_after(4), log=lambda _: None)
    ckpts = list_checkpoints(out / CHECKPOINTS_DIR)
    assert [c.name for c in ckpts] == ["step_0000002", "step_0000004"]
    newest = ckpts[-1] / damaged
    cut = os.path.getsize(newest) // 2
    with open(newest, "r+b") as fh:  # cut short, as by a full disk or an interrupted copy
        fh.truncate(cut)

    lines = []
    result = run_training(cfg, log=lines.append)

    assert result.status == "completed" and result.step == 6
    assert any("step_0000004" in line and "cannot be loaded" in line for line in lines)
    aside = out / CHECKPOINTS_DIR / f"{CORRUPT_PREFIX}step_0000004"
    assert (aside / damaged).stat().st_size == cut  # set aside as it was, not deleted
    [resumed] = [r for r in read_log(out) if r.get("event") == "resumed"]
    assert resumed["step"] == 2 and resumed["from"].endswith("step_0000002")
    assert [r["step"] for r in eval_rows(out)] == [2, 4, 6]  # step 4 redone once, not duplicated


def _one_run(tmp_path, char_teacher, small_fasta, **overrides):
    out = tmp_path / "run"
    cfg = tiny_config(char_teacher, small_fasta, out, max_steps=4, eval_interval=2, final_eval=False, **overrides)
    assert run_training(cfg, log=lambda _: None).status == "completed"
    return cfg, out


def _fresh_state(cfg):
    """A student, optimizer, schedule and scaler as a run builds them, to load a checkpoint into."""
    from kdsweep.distill.models import build_student, load_teacher_config, student_sizes
    from kdsweep.distill.optim import make_optimizer, make_scheduler
    from kdsweep.distill.run.step import make_scaler
    from kdsweep.distill.runtime import resolve_runtime

    student = build_student(load_teacher_config(cfg.teacher), student_sizes(None, cfg.n_layer, cfg.n_head, cfg.n_embd))
    optimizer = make_optimizer(student, cfg.lr)
    return student, optimizer, make_scheduler(optimizer, 0, 4), make_scaler(resolve_runtime("fp32", "cpu"))


def test_a_checkpoint_is_data_only_and_resumes_exactly(tmp_path, char_teacher, small_fasta):
    """safetensors + JSON, no pickle: every file parses as data; loading restores optimizer, schedule, RNG."""
    import json
    import pickle

    import torch
    from safetensors.torch import load_file

    from kdsweep.distill.run.checkpoint import OPTIMIZER, load_checkpoint, read_state

    cfg, out = _one_run(tmp_path, char_teacher, small_fasta)
    ckpt = list_checkpoints(out / CHECKPOINTS_DIR)[-1]
    assert sorted(p.name for p in ckpt.iterdir()) == sorted([WEIGHTS, OPTIMIZER, STATE])
    json.loads((ckpt / STATE).read_text())
    for f in (WEIGHTS, OPTIMIZER):
        load_file(str(ckpt / f))
        with pytest.raises(pickle.UnpicklingError):
            pickle.loads((ckpt / f).read_bytes())
    student, optimizer, scheduler, scaler = _fresh_state(cfg)
    step, extra = load_checkpoint(ckpt, student, optimizer, scheduler, scaler)
    assert step == 4 and extra["best"]["step"] in (2, 4)
    state = read_state(ckpt)
    assert scheduler.last_epoch == state["scheduler"]["last_epoch"] == 4
    saved = load_file(str(ckpt / OPTIMIZER))
    moments = optimizer.state_dict()["state"]
    assert len(moments) == len(list(student.parameters())) and all(
        torch.equal(moments[i][k], saved[f"{i}.{k}"]) for i in moments for k in ("exp_avg", "exp_avg_sq", "step"))
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.999)  # a tuple again after JSON


class _Payload:
    """A pickle that would create a file when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("planted", ["state.json", "state.pt"])
def test_a_planted_pickle_is_refused_by_name_and_never_unpickled(planted, tmp_path, char_teacher, small_fasta):
    import pickle

    from kdsweep.distill.run.checkpoint import CheckpointError, load_checkpoint

    cfg, out = _one_run(tmp_path, char_teacher, small_fasta, keep_checkpoints=2)
    ckpt = list_checkpoints(out / CHECKPOINTS_DIR)[-1]
    marker = tmp_path / "payload-ran"
    (ckpt / STATE).unlink()
    (ckpt / planted).write_bytes(pickle.dumps({"step": 4, "x": _Payload(marker)}))
    needle = "not JSON" if planted == STATE else "holds state.pt, a pickle"
    with pytest.raises(CheckpointError, match=needle):
        load_checkpoint(ckpt, *_fresh_state(cfg))
    # Resuming names it, sets it aside, and continues from the checkpoint before it.
    lines = []
    from kdsweep.distill.run.checkpoint import restore_latest

    found, step, _ = restore_latest(out / CHECKPOINTS_DIR, *_fresh_state(cfg), lines.append)
    assert found.name == "step_0000002" and step == 2
    assert "CheckpointError" in lines[0] and ckpt.name in lines[0]
    assert (out / CHECKPOINTS_DIR / f"{CORRUPT_PREFIX}{ckpt.name}").is_dir()
    assert not marker.exists()


def test_a_stopped_trial_keeps_only_its_newest_weights(tmp_path, char_teacher, small_fasta):
    from kdsweep.distill.run.checkpoint import OPTIMIZER, CheckpointError, drop_resume_state, folder_bytes, load_checkpoint

    cfg, out = _one_run(tmp_path, char_teacher, small_fasta, keep_checkpoints=2)
    root = out / CHECKPOINTS_DIR
    before = sum(folder_bytes(c) for c in list_checkpoints(root))
    freed = drop_resume_state(root)
    [kept] = list_checkpoints(root)
    assert kept.name == "step_0000004" and not (kept / OPTIMIZER).exists() and (kept / WEIGHTS).is_file()
    assert freed == before - folder_bytes(kept) > 0
    with pytest.raises(CheckpointError, match="optimizer state was dropped"):
        load_checkpoint(kept, *_fresh_state(cfg))
    assert drop_resume_state(root) == 0  # idempotent


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_the_final_student_can_be_saved_in_half_precision(dtype, tmp_path, char_teacher, small_fasta):
    import torch

    from kdsweep.distill.models import load_saved_student
    from kdsweep.distill.run.rundir import STUDENT_DIR

    _, full = _one_run(tmp_path / "fp32", char_teacher, small_fasta)
    _, half = _one_run(tmp_path / dtype, char_teacher, small_fasta, save_dtype=dtype)
    a, b = load_saved_student(str(full / STUDENT_DIR)), load_saved_student(str(half / STUDENT_DIR))
    assert next(b.parameters()).dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    size = lambda d: (d / STUDENT_DIR / "model.safetensors").stat().st_size  # noqa: E731
    assert size(half) < 0.6 * size(full)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(q.float(), p, rtol=1e-2, atol=1e-3, msg=name)
