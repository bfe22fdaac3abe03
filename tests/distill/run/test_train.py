"""The training loop on real proteins with tiny real GPT-2 teachers (CPU)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from kdsweep.distill.run.checkpoint import latest_checkpoint, read_state
from kdsweep.distill.run.rundir import CHECKPOINTS_DIR, RESTARTED, RunLog, read_log
from kdsweep.distill.run.train import run_training
from tests.fixtures import tiny_config


def _eval_rows(run_dir):
    return [r for r in read_log(run_dir) if "val_ppl" in r and "event" not in r]


def test_resume_reproduces_uninterrupted_run(tmp_path, char_teacher, small_fasta):
    cfg = dict(max_steps=6, eval_interval=2, final_eval=False)
    full = run_training(tiny_config(char_teacher, small_fasta, tmp_path / "full", **cfg))
    assert full.status == "completed"

    class Crash(Exception):
        pass

    def crash_at_4(metrics):
        if metrics["step"] == 4:
            raise Crash

    part_cfg = tiny_config(char_teacher, small_fasta, tmp_path / "part", **cfg)
    with pytest.raises(Crash):
        run_training(part_cfg, report=crash_at_4)
    assert latest_checkpoint(tmp_path / "part" / "checkpoints").name == "step_0000004"
    # A row the crashed attempt wrote past its last checkpoint must not survive the resume.
    RunLog(tmp_path / "part").append({"step": 5, "train_loss": 123.0, "val_ppl": 1.0})
    resumed = run_training(part_cfg)
    assert resumed.status == "completed"

    a, b = _eval_rows(tmp_path / "full"), _eval_rows(tmp_path / "part")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [2, 4, 6]
    for ra, rb in zip(a, b):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-6, abs=1e-7)
        assert rb["val_ppl"] == pytest.approx(ra["val_ppl"], rel=1e-6)
    assert any(r.get("event") == "resumed" for r in read_log(tmp_path / "part"))
    wa = load_file(str(tmp_path / "full" / "student" / "model.safetensors"))
    wb = load_file(str(tmp_path / "part" / "student" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)

    # Re-running a finished run re-reports its final row and trains nothing.
    log_before = (tmp_path / "part" / "metrics.jsonl").read_text()
    seen = []
    again = run_training(part_cfg, report=seen.append)
    assert again.status == "completed" and again.step == 6
    assert [m["step"] for m in seen] == [6] and seen[0]["done_training"] is True
    assert (tmp_path / "part" / "metrics.jsonl").read_text() == log_before


def test_nonfinite_loss_ends_diverged_with_step(tmp_path, char_teacher, small_fasta):
    seen = []
    res = run_training(tiny_config(char_teacher, small_fasta, tmp_path / "r", inject_nan_at_step=4, eval_interval=2),
                       report=seen.append)
    assert (res.status, res.step) == ("diverged", 4)
    summary = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert summary["status"] == "diverged" and summary["step"] == 4
    assert read_log(tmp_path / "r")[-1]["event"] == "diverged"
    assert seen[-1]["diverged"] is True and seen[-1]["step"] == 4
    assert not (tmp_path / "r" / "student").exists()  # it never continued to the end


def test_nonfinite_val_ppl_ends_diverged(tmp_path, char_teacher, small_fasta):
    """A finite loss with a non-finite held-out ppl is divergence too, not an early stop."""
    seen = []
    res = run_training(tiny_config(char_teacher, small_fasta, tmp_path / "v", inject_inf_val_at_step=4,
                                   eval_interval=2), report=seen.append)
    assert (res.status, res.step) == ("diverged", 4)
    assert json.loads((tmp_path / "v" / "metrics.json").read_text())["status"] == "diverged"
    assert [m["step"] for m in seen] == [2, 4] and seen[-1]["diverged"] is True
    assert not (tmp_path / "v" / "student").exists()


def test_everything_a_run_leaves_exists_before_its_last_report(tmp_path, char_teacher, small_fasta):
    """A scheduler may end the trial's process as soon as it has the final report: the student,
    the val/test metrics and the summary must already be on disk then."""
    out = tmp_path / "f"
    at_final = {}

    def report(row):
        if row["done_training"]:
            at_final["summary"] = json.loads((out / "metrics.json").read_text())
            at_final["student"] = (out / "student" / "model.safetensors").is_file()
        else:
            assert not (out / "metrics.json").exists()

    res = run_training(tiny_config(char_teacher, small_fasta, out, max_steps=4, eval_interval=2,
                                   gen_min_residues=60), report=report)
    summary = at_final["summary"]
    assert at_final["student"] and summary["status"] == "completed" and summary["step"] == 4
    rows = _eval_rows(out)
    # the objective is the final model's val ppl; the best-seen one is kept for reading curves
    assert summary["val_ppl"] == rows[-1]["val_ppl"] == res.val_ppl
    assert summary["best_val_ppl"] == min(r["val_ppl"] for r in rows)
    # val metrics (for choosing) and test metrics (for reporting), same precision for both models
    val, test = summary["val"], summary["test"]
    assert val["n_proteins"] > 0 and "aa_kl_natural" not in val and val["ppl_ratio"] > 0
    assert test["aa_gen_residues"] >= 60 and test["aa_kl_expected_bias"] == pytest.approx(19 / (2 * test["aa_gen_residues"]))
    assert val["precision"] == test["precision"] == "fp32"
    for r in rows:  # the Pareto view needs each eval's calibration next to its ppl
        assert 0 <= r["val_ece"] <= 1 and 0 <= r["val_accuracy"] <= 1


def test_gradient_accumulation_matches_one_big_batch(tmp_path, char_teacher, small_fasta):
    common = dict(max_steps=1, eval_interval=1, final_eval=False, dropout=0.0, batch_size=4)
    one = run_training(tiny_config(char_teacher, small_fasta, tmp_path / "a", micro_batch_size=4, **common))
    acc = run_training(tiny_config(char_teacher, small_fasta, tmp_path / "b", micro_batch_size=1, **common))
    wa = load_file(str(latest_checkpoint(one.run_dir / "checkpoints") / "model.safetensors"))
    wb = load_file(str(latest_checkpoint(acc.run_dir / "checkpoints") / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)
    ra, rb = _eval_rows(one.run_dir)[0], _eval_rows(acc.run_dir)[0]
    assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_paths_run_on_cpu(tmp_path, char_teacher, small_fasta, precision):
    """The GPU code paths (autocast; GradScaler for fp16) exercised on this CPU."""
    res = run_training(tiny_config(char_teacher, small_fasta, tmp_path / precision, precision=precision,
                                   max_steps=2, eval_interval=2, final_eval=False))
    assert res.status == "completed"
    row = _eval_rows(res.run_dir)[-1]
    assert torch.isfinite(torch.tensor(row["train_loss"])) and row["val_ppl"] < 1e4
    state = read_state(latest_checkpoint(res.run_dir / "checkpoints"))
    # fp16 must go through an enabled GradScaler (it has a scale); bf16 must not need one.
    assert ("scale" in state["scaler"]) == (precision == "fp16")
    assert read_log(res.run_dir)[0]["precision"] == precision


def test_protgpt2_vocab_teacher_trains_and_evaluates(tmp_path, protgpt2_tiny_teacher, small_fasta):
    """A tiny random teacher with ProtGPT2's real config vocabulary (50,257) and tokenizer."""
    res = run_training(tiny_config(protgpt2_tiny_teacher, small_fasta, tmp_path / "p", max_steps=2, eval_interval=2,
                                   block_size=64, val_max_proteins=8))
    assert res.status == "completed"
    m = res.final_metrics
    for key in ("ppl", "ppl_teacher", "ppl_ratio", "kl_teacher", "ece", "accuracy", "confidence",
                "aa_kl_natural", "compression"):
        assert key in m and m[key] == m[key], key  # present and not NaN
    assert m["ppl"] > 1000  # near-uniform random models over 50,257 tokens
    from transformers import AutoModelForCausalLM, AutoTokenizer

    s = AutoModelForCausalLM.from_pretrained(res.run_dir / "student")
    assert s.config.vocab_size == 50257 and len(AutoTokenizer.from_pretrained(res.run_dir / "student")) == 50257


