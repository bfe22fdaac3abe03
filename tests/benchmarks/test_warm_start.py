"""benchmarks/warm_start.py's figures on constructed trials (the sweeps themselves are not run here)."""

import math

import optuna
import pytest
from optuna.trial import TrialState

from benchmarks.warm_start import compare, steps_to_reach, variant
from kdsweep.distill.errors import ConfigError
from kdsweep.sweeps.space import load_space
from kdsweep.sweeps.study import ATTR_STEP


def _trial(number, value, steps, state=TrialState.COMPLETE):
    t = optuna.trial.create_trial(state=state, value=value if state == TrialState.COMPLETE else None,
                                  user_attrs={ATTR_STEP: steps})
    t.number = number
    return t


def test_steps_to_reach_counts_in_trial_order():
    trials = [_trial(2, 10.0, 40), _trial(0, 12.0, 40), _trial(1, None, 10, TrialState.PRUNED)]
    assert steps_to_reach(trials, 10.1) == 90  # 40 (#0) + 10 (#1, stopped early) + 40 (#2 reaches it)
    assert steps_to_reach(trials, 12.0) == 40
    assert steps_to_reach(trials, 9.0) is None


def test_compare_uses_the_cold_best_as_target():
    cold = {"s/baseline": [_trial(0, 20.0, 40), _trial(1, 10.0, 40)]}
    warm = {"s/baseline": [_trial(0, 10.05, 40), _trial(1, 30.0, 40)]}
    (row,) = compare(cold, warm)
    assert (row["best_cold"], row["best_warm"], row["steps_cold"], row["steps_warm"]) == (10.0, 10.05, 80, 40)
    (empty,) = compare({"s/baseline": []}, {})
    assert math.isnan(empty["best_cold"]) and empty["steps_warm"] is None


def test_variants_differ_only_in_warm_start():
    space = load_space("demo")
    cold, warm = variant(space, False), variant(space, True, ["demo-xs", "demo-s"])
    assert (cold.search["warm_start"], warm.search["warm_start"]) == ("none", "previous_scale")
    assert {**cold.search, "warm_start": None} == {**warm.search, "warm_start": None}
    with pytest.raises(ConfigError, match="scales"):
        variant(space, True, ["nope"])
