"""benchmarks/rehearsal.py at a small size, through the real command line: after the sweep's one
verification of the teacher cache, no trial hashes a byte; every trial reads the cache and writes
its checkpoints once; a trial ASHA stopped keeps its weights only."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.rehearsal import Setup, format_report, rehearse
from tests.fixtures import ray_subprocess_env


@pytest.mark.ray
def test_small_rehearsal_hashes_nothing_per_trial(tmp_path, small_fasta):
    setup = Setup(tmp_path / "r", teacher_layers=1, teacher_width=32, teacher_heads=2, data=str(small_fasta),
                  split_method="hash", split=(0.6, 0.1, 0.3), trials_per_study=4, arms=("baseline",), steps=8,
                  batch_size=2, block_size=64, eval_interval=2, grace_period=2, val_max_proteins=8, cpus=1)
    with ray_subprocess_env() as env:
        report = rehearse(setup, env, project_36=False, log=lambda _: None)
    print("\n" + format_report(report))
    build, trials = report["build"], report["trials"]
    assert build["records_forgotten"] == build["files"] - 1  # every file of the cache but its manifest
    # The sweep verified the cache once (its one node), reading every byte of it ...
    assert f"verified on 1 node(s), {build['bytes'] / 1e9:.3g} GB hashed" in report["sweep"]["verification"]
    # ... and then no trial hashed anything: not the cache, not the data file, not the teacher.
    assert len(trials) == 4
    for t in trials:
        assert t["bytes_hashed"] == 0, t
        assert t["cache_bytes_read"] > 0 and t["checkpoint_bytes_written"] > 0 and t["first_step_s"] > 0
    stopped = [t for t in trials if t["status"] == "stopped_early"]
    completed = [t for t in trials if t["status"] == "completed"]
    assert completed and len(stopped) + len(completed) == 4
    for t in stopped:  # its newest weights only, no optimizer state: well under one full checkpoint
        full = t["checkpoint_bytes_written"] / t["reports"]
        assert 0 < t["checkpoint_bytes_left"] < 0.5 * full
    # The estimate sized the cache as the build wrote it, to the .npy headers (128 bytes a file) and the
    # held-out proteins' offsets (8 bytes a protein: not in the estimate, 0.3 ppm of a ProtGPT2 cache).
    offsets = sum(f.stat().st_size for f in Path(build["folder"]).glob("*.offsets.npy"))
    assert 0 <= build["bytes"] - report["estimate"]["cache_bytes"] <= 128 * build["files"] + offsets
