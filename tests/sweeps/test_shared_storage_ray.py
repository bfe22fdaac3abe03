"""A cluster sweep refuses storage its nodes don't share (sweeps/shared_storage.py).

On one machine every node shares the file system, so a node that does not see the sweep storage
is made for real: a worker node started with `ray start` inside its own mount namespace
(`unshare -m`, as root) with an empty tmpfs over the storage folder — what a node whose EFS
mount failed sees. The sweep is refused naming that node; with that node gone the same sweep
runs; and when such a node joins while a sweep runs, the first trial placed on it stops the
sweep with the same named error.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdsweep.distill.run.rundir import read_log
from kdsweep.sweeps.layout import SweepDir
from kdsweep.sweeps.trial import NODE_EVENT
from tests.fixtures import local_cluster, write_small_space

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(os.geteuid() != 0, reason="a node in its own mount namespace needs root (`unshare -m`)"),
]


@pytest.fixture(scope="module")
def cluster():
    """A head with no CPUs and one worker node with 1 CPU, all seeing the same file system."""
    with local_cluster([{"num_cpus": 1}]) as (c, _, env):
        yield c, env


def _live(c) -> list[dict]:
    return [n for n in c.global_state.node_table() if n["Alive"]]


def _wait_nodes(c, n: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while len(_live(c)) != n:
        assert time.time() < deadline, f"{len(_live(c))} live nodes, expected {n}"
        time.sleep(0.2)


class BlindNode:
    """A worker node (1 CPU, resource `blind`) whose processes see an empty tmpfs at `store`."""

    def __init__(self, c, env: dict, store: Path):
        ray_cli = Path(sys.executable).with_name("ray")
        script = (f"mount -t tmpfs -o size=1m tmpfs {store} && exec {ray_cli} start --address={c.address} "
                  "--num-cpus=1 --resources='{\"blind\": 1}' --block --disable-usage-stats")
        self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
                                     env=env, start_new_session=True, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.c = c

    def node_id(self) -> str:
        deadline = time.time() + 60
        while time.time() < deadline:
            for n in _live(self.c):
                if n["Resources"].get("blind"):
                    return n["NodeID"]
            assert self.proc.poll() is None, self.proc.stdout.read()
            time.sleep(0.2)
        raise AssertionError("the blind node did not join")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)  # `ray start --block` stops its node on SIGTERM
        self.proc.wait(timeout=60)


def _sweep(space: Path, store: Path, c, env: dict, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kdsweep", "sweep", "run", str(space), "--storage", str(store),
                             "--address", c.address], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def test_a_node_without_the_storage_is_named_before_any_trial_and_when_it_joins_later(
        tmp_path, cluster, small_fasta, char_teacher):
    c, env = cluster
    store = tmp_path / "store"
    store.mkdir()
    space = write_small_space(tmp_path, "shared", small_fasta, char_teacher, arms=["calibration"],
                              train={"max_steps": 8, "eval_interval": 4},
                              search={"trials_per_study": 1, "max_concurrent": 1, "grace_period": 8})

    # 1. A node that does not see --storage: refused, naming it and the path, before anything is written.
    blind = BlindNode(c, env, store)
    blind_id = blind.node_id()
    t0 = time.time()
    p = _sweep(space, store, c, env)
    out, err = p.communicate(timeout=300)
    refused_in = time.time() - t0
    assert p.returncode == 2, out[-2000:] + err[-2000:]
    [line] = [x for x in err.splitlines() if x.startswith("kdsweep: error:")]
    assert "storage is not shared by every node" in line and blind_id[:12] in line and str(store) in line
    assert "has no .kdsweep-node-check-" in line
    assert not (store / "shared").exists() and not list(store.glob(".kdsweep-node-check-*"))

    # 2. The same sweep, that node gone: it runs.
    blind.stop()
    _wait_nodes(c, 2)
    t0 = time.time()
    p = _sweep(space, store, c, env)
    out, err = p.communicate(timeout=600)
    ran_in = time.time() - t0
    assert p.returncode == 0, out[-2000:] + err[-2000:]
    assert "storage: 2 nodes see" in out
    assert not list(store.glob(".kdsweep-node-check-*"))  # sentinels removed at the end

    # 3. A blind node joins while a sweep runs: the trial placed on it stops the sweep, naming it.
    late = write_small_space(tmp_path, "late", small_fasta, char_teacher, arms=["calibration"],
                             # long enough that trial 1 still holds the good node's CPU when the blind node joins
                             train={"max_steps": 2000, "eval_interval": 100},
                             search={"trials_per_study": 2, "max_concurrent": 2, "grace_period": 2000})
    p = _sweep(late, store, c, env)
    sd = SweepDir(store / "late")
    deadline = time.time() + 300
    while not (sd.runs.is_dir() and any(read_log(r) for r in sd.runs.iterdir())):  # trial 1 holds the 1 CPU
        assert time.time() < deadline and p.poll() is None, p.communicate()
        time.sleep(0.2)
    blind = BlindNode(c, env, store)
    blind_id = blind.node_id()
    t0 = time.time()
    try:
        out, err = p.communicate(timeout=300)
    finally:
        blind.stop()
    print(f"\nrefused in {refused_in:.1f} s; the same sweep ran in {ran_in:.1f} s; stopped {time.time() - t0:.1f} s "
          "after a blind node joined")
    assert p.returncode == 2, out[-2000:] + err[-2000:]
    [line] = [x for x in err.splitlines() if x.startswith("kdsweep: error:")]
    assert "storage is not shared by node" in line and blind_id[:12] in line and str(store) in line
    # The trial on the blind node wrote nothing where the sweep can see it.
    nodes = {r["node_id"] for run in sd.runs.iterdir() for r in read_log(run) if r.get("event") == NODE_EVENT}
    assert blind_id not in nodes


def test_the_refusal_is_found_in_rays_wrapped_error():
    from ray.exceptions import RayTaskError

    from kdsweep.sweeps.shared_storage import StorageNotShared, refusal_in

    message = "storage is not shared by node 10.0.1.7 (w1, node ab12): /efs/x has no .kdsweep-node-check-1f"
    try:
        raise StorageNotShared(message)
    except StorageNotShared as e:
        wrapped = RayTaskError("local_trial", "Traceback (most recent call last):\n  ...", e).as_instanceof_cause()
    assert refusal_in(wrapped) == message
    assert refusal_in(RuntimeError("Training worker 0 failed:\nStorageNotShared: " + message)) == message
    assert refusal_in(RuntimeError("CUDA out of memory")) is None and refusal_in(None) is None
