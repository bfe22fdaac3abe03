"""Non-dominated points: lower val ppl and lower val ECE are both better."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kdsweep.analysis.pareto import non_dominated, pareto_table


def test_non_dominated_by_hand():
    x = np.array([10.0, 11.0, 9.0, 12.0, 9.0, 10.0])
    y = np.array([0.05, 0.01, 0.09, 0.02, 0.10, 0.05])
    # 0: (10, .05) kept; 1: (11, .01) kept; 2: (9, .09) kept; 3: (12, .02) dominated by 1;
    # 4: (9, .10) dominated by 2 (same x, worse y); 5: a duplicate of 0: neither dominates the other
    assert non_dominated(x, y).tolist() == [True, True, True, False, False, True]


def test_non_dominated_matches_brute_force():
    rng = np.random.default_rng(3)
    x, y = rng.random(60), rng.random(60)
    want = [not any(x[j] <= x[i] and y[j] <= y[i] and (x[j] < x[i] or y[j] < y[i]) for j in range(60))
            for i in range(60)]
    assert non_dominated(x, y).tolist() == want


def test_pareto_table_lists_the_front_of_completed_trials_per_scale():
    trials = pd.DataFrame({
        "scale": ["a"] * 5 + ["b"], "arm": ["baseline", "both", "both", "calibration", "uncertainty", "both"],
        "trial_id": list("pqrstu"), "status": ["completed"] * 3 + ["stopped_early", "completed", "completed"],
        "val_ppl": [10.0, 11.0, 12.0, 5.0, 9.0, 7.0], "val_ece": [0.05, 0.01, 0.02, 0.0, np.nan, np.nan],
        "val_accuracy": [0.3] * 6, "lr": [1e-3] * 6})
    t = pareto_table(trials, ["a", "b"])
    assert t.data["trial_id"].tolist() == ["p", "q"]  # the stopped trial's better numbers are no result
    assert t.rows[0][-1] == "2 of 3" and t.rows[-1][-1] == "no completed trial with val ECE"
    assert any(n.startswith("a: 1 completed trial(s) without a val ECE") for n in t.notes)
