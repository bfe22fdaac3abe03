"""distill.run.evaluate: student and teacher are scored at the same precision."""

import math

import torch

from kdsweep.distill.data.batches import heldout_from_file
from kdsweep.distill.eval.metrics import score_heldout
from kdsweep.distill.models import build_student, load_teacher, load_tokenizer
from kdsweep.distill.run.evaluate import evaluate_student
from kdsweep.distill.runtime import Runtime
from kdsweep.distill.teacher.source import LiveTeacher
from tests.fixtures import tiny_config


def test_teacher_runs_under_the_students_autocast(tmp_path, char_teacher, small_fasta):
    teacher = load_teacher(str(char_teacher))
    tokenizer = load_tokenizer(str(char_teacher))
    student = build_student(teacher.config, {"n_layer": 1, "n_head": 2, "n_embd": 16}, seed=0)
    heldout = heldout_from_file(str(small_fasta), tokenizer).subset(12)
    cfg = tiny_config(char_teacher, small_fasta, tmp_path / "e", eval_batch_size=4)
    rt = Runtime(torch.device("cpu"), "bf16")
    got = evaluate_student(student, LiveTeacher(teacher, str(char_teacher)), tokenizer, heldout, cfg=cfg, runtime=rt,
                           generation=False)

    def scored(teacher_autocast: bool) -> dict:
        def teacher_fn(ids, mask, _proteins):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=teacher_autocast):
                return teacher(input_ids=ids, attention_mask=mask).logits
        batches = heldout.batches(4, teacher.config.n_positions, tokenizer.eos_token_id)
        return score_heldout(student, teacher_fn, batches, device="cpu", autocast_dtype=torch.bfloat16)

    same, mixed = scored(True), scored(False)
    assert got["precision"] == "bf16"
    assert got["ppl_teacher"] == same["ppl_teacher"] and got["kl_teacher"] == same["kl_teacher"]
    # the check can fail: bf16 and fp32 teacher logits give different numbers
    assert not math.isclose(got["ppl_teacher"], mixed["ppl_teacher"], rel_tol=1e-6)
