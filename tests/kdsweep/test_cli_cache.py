"""`kdsweep cache build SPACE.yaml`: prints the size first, builds once, reuses, where `cache.dir` says (its bad
input: tests/kdsweep/test_bad_inputs.py)."""

import yaml

from kdsweep.cli import main
from kdsweep.distill.teacher.cache import MANIFEST, read_manifest
from kdsweep.sweeps.space import SEARCH_SPACES_DIR


def _space(tmp_path, data, teacher, **cache):
    raw = yaml.safe_load((SEARCH_SPACES_DIR / "demo.yaml").read_text())
    raw.update(name="cli-cache", data=str(data), teacher=str(teacher), scales=["demo-xs"], cache=cache,
               teacher_train_data=None)
    raw["train"].update(max_steps=6, batch_size=4, micro_batch_size=4, block_size=64, split_method="hash")
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_cache_build_prints_the_size_then_builds_once(tmp_path, small_fasta, char_teacher, capsys):
    space = _space(tmp_path, small_fasta, char_teacher, dtype="bf16")
    store = tmp_path / "store"
    assert main(["cache", "build", str(space), "--storage", str(store)]) == 0
    out = capsys.readouterr().out
    [folder] = (store / "teacher_cache").iterdir()
    assert folder.name.startswith("char-teacher0-") and (folder / MANIFEST).is_file()
    # 6 steps x 4 blocks of 64 tokens, 32 dims, 2 bytes (bf16)
    assert out.startswith("teacher cache: 24 blocks × 64 tokens × 32 dims × 2 B = 0.0983 MB")
    assert f"in {folder}" in out.splitlines()[0] and f"--set teacher_cache={folder}" in out
    manifest = read_manifest(folder)
    assert manifest["dtype"] == "bf16" and manifest["train"]["n_blocks"] == 24

    assert main(["cache", "build", str(space), "--storage", str(store)]) == 0
    assert f"teacher cache: complete, {folder}" in capsys.readouterr().out
    assert len(list((store / "teacher_cache").iterdir())) == 1


def test_cache_dir_puts_the_cache_elsewhere(tmp_path, small_fasta, char_teacher, capsys):
    """`cache.dir` (e.g. node-local scratch) instead of `<storage>/teacher_cache/`."""
    scratch = tmp_path / "scratch" / "kd"
    space = _space(tmp_path, small_fasta, char_teacher, dir=str(scratch))
    assert main(["cache", "build", str(space), "--storage", str(tmp_path / "store")]) == 0
    [folder] = scratch.iterdir()
    assert f"in {folder}" in capsys.readouterr().out
    assert read_manifest(folder)["dtype"] == "fp32"  # the default storage dtype
    assert not (tmp_path / "store" / "teacher_cache").exists()
