"""A sweep on a real multi-node Ray cluster, and losing a worker node under a running trial.

The cluster is `ray.cluster_utils.Cluster` (as Ray's own fault-tolerance tests do): a head
with no CPUs, so every trial lands on a worker node, and two worker nodes with one logical
CPU each and a resource naming the node. The sweep joins it as a user would, with
`kdsweep sweep run --address`, from its own process; the sweep folder is on storage every
node reads (one machine: a local folder). Health checks are shortened so the cluster
declares a removed node dead in about 2 s instead of 12 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from kdsweep.distill.run.rundir import is_eval_row, read_log
from kdsweep.sweeps.layout import SweepDir
from kdsweep.sweeps.study import ATTR_STATUS, ATTR_TRIAL, ORPHANED, open_study
from kdsweep.sweeps.trial import NODE_EVENT
from tests.fixtures import eval_steps, local_cluster, write_small_space

pytestmark = pytest.mark.ray

STEPS = 48  # long enough that the driver sees a trial mid-way (a 24-step trial took ~4 s)


@pytest.fixture(scope="module")
def cluster():
    with local_cluster([{"num_cpus": 1, "resources": {f"node_{i}": 1}} for i in range(2)]) as made:
        yield made


def _node_ids(run_dir: Path) -> list[str]:
    """The node of each attempt of a run, in order."""
    return [r["node_id"] for r in read_log(run_dir) if r.get("event") == NODE_EVENT]


def test_sweep_across_nodes_survives_losing_one(tmp_path, cluster, small_fasta, char_teacher):
    c, nodes, env = cluster
    store = tmp_path / "store"
    # No ASHA stop before the full budget (grace = max_steps): every trial must reach its last step.
    space = write_small_space(tmp_path, "multinode", small_fasta, char_teacher,
                        train={"max_steps": STEPS, "eval_interval": 4, "block_size": 256},
                        search={"trials_per_study": 2, "max_concurrent": 2, "grace_period": STEPS})
    t0 = time.time()
    driver = subprocess.Popen([sys.executable, "-m", "kdsweep", "sweep", "run", str(space), "--storage", str(store),
                               "--address", c.address], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    sd = SweepDir(store / "multinode")
    victim, lost = None, None
    deadline = time.time() + 600
    while victim is None and time.time() < deadline:
        time.sleep(0.2)
        assert driver.poll() is None, driver.stdout.read()[-3000:]
        for run in sd.runs.glob("*") if sd.runs.is_dir() else []:
            steps = eval_steps(run)
            # Mid-way on a worker node: past a checkpoint, well before the end. (Trials reuse their
            # actors, so which node runs which trial is Tune's choice: the victim's node is lost.)
            on = _node_ids(run)[-1:]
            if on and steps and 8 <= steps[-1] <= STEPS - 8:
                victim, lost = run, next(n for n in nodes if n.node_id == on[0])
    assert victim is not None, "no trial reached mid-way"
    removed_at, step_at_loss = time.time(), eval_steps(victim)[-1]
    c.remove_node(lost, allow_graceful=False)  # its raylet and workers die, as in a machine crash
    replacement = c.add_node(num_cpus=1, resources={"node_2": 1})  # as an autoscaler would replace it
    resumed_after = None
    while driver.poll() is None and time.time() < deadline:
        if resumed_after is None and any(r.get("event") == "resumed" for r in read_log(victim)):
            resumed_after = time.time() - removed_at
        time.sleep(0.2)
    out = driver.stdout.read()
    assert driver.returncode == 0, out[-3000:]
    assert "SQLite is not safe" in out  # joined a cluster with the default SQLite storage: warned
    print(f"\nsweep {time.time() - t0:.1f} s; node removed at step {step_at_loss}; "
          f"trial resumed {resumed_after:.1f} s later")

    # Every study ran its full budget, each trial once, all completed, on at least two nodes.
    run_ids = []
    for study in ("demo-xs/baseline", "demo-xs/both"):
        trials = [t for t in open_study(sd.storage_url(), sd.name, study).get_trials()
                  if t.user_attrs.get(ATTR_STATUS) != ORPHANED]
        assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials), study
        run_ids += [t.user_attrs[ATTR_TRIAL] for t in trials]
    assert sorted(run_ids) == sorted(d.name for d in sd.runs.iterdir())
    ran_on = {n for rid in run_ids for n in _node_ids(sd.runs / rid)}
    assert lost.node_id in ran_on and len(ran_on) >= 2
    for rid in run_ids:
        assert eval_steps(sd.runs / rid) == list(range(4, STEPS + 1, 4)), rid  # no step lost or counted twice
        assert json.loads((sd.runs / rid / "metrics.json").read_text())["status"] == "completed"

    # The trial on the lost node moved to another node and continued from its last checkpoint.
    attempts = _node_ids(victim)
    others = {n.node_id for n in nodes if n is not lost} | {replacement.node_id}
    assert attempts[0] == lost.node_id and attempts[-1] in others
    log = read_log(victim)
    [at] = [i for i, r in enumerate(log) if r.get("event") == "resumed"]
    # The node dies some time after remove_node is called: the trial may evaluate (and save) once
    # more on the lost node meanwhile, so the bound is the last step it logged there, not step_at_loss.
    steps_on_lost = [r["step"] for r in log[:at] if is_eval_row(r)]
    assert steps_on_lost[-1] >= step_at_loss
    assert 4 <= log[at]["step"] <= steps_on_lost[-1]

    # `sweep status` agrees with Optuna and the run folders.
    p = subprocess.run([sys.executable, "-m", "kdsweep", "sweep", "status", "multinode", "--storage", str(store),
                        "--json"], env=env, capture_output=True, text=True, timeout=120)
    rows = json.loads(p.stdout)
    assert [(r["completed"], r["pending"], r["running"], r["failed"]) for r in rows] == [(2, 0, 0, 0)] * 2
    assert json.loads(sd.meta_path.read_text())["state"] == "finished"
