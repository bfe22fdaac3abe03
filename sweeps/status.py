"""`kdsweep sweep status` and `kdsweep sweep list`: trials by state and the best trial, per study or per sweep.

Read from the Optuna storage alone (no Ray; states as `sweeps.study` defines them). A
study's best trial is its completed trial with the lowest objective (the final model's
val_ppl): `best objective` in every table. Orphaned trials (lost to a driver kill before
Tune saved them) are not counted. `restarted` counts trials whose earlier attempt trained but
left no checkpoint in the run folder (killed before its first one, or written where this node
cannot see) and so trained again from step 0: they are never counted as resumed.

Tables fit the terminal's width (`sweeps.textfit`): the wide table when its state columns
fit, params cut or dropped first; otherwise a narrow layout, one block per study or sweep.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from optuna.trial import TrialState

from kdsweep.distill.errors import KDSweepError
from kdsweep.distill.run.rundir import RESTARTED, read_log
from kdsweep.sweeps.layout import SweepDir, sweep_names
from kdsweep.sweeps.study import (
    ATTR_STEP,
    ATTR_TRIAL,
    ORPHANED,
    PENDING,
    TRIAL_STATES,
    best_trial,
    study_trials,
    trial_status,
)
from kdsweep.sweeps.textfit import Column, essential_width, pack, table

COUNTED = ("planned", PENDING, *TRIAL_STATES, RESTARTED)


def sweep_status(sd: SweepDir) -> list[dict]:
    space, by_study = study_trials(sd)
    rows = []
    for s in space.studies:
        # a warm-start seed not handed out yet (Optuna WAITING, sweeps/warmstart.py) is still pending
        trials = [t for t in by_study[s.name] if trial_status(t) != ORPHANED and t.state != TrialState.WAITING]
        counts = {k: sum(trial_status(t) == k for t in trials) for k in TRIAL_STATES}
        best = best_trial(trials)
        rows.append({
            "study": s.name, "scale": s.scale, "arm": s.arm, "planned": space.search["trials_per_study"],
            PENDING: max(0, space.search["trials_per_study"] - len(trials)), **counts,
            RESTARTED: sum(restarted(sd, t) for t in trials),
            "best_objective": best.value if best else None,
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


def _params(params: dict) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _objective(v: float | None) -> str:
    return f"{v:.4f}" if v is not None else "-"


def format_status(rows: list[dict], width: int | None = None) -> str:
    """One row per study, one column per trial state headed by the state's own name
    (sweeps.study), then the best trial; a block per study where that does not fit `width`."""
    columns = [Column("study"), *(Column(c, 2 if c == "planned" else 0, right=True) for c in COUNTED),
               Column("best objective", right=True), Column("best trial", 3), Column("best params", 4, cut=True)]
    cells = [[r["study"], *(str(r[c]) for c in COUNTED), _objective(r["best_objective"]), r["best_trial"] or "-",
              _params(r["best_params"])] for r in rows]
    if width is None or essential_width(columns, cells) <= width:
        return "\n".join(table(columns, cells, width))
    lines = []
    for r in rows:
        lines += pack([f"{r['study']}:", f"{r['planned']} planned"] + [f"{c} {r[c]}" for c in COUNTED[1:]], width,
                      sep="  ", indent="    ")
        if r["best_trial"]:
            at = f", step {r['best_step']}" if r["best_step"] is not None else ""
            lines += pack([f"  best objective {_objective(r['best_objective'])}", f"(trial {r['best_trial']}{at}):",
                           *_params(r["best_params"]).split()], width, sep=" ", indent="    ")
    return "\n".join(lines)


# ---- sweep list ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepSummary:
    name: str
    created: str
    state: str  # running (or interrupted) / finished, from sweep.json
    studies: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # trials per state, every study together
    best: dict[str, tuple[float, str]] = field(default_factory=dict)  # scale -> (best objective, arm)
    error: str | None = None  # the sweep could not be read (its database gone, unreachable)


def summarize(sd: SweepDir) -> SweepSummary:
    try:
        meta = sd.meta()
        created, state = str(meta.created or "?"), str(meta.state or "?")
    except (KDSweepError, ValueError) as e:
        return SweepSummary(sd.name, "?", "?", error=str(e))
    try:
        rows = sweep_status(sd)
    except Exception as e:  # a sweep of the list that cannot be read must not hide the others
        return SweepSummary(sd.name, created, state, error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    best: dict[str, tuple[float, str]] = {}
    for r in rows:
        if r["best_objective"] is not None and (r["scale"] not in best or r["best_objective"] < best[r["scale"]][0]):
            best[r["scale"]] = (r["best_objective"], r["arm"])
    return SweepSummary(sd.name, created, state, len(rows), {c: sum(r[c] for r in rows) for c in COUNTED}, best)


def list_sweeps(root: Path) -> list[SweepSummary]:
    """Every sweep under the storage root `root`, oldest first."""
    summaries = [summarize(SweepDir(root / name)) for name in sweep_names(root)]
    return sorted(summaries, key=lambda s: (s.created, s.name))


def format_sweep_list(summaries: list[SweepSummary], root: Path, width: int | None = None) -> str:
    if not summaries:
        return f"no sweeps in {root} (start one with `kdsweep sweep run SPACE`, or pass --storage)"
    columns = [Column("sweep"), Column("created", 3), Column("state", 2), Column("studies", 4, right=True),
               *(Column(c, 5 if c == "planned" else 0, right=True) for c in COUNTED),
               Column("best objective per scale")]

    def best(s: SweepSummary) -> str:
        return s.error or ", ".join(f"{scale} {v:.4f} ({arm})" for scale, (v, arm) in s.best.items()) or "-"

    cells = [[s.name, s.created[:16].replace("T", " "), s.state, str(s.studies) if not s.error else "?",
              *(str(s.counts.get(c, "?")) for c in COUNTED), best(s)] for s in summaries]
    head = [f"sweeps in {root}"]
    if width is None or essential_width(columns, cells) <= width:
        return "\n".join(head + table(columns, cells, width))
    lines = head
    for s, c in zip(summaries, cells):
        lines += pack([f"{s.name}:", f"created {c[1]}", s.state, f"{c[3]} studies"], width, sep="  ", indent="    ")
        lines += pack([f"  {k} {v}" if k == COUNTED[0] else f"{k} {v}" for k, v in zip(COUNTED, c[4:-1])], width,
                      sep="  ", indent="    ")
        lines += pack(["  best objective:", *best(s).split(", ")], width, sep="  ", indent="    ")
    return "\n".join(lines)
