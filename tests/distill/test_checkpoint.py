"""A damaged newest checkpoint: resume sets it aside and continues from the one before."""

from __future__ import annotations

import os

import pytest

from distill.checkpoint import CORRUPT_PREFIX, STATE, WEIGHTS, list_checkpoints
from distill.rundir import CHECKPOINTS_DIR, eval_rows, read_log
from distill.train import run_training
from tests.fixtures import tiny_config


class Interrupted(BaseException):
    """Stands for the kill that ends a run mid-way (KeyboardInterrupt would stop pytest)."""


def _stop_after(step: int):
    def report(row, ckpt_dir):
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
