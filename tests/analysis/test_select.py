"""Choosing on val, reporting on test: what it removes, what it does not, and the rule itself.

The simulation is the issue's: a baseline and three enhanced arms with no real effect (the
same true ppl_ratio), 3 seeds, 2.5 % noise, many repetitions; each repetition "reports" the
improvement of the chosen arm over baseline on test, as the scale table does. A run's value on
a split is 1.2 * (1 + seed luck + split luck): the seed's luck belongs to the trained model and
is the same on both splits, the split's luck (which proteins it holds) is its own.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.select import ON_REPLICATES, ON_SEARCH, choose_arm, leave_one_seed_out, lowest_mean
from analysis.tables import improvement_cell
from sweeps.space import BASELINE, ENHANCED_ARMS

SEEDS = [1, 2, 3]
REPS = 2000


def simulate(seed_sd: float, split_sd: float, reps: int = REPS, rng_seed: int = 0) -> dict[str, tuple[float, float]]:
    """{rule: (mean reported improvement %, share of repetitions reporting one > 0)} for choosing on
    test, on val, and leave-one-seed-out on val."""
    rng = np.random.default_rng(rng_seed)
    out: dict[str, list[float]] = {"test": [], "val": [], "leave_one_seed_out": []}
    arms = (BASELINE, *ENHANCED_ARMS)
    for _ in range(reps):
        luck = {a: rng.normal(0, seed_sd, len(SEEDS)) for a in arms}
        split = {name: {a: pd.Series(1.2 * (1 + luck[a] + rng.normal(0, split_sd, len(SEEDS))), index=SEEDS)
                        for a in arms} for name in ("val", "test")}
        for rule in ("test", "val"):
            chosen = lowest_mean({a: split[rule][a] for a in ENHANCED_ARMS})
            out[rule].append(improvement_cell(split["test"][BASELINE], split["test"][chosen]).mean)
        free, _ = leave_one_seed_out({a: split["val"][a] for a in ENHANCED_ARMS},
                                     {a: split["test"][a] for a in ENHANCED_ARMS}, split["test"][BASELINE])
        out["leave_one_seed_out"].append(float(free.mean()))
    return {rule: (float(np.mean(v)), float(np.mean(np.array(v) > 0))) for rule, v in out.items()}


def _show(world: str, res: dict) -> None:
    for rule, (mean, pos) in res.items():
        print(f"{world}: choose on {rule}: mean improvement {mean:+.2f} %, positive {100 * pos:.0f} %")


def test_choosing_on_val_removes_the_split_luck():
    """Noise of the splits only (each split's proteins): choosing on test reports a gain that is not
    there; choosing on val and reporting on test does not."""
    res = simulate(seed_sd=0.0, split_sd=0.025)
    _show("split noise", res)
    assert res["test"][0] > 0.8 and res["test"][1] > 0.68
    assert abs(res["val"][0]) < 0.3 and abs(res["val"][1] - 0.5) < 0.05
    assert abs(res["leave_one_seed_out"][0]) < 0.3


def test_choosing_on_val_keeps_the_seed_luck_leaving_a_seed_out_removes_it():
    """The issue's setting: 2.5 % seed noise. A lucky seed trained a better model, on val and on test
    alike, so the chosen arm's own replicates still flatter it (about as much as choosing on test);
    choosing without the seed that is reported does not."""
    res = simulate(seed_sd=0.025, split_sd=0.0)
    _show("seed noise", res)
    assert res["test"][0] > 0.8 and res["val"][0] > 0.8 and res["val"][1] > 0.68
    assert abs(res["leave_one_seed_out"][0]) < 0.3 and abs(res["leave_one_seed_out"][1] - 0.5) < 0.05


# ---- the rule on a replicates frame -------------------------------------------------------------


def _reps(values: dict[str, tuple[float, float]], with_val: bool = True) -> pd.DataFrame:
    """Usable replicates of scale 's': arm -> (val ppl_ratio, test ppl_ratio), seeds 1-3 (small jitter)."""
    rows = []
    for arm, (val, test) in values.items():
        for k, seed in enumerate(SEEDS):
            row = {"scale": "s", "arm": arm, "seed": seed, "status": "completed", "has_test": True,
                   "test_ppl_ratio": test + 0.001 * k}
            if with_val:
                row["val_ppl_ratio"] = val + 0.001 * k
            rows.append(row)
    return pd.DataFrame(rows)


TRIALS = pd.DataFrame({"scale": ["s", "s", "s"], "arm": ["uncertainty", "both", "calibration"],
                       "status": ["completed", "completed", "stopped_early"], "val_ppl": [20.0, 21.0, 5.0],
                       "trial_id": ["a", "b", "c"]})


def test_choice_follows_val_where_val_and_test_disagree():
    reps = _reps({BASELINE: (1.30, 1.30), "uncertainty": (1.25, 1.20), "calibration": (1.21, 1.26),
                  "both": (1.28, 1.10)})
    c = choose_arm(reps, TRIALS, "s", ENHANCED_ARMS)
    assert c.arm == "calibration" and c.basis == ON_REPLICATES and c.on_replicates
    assert choose_arm(reps, TRIALS, "s", [BASELINE, *ENHANCED_ARMS]).arm == "calibration"
    # an arm without val metrics is no candidate, and the basis says which were
    reps.loc[reps["arm"] == "calibration", "val_ppl_ratio"] = math.nan
    c = choose_arm(reps, TRIALS, "s", ENHANCED_ARMS)
    assert c.arm == "uncertainty" and "among uncertainty, both" in c.basis


def test_without_val_metrics_the_search_objective_chooses_never_test():
    reps = _reps({BASELINE: (0, 1.30), "uncertainty": (0, 1.25), "both": (0, 1.10)}, with_val=False)
    c = choose_arm(reps, TRIALS, "s", ENHANCED_ARMS)
    # test says "both"; the search's best completed trial (the stopped one's 5.0 is no objective) is uncertainty
    assert c.arm == "uncertainty" and c.basis == ON_SEARCH and not c.on_replicates
    assert choose_arm(reps.iloc[0:0], TRIALS[TRIALS["status"] != "completed"], "s", ENHANCED_ARMS).arm is None


def test_leave_one_seed_out_never_reports_a_seed_it_chose_on():
    # seed 3 is a lucky seed for "both" only on val; every other seed says "uncertainty"
    val = {"uncertainty": pd.Series([1.20, 1.20, 1.30], index=SEEDS), "both": pd.Series([1.25, 1.25, 1.00], index=SEEDS)}
    test = {"uncertainty": pd.Series([1.20, 1.20, 1.20], index=SEEDS), "both": pd.Series([1.30, 1.30, 1.30], index=SEEDS)}
    base = pd.Series([1.25, 1.25, 1.25], index=SEEDS)
    imp, chosen = leave_one_seed_out(val, test, base)
    assert chosen == {1: "both", 2: "both", 3: "uncertainty"}  # without seed 3, uncertainty wins
    assert imp[3] == pytest.approx(100 * (1.25 - 1.20) / 1.25) and imp[1] == pytest.approx(100 * (1.25 - 1.30) / 1.25)
    assert leave_one_seed_out({"both": val["both"].iloc[:1]}, {"both": test["both"]}, base)[0].empty
