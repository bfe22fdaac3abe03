"""Choosing an arm: on validation data, never on test (method §7).

Two choices read a sweep's results: the arm a scale's row of the scale table shows (among the
enhanced arms), and the config `kdsweep analyze` recommends to train (among all arms). Both
take the arm with the lowest mean **val** ppl_ratio over its replicates (their `val` metrics,
the full val split); before any replicate has val metrics, the arm of the search's best
completed trial (its objective: the final model's val_ppl), and say so. The test split only
reports what was chosen.

What choosing on val does not remove: the chosen arm's replicates are the very models it was
chosen on, and a seed that trained a lucky model is lucky on every split. With no real
difference between the arms, the chosen arm's test numbers are still biased in its favour
(tests/analysis/test_select.py measures by how much). `leave_one_seed_out` gives the
selection-free figure: for each seed, the arm chosen on the val values of the other seeds,
reported on that seed's test value, so no reported model took part in choosing itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from analysis.load import TEST, VAL, per_seed
from distill.rundir import COMPLETED

METRIC = "ppl_ratio"  # lower is better: the student's perplexity relative to its teacher's
ON_REPLICATES = "lowest mean val ppl_ratio over the replicates"
ON_SEARCH = "lowest search objective (final val_ppl): no replicate with val metrics yet"
NOTHING = "no completed trial at this scale"


@dataclass(frozen=True)
class Choice:
    arm: str | None
    basis: str  # what it was chosen on, in words (table notes, the report, the CLI)

    @property
    def on_replicates(self) -> bool:
        return self.basis.startswith(ON_REPLICATES)


def lowest_mean(by_arm: Mapping[str, pd.Series]) -> str | None:
    """The arm whose values have the lowest mean (arms without a value are not candidates)."""
    means = {a: float(s.mean()) for a, s in by_arm.items() if len(s)}
    return min(means, key=means.get) if means else None


def search_best(trials: pd.DataFrame, scale: str, arm: str | None = None) -> pd.Series | None:
    """The completed search trial with the lowest objective, of one study or (arm None) of a scale:
    the trial `sweep export` exports."""
    sel = trials[(trials["scale"] == scale) & (trials["status"] == COMPLETED) & trials["val_ppl"].notna()]
    if arm is not None:
        sel = sel[sel["arm"] == arm]
    return sel.loc[sel["val_ppl"].idxmin()] if not sel.empty else None


def choose_arm(ok: pd.DataFrame, trials: pd.DataFrame, scale: str, arms) -> Choice:
    """Among `arms` of `scale`: lowest mean val ppl_ratio over the usable replicates `ok`, else the
    search's best completed trial. Never test."""
    arms = list(arms)
    val = {a: per_seed(ok, scale, a, METRIC, VAL) for a in arms}
    if arm := lowest_mean(val):
        compared = [a for a in arms if len(val[a])]
        left_out = "" if len(compared) == len(arms) else (
            f" (among {', '.join(compared)}; the others have no replicate with val metrics)")
        return Choice(arm, ON_REPLICATES + left_out)
    best = search_best(trials[trials["arm"].isin(arms)], scale)
    return Choice(str(best["arm"]), ON_SEARCH) if best is not None else Choice(None, NOTHING)


def leave_one_seed_out(val: Mapping[str, pd.Series], test: Mapping[str, pd.Series],
                       baseline_test: pd.Series) -> tuple[pd.Series, dict[int, str]]:
    """Selection-free improvement % of choosing on val: for each seed s that the baseline and every
    arm share, the arm with the lowest mean val value over the other shared seeds, and
    100 · (baseline_s - chosen_s) / baseline_s on test. Returns (improvement by seed, arm chosen
    for each seed); empty with fewer than 2 shared seeds (nothing left to choose on)."""
    shared = set(baseline_test.index)
    for a in val:
        shared &= set(val[a].index) & set(test[a].index)
    seeds = sorted(shared)
    if len(seeds) < 2:
        return pd.Series(dtype=float), {}
    improvement, chosen = {}, {}
    for s in seeds:
        others = [k for k in seeds if k != s]
        arm = lowest_mean({a: v.loc[others] for a, v in val.items()})
        chosen[s] = arm
        improvement[s] = 100.0 * (baseline_test[s] - test[arm][s]) / baseline_test[s]
    return pd.Series(improvement, dtype=float), chosen


def selection_free_improvement(ok: pd.DataFrame, scale: str, baseline: str, arms) -> tuple[pd.Series, dict]:
    """`leave_one_seed_out` over the usable replicates of one scale (ppl_ratio, val chooses, test reports)."""
    val = {a: per_seed(ok, scale, a, METRIC, VAL) for a in arms}
    test = {a: per_seed(ok, scale, a, METRIC, TEST) for a in arms}
    return leave_one_seed_out(val, test, per_seed(ok, scale, baseline, METRIC, TEST))
