"""What early stopping buys: the demo space's trials with and without ASHA, back to back.

    python benchmarks/asha_value.py [--space demo] [--storage DIR]

Two sweeps of the same space in this process, one after the other, differing only in
`search.early_stopping` (true: ASHA per study as shipped; false: every trial trains its full
budget). So that both sweeps run the SAME trials, TPE is switched off for both
(`search.startup_trials` = `trials_per_study`: every trial is a seeded random draw of its
study's sampler, identical in the two sweeps, which is checked); with TPE the later
proposals would depend on what ASHA stopped, and the two sweeps would compare different
trials.

Prints per (scale, arm) study: the best objective (the final val_ppl of the best completed
trial) of each sweep, and the trial-steps used (the sum over its trials of the steps each
trained); then the totals, the sweeps' wall times, and the ratios.

Right before each sweep, `kdsweep estimate`'s figures for it are computed (its probe runs
under the same load as the sweep that follows), and its wall-clock estimate is printed
beside the sweep's real wall time: the check of the estimate (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

from kdsweep.sweeps.estimate import estimate, format_estimate
from kdsweep.sweeps.runner import run_sweep
from kdsweep.sweeps.space import load_space, parse_space
from kdsweep.sweeps.study import ATTR_STEP, best_trial, study_trials


def variant(space, early_stopping: bool):
    raw = copy.deepcopy(space.raw)
    search = raw.setdefault("search", {})
    search["startup_trials"] = space.search["trials_per_study"]
    search["early_stopping"] = early_stopping
    raw["name"] = f"{space.name}-{'asha' if early_stopping else 'no-asha'}"
    return parse_space(raw, space.source)


def sweep_figures(sd) -> dict[str, dict]:
    """Per study: best objective, trial-steps, trials stopped early, and each trial's params by number."""
    _, by_study = study_trials(sd)
    out = {}
    for name, trials in by_study.items():
        best = best_trial(trials)
        out[name] = {
            "best": best.value if best else float("nan"),
            "steps": sum(int(t.user_attrs.get(ATTR_STEP, 0)) for t in trials),
            "stopped": sum(t.state.name == "PRUNED" for t in trials),
            "params": {t.number: t.params for t in trials},
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="demo")
    ap.add_argument("--storage", help="where the two sweeps go (default: a new temporary folder)")
    args = ap.parse_args()
    storage = args.storage or tempfile.mkdtemp(prefix="kdsweep-asha-value-")
    space = load_space(args.space)
    results, wall, predicted = {}, {}, {}
    for early in (True, False):
        v = variant(space, early)
        print(f"{v.name}: load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} at start", flush=True)
        est = estimate(v)
        print(format_estimate(est), flush=True)
        predicted[early] = est.wall_s(cached=False)  # the sweeps train with a live teacher
        start = time.perf_counter()
        sd = run_sweep(v, storage=storage, log=lambda _: None)
        wall[early] = time.perf_counter() - start
        results[early] = sweep_figures(sd)
        print(f"{v.name}: {wall[early]:.0f} s wall (estimated {predicted[early]:.0f} s: real / estimate "
              f"x{wall[early] / predicted[early]:.2f}); load average "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} -> {Path(storage) / v.name}", flush=True)

    on, off = results[True], results[False]
    same = all(on[s]["params"] == off[s]["params"] for s in on)
    print(f"\nsame trials in both sweeps (params per trial number): {same}")
    print(f"{'study':<24}{'best ASHA':>11}{'best full':>11}{'steps ASHA':>12}{'steps full':>12}{'stopped':>9}")
    for name in on:
        a, f = on[name], off[name]
        print(f"{name:<24}{a['best']:>11.4f}{f['best']:>11.4f}{a['steps']:>12}{f['steps']:>12}{a['stopped']:>9}")
    steps_on, steps_off = sum(r["steps"] for r in on.values()), sum(r["steps"] for r in off.values())
    same_best = sum(abs(on[s]["best"] - off[s]["best"]) < 1e-9 for s in on)
    worse = [on[s]["best"] / off[s]["best"] - 1 for s in on]
    print(f"total trial-steps: ASHA {steps_on}, full {steps_off} (ASHA uses {steps_on / steps_off:.2f} of them); "
          f"stopped early {sum(r['stopped'] for r in on.values())} of {sum(len(r['params']) for r in on.values())}")
    print(f"best val_ppl: the same in {same_best} of {len(on)} studies; ASHA's best vs the full sweep's best: "
          f"mean {sum(worse) / len(worse):+.2%}, worst {max(worse):+.2%}")
    print(f"wall: ASHA {wall[True]:.0f} s, full {wall[False]:.0f} s (x{wall[True] / wall[False]:.2f})")


if __name__ == "__main__":
    main()
