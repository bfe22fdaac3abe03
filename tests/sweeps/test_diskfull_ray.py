"""A sweep whose disk fills up under its trials, for real: a tmpfs in a private mount namespace
(tests.fixtures.on_small_disk) holds the storage; once a trial has reported, the disk is filled.

Before: each attempt failed, Tune retried it, the next trial failed the same way, and the sweep
ended in a `WorkerCrashedError` or SQLite's "database or disk is full" traceback. Now the first
attempt that fails on the full disk stops the sweep (sweeps/failfast.py) with one line naming
the path, exit 1; after the space is freed, `sweep resume` finishes it.
"""

from __future__ import annotations

import sys

import pytest
import yaml

from tests.fixtures import SMALL_SPACE, on_small_disk, ray_subprocess_env

pytestmark = pytest.mark.ray


def test_a_sweep_on_a_disk_that_fills_up_stops_with_the_path(tmp_path, char_teacher, small_fasta):
    space = tmp_path / "full.yaml"
    space.write_text(yaml.safe_dump({
        **SMALL_SPACE, "name": "full", "teacher": str(char_teacher), "data": str(small_fasta), "arms": ["baseline"],
        "params": {k: v for k, v in SMALL_SPACE["params"].items() if k != "smoothing"},
        "train": {**SMALL_SPACE["train"], "max_steps": 40, "eval_interval": 4},
        "search": {"trials_per_study": 2, "max_concurrent": 1, "early_stopping": False, "max_failures": 2},
        "cache": {"enabled": False}}))
    kdsweep = f"{sys.executable} -m kdsweep"
    runs = "$DISK/store/full/runs"
    with ray_subprocess_env() as env:
        p = on_small_disk(tmp_path, f"""
{kdsweep} sweep run {space} --storage $DISK/store > {tmp_path}/run.out 2> {tmp_path}/run.err &
driver=$!
for i in $(seq 1200); do grep -qs val_ppl {runs}/*/metrics.jsonl && break; sleep 0.25; done
dd if=/dev/zero of=$DISK/fill bs=4k 2>/dev/null     # the disk fills up under the running trial
wait $driver; echo $? > {tmp_path}/run.rc
rm $DISK/fill                                        # space freed
{kdsweep} sweep resume full --storage $DISK/store > {tmp_path}/resume.out 2> {tmp_path}/resume.err
echo $? > {tmp_path}/resume.rc
""", size="64m", env=env, timeout=900)
    err = (tmp_path / "run.err").read_text()
    assert (tmp_path / "run.rc").read_text().strip() == "1", err[-3000:] + p.stderr[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("kdsweep: error: no space left on the device "), last
    assert f"{tmp_path}/disk/store" in last, last  # the full path is named
    assert "Traceback" not in err.split("kdsweep: error:")[-1]
    resumed = (tmp_path / "resume.err").read_text()
    assert (tmp_path / "resume.rc").read_text().strip() == "0", resumed[-3000:]
