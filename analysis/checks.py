"""What a reader must be told before believing the tables: the report's warnings (method §7).

* few seeds: a (scale, arm) with fewer than 3 usable replicates. With n = 2 the 95 %
  t-interval is 12.7 standard errors wide each side, so no verdict can be anything but
  inconclusive; with n = 1 there is no interval at all.
* edge of a search range: the exported best config's value of a searched parameter lies
  within 5 % of its range's low or high end (measured on a log scale for loguniform): the
  optimum may lie outside what was searched.
* degenerate model: every completed replicate of an arm has the same test accuracy (to 1e-4),
  or some replicate has accuracy 0. Such students predict (nearly) the same token
  everywhere; their ECE is the calibration of that one prediction, and differences between
  arms say little about what distillation taught them.
* composition only: a replicate not measurably better than the unigram floor (`analysis.floors`).
* search noise not included: one search per study, so no verdict's interval holds the luck of
  the search (method §7).
* teacher exposure unknown: no `teacher_train_data`, so nobody knows how many held-out proteins the
  teacher trained on.
"""

from __future__ import annotations

import math

import pandas as pd

from kdsweep.analysis.floors import floor_warnings
from kdsweep.analysis.fmt import sig
from kdsweep.analysis.load import per_seed, usable_replicates
from kdsweep.analysis.select import search_best
from kdsweep.analysis.stats import LEVEL, t_quantile
from kdsweep.distill.data.exposure import UNKNOWN
from kdsweep.sweeps.space import SearchSpace

MIN_SEEDS = 3
EDGE = 0.05  # share of a range's width (log width for loguniform) that counts as its edge
SAME_ACCURACY = 1e-4
MORE_SEEDS = f"kdsweep sweep replicate NAME --seeds {MIN_SEEDS}"  # without a sweep to name (report: its own)


def few_seeds(reps: pd.DataFrame, scales, arms, more: str = MORE_SEEDS) -> list[str]:
    """One warning per replicate count below MIN_SEEDS, naming every (scale, arm) that has it and the
    command (`more`: the sweep's own name and storage) that adds seeds."""
    ok = usable_replicates(reps)
    by_n: dict[int, list[str]] = {}
    for scale in scales:
        for arm in arms:
            n = len(per_seed(ok, scale, arm, "ppl_ratio"))
            if n < MIN_SEEDS:
                by_n.setdefault(n, []).append(f"{scale}/{arm}")
    out = []
    for n, studies in sorted(by_n.items()):
        why = ("no usable replicate: missing from every table" if n == 0 else
               "one replicate: no spread and no interval" if n == 1 else
               f"a {round(100 * LEVEL)} % t-interval is ± {t_quantile(1 - (1 - LEVEL) / 2, n - 1):.1f} "
               "standard errors wide, so verdicts are nearly always inconclusive")
        out.append(f"n={n} usable replicate(s), fewer than {MIN_SEEDS}, in {', '.join(studies)}: {why}. More seeds: "
                   f"{more}")
    return out


def range_position(value: float, low: float, high: float, log: bool) -> float:
    """Where `value` lies in [low, high]: 0 at low, 1 at high (log scale if `log`)."""
    if log:
        value, low, high = math.log(value), math.log(low), math.log(high)
    return (value - low) / (high - low)


def edge_of_range(space: SearchSpace, trials: pd.DataFrame) -> list[str]:
    out = []
    for study in space.studies:
        best = search_best(trials, study.scale, study.arm, study.search_replicate)
        if best is None:
            continue
        for name, dist in study.params.items():
            if dist.type == "choice" or dist.high <= dist.low or name not in best or pd.isna(best[name]):
                continue
            pos = range_position(float(best[name]), dist.low, dist.high, dist.type == "loguniform")
            if EDGE < pos < 1 - EDGE:
                continue
            scale = "; log scale" if dist.type == "loguniform" else ""
            out.append(f"{study.name}: the best config's {name} = {sig(float(best[name]))} lies at the "
                       f"{'low' if pos <= EDGE else 'high'} edge of its search range [{sig(dist.low)}, "
                       f"{sig(dist.high)}] ({dist.type}, within {100 * EDGE:g} % of the range{scale}): the optimum may "
                       "lie outside it; widen the range.")
    return out


def degenerate(reps: pd.DataFrame, scales, arms) -> list[str]:
    """Per arm (an arm can be degenerate where another at its scale is not): accuracy 0, or the same
    accuracy in every replicate."""
    ok = usable_replicates(reps)
    out = []
    for scale in scales:
        for arm in arms:
            acc = per_seed(ok, scale, arm, "accuracy")
            if acc.empty:
                continue
            zero = [int(s) for s, v in acc.items() if v == 0]
            if zero:
                out.append(f"{scale}/{arm}: test accuracy 0 in seed {', '.join(map(str, zero))}: a degenerate model; "
                           "its ECE is its mean confidence.")
            elif len(acc) >= 2 and acc.max() - acc.min() < SAME_ACCURACY:
                out.append(f"{scale}/{arm}: every one of its {len(acc)} completed replicates has test accuracy "
                           f"{sig(float(acc.min()))} (spread < {SAME_ACCURACY:g}): a degenerate model, predicting "
                           "(nearly) the same token everywhere; its ECE is the calibration of that one prediction and "
                           "its differences from other arms say little about what distillation taught.")
    return out


def search_noise(space: SearchSpace) -> list[str]:
    if space.search_replicates > 1:
        return []
    return ["search noise is not included in any verdict: one search per (scale, arm) (search.search_replicates = "
            "1), so a tuned-vs-tuned 'better' may be the luck of that arm's search; run with --search-replicates R "
            "(R >= 3) for intervals that include it, and read the mechanism table (enhancement on vs off at the same "
            "config) for what the enhancement itself does."]


def replicate_command(sweep: str, storage: str) -> str:
    """The command that brings every (scale, arm) of a sweep to MIN_SEEDS replicates."""
    return f"kdsweep sweep replicate {sweep} --seeds {MIN_SEEDS} --storage {storage}"


def report_warnings(space: SearchSpace, trials: pd.DataFrame, reps: pd.DataFrame, exposure_unknown: bool = False,
                    more: str = MORE_SEEDS) -> list[str]:
    """Every warning: students at the composition floor and degenerate models first (they void the rest),
    then search noise and teacher exposure, search ranges, then seeds."""
    scales, arms = list(space.scales), list(space.arms)
    exposure = ([f"teacher exposure: {UNKNOWN}: the split keeps val/test proteins from the student's training "
                 "data, not from the teacher's; ppl_ratio and kl_teacher are flattered by whatever it saw (give "
                 "teacher_train_data in the space)."] if exposure_unknown else [])
    return (floor_warnings(usable_replicates(reps), scales, arms) + degenerate(reps, scales, arms)
            + search_noise(space) + exposure + edge_of_range(space, trials) + few_seeds(reps, scales, arms, more))
