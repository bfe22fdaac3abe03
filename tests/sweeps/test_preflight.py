"""Resources against the cluster: the rule `check_resources` applies to what `ray.nodes()` reports.

The fixed-cluster refusals are also checked on a real Ray cluster (tests/kdsweep/test_bad_inputs.py,
`sweep-64-cpus-per-trial`, `sweep-gpu-on-cpu-cluster`); an autoscaling cluster cannot be made here,
so its branch is checked with the node types `ray up` writes.
"""

import pytest

from kdsweep.distill.errors import ConfigError
from kdsweep.sweeps.preflight import resource_plan

NODES = [{"CPU": 0.0}, {"CPU": 4.0, "memory": 8e9}, {"CPU": 4.0}]  # a CPU-only head and two workers
TYPES = {"head": {"CPU": 4.0}, "gpu_worker": {"CPU": 8.0, "GPU": 1.0}}


def test_a_bundle_that_fits_one_node_passes():
    assert resource_plan([("trial", {"CPU": 4.0})], NODES, None) == []


def test_a_bundle_no_node_can_hold_names_the_nodes():
    with pytest.raises(ConfigError, match=r"each trial needs 1 CPU, 1 GPU, but no node .*its nodes: 0 CPU, 0 GPU; "
                                          r"4 CPU, 0 GPU; 4 CPU, 0 GPU"):
        resource_plan([("trial", {"CPU": 1.0, "GPU": 1.0})], NODES, None)


def test_bundles_that_fit_alone_but_not_together():
    # Ray Train: the trial driver plus three 3-CPU workers = 10 CPUs on a cluster of 8.
    bundles = [("trial driver", {"CPU": 1.0})] + [("Ray Train worker", {"CPU": 3.0})] * 3
    with pytest.raises(ConfigError, match="one trial needs 10 CPU, 0 GPU at once"):
        resource_plan(bundles, NODES, None)


def test_an_autoscaling_cluster_says_what_it_will_request():
    notes = resource_plan([("trial", {"CPU": 1.0, "GPU": 1.0})], NODES, TYPES)
    assert notes == ["no node can hold a trial (1 CPU, 1 GPU) yet: the autoscaler will be asked for a node "
                     "of type gpu_worker"]
    with pytest.raises(ConfigError, match="no node type of this autoscaling cluster offers that: head: 4 CPU; "
                                          "gpu_worker: 8 CPU, 1 GPU"):
        resource_plan([("trial", {"CPU": 1.0, "GPU": 4.0})], NODES, TYPES)


def _space(**search):
    import yaml

    from kdsweep.sweeps.space import SEARCH_SPACES_DIR, parse_space

    raw = yaml.safe_load((SEARCH_SPACES_DIR / "demo.yaml").read_text())
    raw["train"] = {**raw.get("train", {}), "max_steps": 40, "eval_interval": 10, "max_tokens": None}
    raw["search"] = {**raw.get("search", {}), **search}
    return parse_space(raw)


def test_asha_settings_that_can_never_stop_a_trial_are_named():
    from kdsweep.sweeps.preflight import asha_warnings

    assert asha_warnings(_space(grace_period=10, trials_per_study=4)) == []
    assert asha_warnings(_space(grace_period=10, trials_per_study=4, early_stopping=False)) == []
    [grace] = asha_warnings(_space(grace_period=50, trials_per_study=4))
    assert grace.startswith("search.grace_period 50 >= the 40 training steps of a trial: ASHA can never stop")
    [one] = asha_warnings(_space(grace_period=10, trials_per_study=1))
    assert one.startswith("search.trials_per_study 1: ASHA compares the trials of one study")
