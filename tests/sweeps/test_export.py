"""`kdsweep sweep export`: configs for the final model, and (`--students`) the chosen students with a
model card, on a sweep folder made without Ray (tests.fixtures.write_finished_sweep) whose run folders
hold real tiny trainings."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest
import yaml

from kdsweep.cli import main
from kdsweep.distill.config import FIELDS, load_config
from kdsweep.distill.run.train import run_training
from kdsweep.sweeps.export import TEST_ONLY_KEYS
from kdsweep.sweeps.layout import SweepDir
from tests.fixtures import tiny_config, write_finished_sweep


def _edit_space(sd: SweepDir, **changes) -> None:
    raw = yaml.safe_load(sd.space.read_text())
    for key, value in changes.items():
        raw[key] = {**raw[key], **value} if key == "train" else value
    sd.space.write_text(yaml.safe_dump(raw))


def _modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.rglob("*")]}


def export(sd: SweepDir, out: Path, *extra: str) -> int:
    return main(["sweep", "export", sd.folder, "--storage", str(sd.root.parent), "--out", str(out), *extra])


def test_exported_config_trains_the_final_model_from_anywhere(tmp_path, monkeypatch):
    """final_eval on, an absolute output folder under --out, no fault-injection key, and still a valid
    `kdsweep train --config` file."""
    assert set(TEST_ONLY_KEYS) == {"inject_nan_at_step", "inject_inf_val_at_step"}  # distill/config.py's
    sd = write_finished_sweep(tmp_path / "store")
    _edit_space(sd, train={"inject_nan_at_step": 1000, "final_eval": False})  # as a fault-injection test space
    monkeypatch.chdir(tmp_path)
    assert export(sd, Path("best")) == 0  # a relative --out
    path = tmp_path / "best" / "demo-xs__baseline.yaml"
    raw = yaml.safe_load(path.read_text())
    assert raw["final_eval"] is True
    assert raw["output_dir"] == str(tmp_path / "best" / "demo-xs_baseline" / "final")
    assert not set(raw) & set(TEST_ONLY_KEYS) and not [k for k in raw if k.startswith("inject_")]
    assert raw["provenance"]["trial_id"] == "t1" and raw["provenance"]["val_ppl"] == 19.5
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    monkeypatch.chdir(tmp_path / "store")  # validated from elsewhere: the same run folder
    cfg = load_config(path)
    assert cfg.final_eval and cfg.inject_nan_at_step is FIELDS["inject_nan_at_step"].default is None
    assert cfg.output_dir == raw["output_dir"] and cfg.lr == 3e-3


@pytest.fixture
def trained_sweep(tmp_path, char_teacher, small_fasta) -> SweepDir:
    """write_finished_sweep's sweep whose best search trial t1 has a real run folder (a search run: no
    held-out metrics)."""
    sd = write_finished_sweep(tmp_path / "store")
    run_training(tiny_config(char_teacher, small_fasta, sd.run_dir("t1"), final_eval=False))
    return sd


def test_students_load_with_from_pretrained_and_say_where_they_came_from(trained_sweep, tmp_path, char_teacher,
                                                                          small_fasta):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sd = trained_sweep
    saved = sd.run_dir("t1") / "student"
    assert set(_modes(saved).values()) == {0o644, 0o755}  # the run's own student (distill.run.rundir.save_student)
    assert _modes(saved)["model.safetensors"] == 0o644 and _modes(saved)["student"] == 0o755

    assert export(sd, tmp_path / "out", "--students") == 0
    student = tmp_path / "out" / "demo-xs_baseline"
    assert (student / "model.safetensors").read_bytes() == (saved / "model.safetensors").read_bytes()
    modes = _modes(student)
    assert modes.pop("demo-xs_baseline") == 0o755 and set(modes.values()) == {0o644}, modes
    assert {"config.json", "model.safetensors", "tokenizer_config.json", "README.md"} <= set(modes)
    model = AutoModelForCausalLM.from_pretrained(student)
    tok = AutoTokenizer.from_pretrained(student)
    assert model.config.n_layer == 1 and model.config.vocab_size == len(tok)
    assert tok.decode(tok("MKV")["input_ids"]).replace(" ", "") == "MKV"
    card = (student / "README.md").read_text()
    assert "search trial t1" in card and f"`{char_teacher}`" in card and f"`{small_fasta}`" in card
    assert "val (early-stopping subset) | 16 |" in card  # val_max_proteins 16 < the val split's proteins
    assert "test | - | not scored" in card
    assert "Verdict (baseline at demo-xs): none yet: `kdsweep analyze norays`" in card
    assert "kdsweep commit that trained it: test" in card and "inject_" not in card

    # `sweep replicate` ran: the seed with the lowest val ppl_ratio, with val and test metrics and their n
    ratios = {}
    for seed, lr in ((1, 1e-3), (2, 5e-3)):
        run = run_training(tiny_config(char_teacher, small_fasta, sd.replicate_dir("demo-xs", "baseline", seed),
                                       seed=seed, lr=lr))
        ratios[seed] = run.val_metrics["ppl_ratio"]
        n = run.val_metrics["n_proteins"], run.final_metrics["n_proteins"]
    best = min(ratios, key=ratios.get)
    ablation = sd.replicate_dir("demo-xs", "baseline", 9, off=("uncertainty",))  # never a candidate, even when lower
    shutil.copytree(sd.replicate_dir("demo-xs", "baseline", best), ablation)
    summary = json.loads((ablation / "metrics.json").read_text())
    summary["val"]["ppl_ratio"] = ratios[best] / 2
    (ablation / "metrics.json").write_text(json.dumps(summary))
    (sd.replicate_dir("demo-xs", "baseline", best) / "student").rename(sd.replicates / "kept")
    assert export(sd, tmp_path / "out2", "--students") == 0  # the best seed has no student: the other one
    card = (tmp_path / "out2" / "demo-xs_baseline" / "README.md").read_text()
    assert f"replicate seed {3 - best}: the lowest val ppl_ratio" in card and "of the 1 completed" in card
    (sd.replicates / "kept").rename(sd.replicate_dir("demo-xs", "baseline", best) / "student")
    assert export(sd, tmp_path / "out3", "--students") == 0
    card = (tmp_path / "out3" / "demo-xs_baseline" / "README.md").read_text()
    assert f"replicate seed {best}: the lowest val ppl_ratio ({ratios[best]:.4g}) of the 2 completed" in card
    assert f"| val (whole split) | {n[0]} |" in card and f"| test (whole split) | {n[1]} |" in card
    assert (tmp_path / "out3" / "demo-xs_baseline" / "model.safetensors").read_bytes() == \
        (sd.replicate_dir("demo-xs", "baseline", best) / "student" / "model.safetensors").read_bytes()


def test_refusals_name_what_and_write_nothing(trained_sweep, tmp_path, capsys):
    sd = trained_sweep
    out = tmp_path / "out"
    # a student folder that holds something
    (out / "demo-xs_baseline").mkdir(parents=True)
    (out / "demo-xs_baseline" / "notes.txt").write_text("mine")
    assert export(sd, out, "--students") == 2
    assert "demo-xs_baseline already exists and is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in out.rglob("*")) == ["demo-xs_baseline", "notes.txt"]
    # an empty one is fine
    (out / "demo-xs_baseline" / "notes.txt").unlink()
    assert export(sd, out, "--students") == 0 and (out / "demo-xs_baseline" / "model.safetensors").is_file()
    # --out inside the sweep folder
    assert export(sd, sd.root / "best") == 2
    assert f"is inside the sweep folder {sd.root}" in capsys.readouterr().err and not (sd.root / "best").exists()
    # a (scale, arm) without a finished trial: named, and nothing written (not even the configs that exist)
    _edit_space(sd, arms=["baseline", "uncertainty"])
    assert export(sd, tmp_path / "none", "--students") == 2
    err = capsys.readouterr().err
    assert "no finished trial with a saved student for demo-xs/uncertainty;" in err and "baseline" not in err
    assert not (tmp_path / "none").exists()
    assert export(sd, tmp_path / "configs") == 0  # the configs alone: those that exist
    assert [p.name for p in (tmp_path / "configs").iterdir()] == ["demo-xs__baseline.yaml"]
