"""One real small sweep + replicates, built once per session for the analysis tests.

The sweep is the demo space shrunk: the bundled demo teacher, 400 real UniProt
proteins, two demo scales x four arms x 2 trials of 12 steps, then 2 seeds of
each study's best config, and the matched ablations (each enhanced arm's best config
with each enhancement switched off, same 2 seeds). It runs through the real CLI in
subprocesses, each with its own embedded Ray (RAY_TMPDIR: a short fresh folder,
removed at the end after every process of that Ray is ended by PID). The space names a
teacher training set (`teacher_train_data`): the sweep's train split plus TEACHER_SAW of
its test proteins, so the exposure figures have a known answer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kdsweep.distill.data.exposure import split_of
from kdsweep.distill.data.splits import SplitSpec
from kdsweep.sweeps.layout import SweepDir
from tests.fixtures import ray_subprocess_env, write_real_fasta

SWEEP = "ana"
TEACHER_SAW = 5  # test proteins the declared teacher training set holds verbatim
SPACE = {
    "name": SWEEP,
    "teacher": "demo",
    "scales": ["demo-xs", "demo-s"],
    "arms": ["baseline", "uncertainty", "calibration", "both"],
    "params": {
        "lr": {"type": "loguniform", "low": 1.0e-3, "high": 3.0e-2},
        "warmup_steps": {"type": "int", "low": 0, "high": 3},  # ends before the first ASHA rung (step 4)
        "temperature": {"type": "uniform", "low": 1.0, "high": 4.0},
        "alpha": {"type": "uniform", "low": 0.1, "high": 0.9},
        "smoothing": {"type": "loguniform", "low": 0.01, "high": 0.2},
    },
    # hash split: user FASTA under the cluster split needs `mmseqs`, which these tests are not about
    "train": {"split_method": "hash", "max_steps": 12, "eval_interval": 4, "batch_size": 4, "micro_batch_size": 4, "block_size": 128,
              "val_max_proteins": 16, "eval_batch_size": 16, "gen_min_residues": 40, "gen_max_new_tokens": 16, "gen_batch_size": 4,
              "final_eval": False},
    "search": {"trials_per_study": 2, "max_concurrent": 2, "grace_period": 4, "reduction_factor": 2,
               "executor": "local"},
}
def kdsweep(args: list[str], env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "kdsweep", *args], env=env, capture_output=True, text=True,
                       timeout=timeout, cwd=Path(__file__).resolve().parents[2])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


@pytest.fixture(scope="session")
def sweep(tmp_path_factory) -> SweepDir:
    """The finished sweep folder (search trials + 2 replicate seeds per study). Read-only for tests:
    copy it (see `sweep_copy`) before changing anything.

    KDSWEEP_TEST_ANALYSIS_SWEEP=<sweep folder> reuses a sweep this fixture built before (to iterate on
    the analysis without re-running Ray for ~4 minutes)."""
    reuse = os.environ.get("KDSWEEP_TEST_ANALYSIS_SWEEP")
    if reuse:
        return SweepDir(Path(reuse))
    base = tmp_path_factory.mktemp("analysis-sweep")
    data = write_real_fasta(base / "proteins.fasta", 400)
    split = split_of(str(data), SplitSpec("hash"))
    teacher = base / "teacher_train.fasta"
    teacher.write_text("".join(f">t{i}\n{s}\n" for i, s in enumerate(split["train"] + split["test"][:TEACHER_SAW])))
    space = base / "space.yaml"
    space.write_text(yaml.safe_dump({**SPACE, "data": str(data), "teacher_train_data": str(teacher)}, sort_keys=False))
    store = base / "store"
    t0 = time.time()
    with ray_subprocess_env(KDSWEEP_CACHE=str(base / "cache")) as env:
        kdsweep(["sweep", "run", str(space), "--storage", str(store), "--name", SWEEP], env)
        kdsweep(["sweep", "replicate", SWEEP, "--seeds", "2", "--storage", str(store)], env)
    (base / "fixture_seconds.txt").write_text(f"{time.time() - t0:.1f}\n")
    return SweepDir(store / SWEEP)


@pytest.fixture
def sweep_copy(sweep, tmp_path):
    """A private copy of the session sweep (a copied sweep folder works where it is: its Optuna
    database is the optuna.db beside its sweep.json)."""

    def make(name: str = "copy") -> SweepDir:
        root = tmp_path / name / sweep.name
        shutil.copytree(sweep.root, root, ignore=shutil.ignore_patterns("analysis", "checkpoints", "student"))
        return SweepDir(root)

    return make
