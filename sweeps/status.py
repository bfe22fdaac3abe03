"""`kdsweep sweep status`: per (scale, arm) study, trials by state and the best so far.

Read from the Optuna storage alone (no Ray; states as `sweeps.study` defines them). A
study's best trial is its completed trial with the lowest objective, the final model's
val_ppl.
Orphaned trials (lost to a driver kill before Tune saved them) are not counted. `restarted`
counts trials whose earlier attempt trained but left no checkpoint in the run folder (killed
before its first one, or written where this node cannot see) and so trained again from step 0:
they are never counted as resumed.
"""

from __future__ import annotations

from distill.rundir import RESTARTED, read_log
from sweeps.layout import SweepDir
from sweeps.study import (
    ATTR_STEP,
    ATTR_TRIAL,
    ORPHANED,
    PENDING,
    TRIAL_STATES,
    best_trial,
    study_trials,
    trial_status,
)


def sweep_status(sd: SweepDir) -> list[dict]:
    space, by_study = study_trials(sd)
    rows = []
    for s in space.studies:
        trials = [t for t in by_study[s.name] if trial_status(t) != ORPHANED]
        counts = {k: sum(trial_status(t) == k for t in trials) for k in TRIAL_STATES}
        best = best_trial(trials)
        rows.append({
            "study": s.name, "scale": s.scale, "arm": s.arm, "planned": space.search["trials_per_study"],
            PENDING: max(0, space.search["trials_per_study"] - len(trials)), **counts,
            RESTARTED: sum(restarted(sd, t) for t in trials),
            "best_val_ppl": best.value if best else None,
            "best_step": best.user_attrs.get(ATTR_STEP) if best else None,
            "best_trial": best.user_attrs.get(ATTR_TRIAL) if best else None,
            "best_params": best.params if best else {},
        })
    return rows


def restarted(sd: SweepDir, trial) -> bool:
    """Whether the trial's run log records a restart from step 0 in place of a missing checkpoint."""
    run = trial.user_attrs.get(ATTR_TRIAL)
    return run is not None and any(r.get("event") == RESTARTED for r in read_log(sd.run_dir(run)))


def sweep_complete(sd: SweepDir) -> bool:
    """Every study has run its whole budget: nothing pending, nothing running."""
    return all(r["pending"] == 0 and r["running"] == 0 for r in sweep_status(sd))


def format_status(rows: list[dict]) -> str:
    """A table with one column per trial state, headed by the state's own name (sweeps.study)."""
    counted = ("planned", PENDING, *TRIAL_STATES, RESTARTED)
    widths = [max(len(c), 4) + 2 for c in counted]
    head = f"{'study':<26}" + "".join(f"{c:>{w}}" for c, w in zip(counted, widths)) + f"{'best val_ppl':>14}  best params"
    lines = [head]
    for r in rows:
        params = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["best_params"].items())
        best = f"{r['best_val_ppl']:.4f}" if r["best_val_ppl"] is not None else "-"
        lines.append(f"{r['study']:<26}" + "".join(f"{r[c]:>{w}}" for c, w in zip(counted, widths))
                     + f"{best:>14}  {params}")
    return "\n".join(lines)