def test_restart_before_first_checkpoint_keeps_each_step_once(tmp_path, char_teacher, small_fasta):
    """Killed after logging step 2 but before its checkpoint: the rerun must not duplicate step 2."""
    cfg = tiny_config(char_teacher, small_fasta, tmp_path / "r", max_steps=4, eval_interval=2, final_eval=False)
    RunLog(tmp_path / "r").append({"event": "start", "step": 0})
    RunLog(tmp_path / "r").append({"step": 2, "train_loss": 9.9, "val_ppl": 9.9})  # no checkpoint behind it
    run_training(cfg)
    assert [r["step"] for r in _eval_rows(tmp_path / "r")] == [2, 4]
    assert _eval_rows(tmp_path / "r")[0]["train_loss"] != 9.9


def test_progress_without_a_checkpoint_is_a_restart_from_step_0_never_a_resume(tmp_path, char_teacher, small_fasta):
    """What a retried trial sees when its earlier attempt trained (its log has rows) but left no
    checkpoint where this attempt looks (killed before its first one, or written to a disk this node
    does not share): it trains from step 0, and its log says how far the lost attempt had got."""
    cfg = tiny_config(char_teacher, small_fasta, tmp_path / "r", max_steps=4, eval_interval=2, final_eval=False)
    run_training(cfg)
    shutil.rmtree(tmp_path / "r" / CHECKPOINTS_DIR)
    (tmp_path / "r" / "metrics.json").unlink()
    result = run_training(cfg)
    assert result.status == "completed"
    events = [r.get("event") for r in read_log(tmp_path / "r")]
    assert "resumed" not in events and events.count(RESTARTED) == 1
    [row] = [r for r in read_log(tmp_path / "r") if r.get("event") == RESTARTED]
    assert row == {"event": RESTARTED, "step": 0, "lost_step": 4, "checkpoints": str(tmp_path / "r" / CHECKPOINTS_DIR)}
    assert [r["step"] for r in _eval_rows(tmp_path / "r")] == [2, 4]


def test_a_first_attempt_is_not_a_restart(tmp_path, char_teacher, small_fasta):
    cfg = tiny_config(char_teacher, small_fasta, tmp_path / "r", max_steps=2, eval_interval=2, final_eval=False)
    run_training(cfg)
    assert RESTARTED not in [r.get("event") for r in read_log(tmp_path / "r")]
