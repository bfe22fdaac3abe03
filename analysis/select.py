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
(tests/analysis/test_select.py measures by how much).

`selection_free` gives the figure and the verdict that are not: the seeds (or, with several
search replicates, the replicates) are taken in order, and each is reported with the arm chosen
**before** it: the first on the search's own objective (models of the search seed, which no
replicate shares), every later one on the mean val ppl_ratio of the ones before it. No reported
model takes part in choosing itself, and, unlike leaving one seed out (each seed chosen on all
the others), no seed's value takes part in choosing the arm of a seed that chose on it: under no
real effect the per-unit differences are then independent, each centred on 0, so the t-interval
over them has its nominal error rate. Leaving one seed out is centred too, but its differences
are positively correlated through the shared choices: in the null simulation its "better" rate
was 3.4 % at 3 seeds and 4.3 % at 5 for a nominal 2.5 % (tests/analysis/test_select.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kdsweep.analysis.load import TEST, VAL, per_seed, unit_of
from kdsweep.distill.run.rundir import COMPLETED

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


def search_best(trials: pd.DataFrame, scale: str, arm: str | None = None,
                search_replicate: int | None = None) -> pd.Series | None:
    """The completed search trial with the lowest objective, of one study (`arm`, `search_replicate`) or
    (None: any) of a scale: the trial `sweep export` exports."""
    sel = trials[(trials["scale"] == scale) & (trials["status"] == COMPLETED) & trials["val_ppl"].notna()]
    if arm is not None:
        sel = sel[sel["arm"] == arm]
    if search_replicate is not None and "search_replicate" in sel.columns:
        sel = sel[sel["search_replicate"] == search_replicate]
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


@dataclass(frozen=True)
class SelectionFree:
    """Each unit (a seed, or a search replicate) reported with the enhanced arm chosen before it."""

    diff: pd.Series  # test ppl_ratio of the chosen arm - baseline, per seed (indexed by seed)
    improvement: pd.Series  # 100 * (baseline - chosen) / baseline, per unit (the mean over its seeds)
    chosen: dict[int, str]  # unit -> arm
    unit: str  # what a unit is: "seed" or "search replicate"

    @property
    def text(self) -> str:
        return "; ".join(f"{self.unit} {u}: {a}" for u, a in self.chosen.items())


def chosen_before(val: np.ndarray, first: int | None) -> list[int | None]:
    """The arm (row index) chosen for each unit: `val` (arms, units) holds each arm's val value per unit,
    in order; unit 0 gets `first` (chosen on something no unit holds: the search objective; None when there
    is none), unit u > 0 the arm with the lowest mean over units 0 .. u-1 (ties: the first arm)."""
    before = np.cumsum(val, axis=1)[:, :-1] / np.arange(1, val.shape[1])  # (arms, units - 1)
    return [first, *(int(a) for a in np.argmin(before, axis=0))] if val.shape[1] else []


def selection_free_core(val: np.ndarray, test: np.ndarray, base: np.ndarray, unit: np.ndarray,
                        first: int | None) -> tuple[np.ndarray, list[int | None]]:
    """`val` (arms, units), `test` (arms, seeds), `base` (seeds,), `unit` (seeds,) the unit index of each seed:
    (chosen arm's test - baseline per seed, NaN where its unit had no arm to report; arm per unit)."""
    chosen = chosen_before(val, first)
    arm = np.array([-1 if chosen[u] is None else chosen[u] for u in unit], dtype=int)  # (seeds,)
    diff = np.where(arm >= 0, test[np.maximum(arm, 0), np.arange(len(base))] - base, np.nan)
    return diff, chosen


def selection_free(val: Mapping[str, pd.Series], test: Mapping[str, pd.Series], baseline_test: pd.Series,
                   first: str | None, unit_of: Mapping[int, int] | None = None) -> SelectionFree:
    """The selection-free comparison (module docstring) over the seeds that the baseline and every arm
    share (Series indexed by seed; `unit_of`: seed -> search replicate, the unit when there are several)."""
    arms = list(val)
    shared = set(baseline_test.index)
    for a in arms:
        shared &= set(val[a].index) & set(test[a].index)
    seeds = sorted(shared)
    by_unit = [unit_of.get(s, 0) if unit_of else 0 for s in seeds]
    replicates = len(set(by_unit)) > 1
    key = by_unit if replicates else seeds  # seed -> unit
    units = sorted(set(key))
    unit = np.array([units.index(k) for k in key], dtype=int)  # (seeds,)
    v = np.array([[np.mean([val[a][s] for s, k in zip(seeds, key) if k == u]) for u in units] for a in arms])
    t = np.array([[test[a][s] for s in seeds] for a in arms]).reshape(len(arms), len(seeds))
    b = baseline_test.loc[seeds].to_numpy(dtype=float)
    diff, chosen = selection_free_core(v.reshape(len(arms), len(units)), t, b, unit,
                                       arms.index(first) if first in arms else None)
    kept = ~np.isnan(diff)
    d = pd.Series(diff[kept], index=np.array(seeds, dtype=int)[kept], dtype=float)
    pct = pd.Series(-100.0 * diff[kept] / b[kept], index=d.index)
    improvement = pct.groupby(np.array(key)[kept]).mean() if kept.any() else pct
    return SelectionFree(d, improvement, {u: arms[a] for u, a in zip(units, chosen) if a is not None},
                         "search replicate" if replicates else "seed")


def selection_free_of(ok: pd.DataFrame, trials: pd.DataFrame, scale: str, baseline: str, arms) -> SelectionFree:
    """`selection_free` over the usable replicates of one scale (ppl_ratio: val chooses, test reports; the
    first unit's arm is the search's best completed trial among `arms`, search replicate 0)."""
    arms = list(arms)
    best = search_best(trials[trials["arm"].isin(arms)], scale, search_replicate=0)
    val = {a: per_seed(ok, scale, a, METRIC, VAL) for a in arms}
    test = {a: per_seed(ok, scale, a, METRIC, TEST) for a in arms}
    return selection_free(val, test, per_seed(ok, scale, baseline, METRIC, TEST),
                          str(best["arm"]) if best is not None else None, unit_of(ok))
