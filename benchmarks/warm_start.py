"""What warm-starting a scale from the scale below buys: the same space cold and warm, back to back.

    python benchmarks/warm_start.py [--space demo] [--scales demo-xs,demo-s] [--storage DIR]
    python benchmarks/warm_start.py --space micro_ablation --scales micro,tiny     # GPU

Two sweeps of the same space in this process, one after the other, differing only in
`search.warm_start` (`none`: every study starts cold; `previous_scale`: each scale's studies
first try the smaller scale's top-k configs, sweeps/warmstart.py), same budget and seeds.
Prints per (scale, arm) study: the best objective (final val_ppl of the best completed trial)
of each sweep, and the trial-steps (the sum over its trials, in the order Optuna numbered
them, of the steps each trained) each sweep used before a completed trial came within 1 % of
the COLD study's best ("-": never). The smallest scale has no warm start: its two studies
should agree up to concurrency. Results go in docs/benchmarks.md; if warm starting does not
help, the default stays `none`.
"""

from __future__ import annotations

import argparse
import copy
import math
import tempfile
import time
from pathlib import Path

from optuna.trial import FrozenTrial, TrialState

from kdsweep.sweeps.runner import run_sweep
from kdsweep.sweeps.space import SearchSpace, load_space, parse_space
from kdsweep.sweeps.study import ATTR_STEP, best_trial, study_trials

WITHIN = 0.01  # "reached": a completed trial within 1 % of the cold study's best


def variant(space: SearchSpace, warm: bool, scales: list[str] | None = None, trials: int | None = None,
            top_k: int | None = None) -> SearchSpace:
    raw = copy.deepcopy(space.raw)
    if scales:  # warm start needs two scales; the micro ablation space ships one
        raw["scales"] = scales
    search = raw.setdefault("search", {})
    search["warm_start"] = "previous_scale" if warm else "none"
    if trials:  # a budget above 2 x top_k leaves the sampler trials of its own after the seeds
        search["trials_per_study"] = trials
    if top_k:
        search["warm_start_top_k"] = top_k
    raw["name"] = f"{space.name}-{'warm' if warm else 'cold'}"
    return parse_space(raw, space.source)


def steps_to_reach(trials: list[FrozenTrial], target: float) -> int | None:
    """Trial-steps spent, in trial-number order, up to and including the first completed trial with
    value <= target (None: none reached it). Each trial counts the steps it trained (user attr `step`)."""
    spent = 0
    for t in sorted(trials, key=lambda t: t.number):
        spent += int(t.user_attrs.get(ATTR_STEP, 0))
        if t.state == TrialState.COMPLETE and t.value is not None and t.value <= target:
            return spent
    return None


def compare(cold: dict[str, list[FrozenTrial]], warm: dict[str, list[FrozenTrial]]) -> list[dict]:
    """Per study: each sweep's best value and trial-steps to within WITHIN of the cold study's best."""
    rows = []
    for name, cold_trials in cold.items():
        b_cold, b_warm = best_trial(cold_trials), best_trial(warm.get(name, []))
        target = b_cold.value * (1 + WITHIN) if b_cold else math.nan
        rows.append({"study": name, "best_cold": b_cold.value if b_cold else math.nan,
                     "best_warm": b_warm.value if b_warm else math.nan,
                     "steps_cold": steps_to_reach(cold_trials, target) if b_cold else None,
                     "steps_warm": steps_to_reach(warm.get(name, []), target) if b_cold else None})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="demo")
    ap.add_argument("--scales", help="comma-separated scales instead of the space's (at least two)")
    ap.add_argument("--storage", help="where the two sweeps go (default: a new temporary folder)")
    ap.add_argument("--trials", type=int, help="search.trials_per_study instead of the space's")
    ap.add_argument("--top-k", type=int, help="search.warm_start_top_k instead of the space's")
    args = ap.parse_args()
    storage = args.storage or tempfile.mkdtemp(prefix="kdsweep-warm-start-")
    space = load_space(args.space)
    trials, wall = {}, {}
    for warm in (False, True):
        v = variant(space, warm, args.scales.split(",") if args.scales else None, args.trials, args.top_k)
        start = time.perf_counter()
        sd = run_sweep(v, storage=storage, log=lambda _: None)
        wall[warm] = time.perf_counter() - start
        trials[warm] = study_trials(sd)[1]
        print(f"{v.name}: {wall[warm]:.0f} s wall -> {Path(storage) / v.name}", flush=True)
    print(f"{'study':<28}{'best cold':>11}{'best warm':>11}{'steps cold':>12}{'steps warm':>12}  (to within 1 %)")
    for r in compare(trials[False], trials[True]):
        shown = {k: "-" if r[k] is None else str(r[k]) for k in ("steps_cold", "steps_warm")}
        print(f"{r['study']:<28}{r['best_cold']:>11.4f}{r['best_warm']:>11.4f}{shown['steps_cold']:>12}"
              f"{shown['steps_warm']:>12}")
    print(f"wall: cold {wall[False]:.0f} s, warm {wall[True]:.0f} s")


if __name__ == "__main__":
    main()
