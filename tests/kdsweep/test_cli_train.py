"""`kdsweep train` / `kdsweep evaluate`: real runs and bad input (specific message, exit 2, nothing written)."""

import json
import subprocess
import sys

import pytest

from kdsweep.cli import main
from tests.fixtures import write_real_fasta

# hash split: these runs test the CLI, not homology, and so need no `mmseqs`
TINY = ["--set", "split_method=hash", "--set", "scale=null", "--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=16",
        "--set", "block_size=64", "--set", "batch_size=4", "--set", "micro_batch_size=2",
        "--set", "max_steps=2", "--set", "eval_interval=2", "--set", "val_max_proteins=8",
        "--set", "gen_min_residues=20", "--set", "gen_max_new_tokens=8", "--set", "gen_batch_size=4"]


def run_cli(args, capsys):
    code = main(args)
    return code, capsys.readouterr()


def test_train_then_evaluate(tmp_path, char_teacher, small_fasta, capsys):
    out = tmp_path / "run"
    code, io = run_cli(["train", "--set", f"teacher={char_teacher}", "--set", f"data={small_fasta}", *TINY,
                        "--out", str(out)], capsys)
    assert code == 0, io.err
    assert "ppl_ratio" in io.out and "kl_teacher" in io.out and "with accuracy" in io.out and "aa_kl_natural" in io.out
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["status"] == "completed" and summary["test"]["ppl_ratio"] > 0

    res = tmp_path / "eval.json"
    code, io = run_cli(["evaluate", "--student", str(out / "student"), "--teacher", str(char_teacher),
                        "--data", str(small_fasta), "--out", str(res)], capsys)
    assert code == 0, io.err
    m = json.loads(res.read_text())
    for key in ("ppl", "ppl_teacher", "ppl_ratio", "kl_teacher", "ece", "accuracy", "confidence",
                "aa_kl_natural", "compression"):
        assert isinstance(m[key], float), key
    assert m["n_proteins"] == 398  # --data: every unique protein of the file, no split
    assert m["ppl_ratio"] == pytest.approx(m["ppl"] / m["ppl_teacher"], rel=1e-9)


def _bad_fasta(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "case, needle",
    [
        ("malformed_fasta", "malformed FASTA: record 1 does not start with a '>'"),
        ("non_iupac", "record 2 (bad) contains non-IUPAC characters '1J'"),
        ("empty", "empty dataset"),
        ("unknown_key", "learning_rate: unknown key (did you mean 'lr'?)"),
        ("negative_lr", "lr: got -0.001, allowed: a finite number > 0"),
        ("alpha", "alpha: got 1.5, allowed: 0 <= alpha <= 1"),
        ("missing_teacher", "teacher directory not found"),
        ("vocab_mismatch", "vocabulary mismatch"),
    ],
)
def test_bad_input_fails_cleanly(case, needle, tmp_path, char_teacher, protgpt2_tiny_teacher, small_fasta, capsys):
    teacher, data, extra = str(char_teacher), str(small_fasta), []
    if case == "malformed_fasta":
        data = str(_bad_fasta(tmp_path, "m.fasta", "MKVL\n>a\nMKV\n"))
    elif case == "non_iupac":
        data = str(_bad_fasta(tmp_path, "n.fasta", ">ok\nMKV\n>bad\nMK1VJ\n"))
    elif case == "empty":
        data = str(_bad_fasta(tmp_path, "e.fasta", ">a\n\n"))
    elif case == "unknown_key":
        extra = ["--set", "learning_rate=1e-3"]
    elif case == "negative_lr":
        extra = ["--set", "lr=-1e-3"]
    elif case == "alpha":
        extra = ["--set", "alpha=1.5"]
    elif case == "missing_teacher":
        teacher = str(tmp_path / "no-such-teacher")
    elif case == "vocab_mismatch":
        extra = ["--set", f"tokenizer={protgpt2_tiny_teacher}"]
    out = tmp_path / "out"
    code, io = run_cli(["train", "--set", f"teacher={teacher}", "--set", f"data={data}", *TINY, *extra,
                        "--out", str(out)], capsys)
    assert code == 2
    assert needle in io.err and "Traceback" not in io.err
    assert not out.exists()  # nothing half-written


def test_real_process_exit_code(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: [1, 2\n")
    p = subprocess.run([sys.executable, "-m", "kdsweep", "train", "--config", str(cfg)], capture_output=True, text=True)
    assert p.returncode == 2 and "c.yaml: malformed YAML" in p.stderr


def test_missing_mmseqs_fails_before_training(tmp_path, char_teacher, no_mmseqs, capsys):
    data = write_real_fasta(tmp_path / "user.fasta", 80)  # not cached yet: its cluster split needs mmseqs
    out = tmp_path / "out"
    code, io = run_cli(["train", "--set", f"teacher={char_teacher}", "--set", f"data={data}", *TINY,
                        "--set", "split_method=cluster", "--out", str(out)], capsys)
    assert code == 2 and "mmseqs not found" in io.err and "apt-get install mmseqs2" in io.err
    assert not out.exists()
