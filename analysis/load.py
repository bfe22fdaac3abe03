"""A sweep folder -> pandas DataFrames: search trials, their eval histories, the replicates.

Sources are kdsweep's own records only:

* the Optuna storage, for what each search trial *is* (its study, its sampled
  params, and its final state: COMPLETE / PRUNED / FAIL + `status` attribute);
* each run folder's `metrics.jsonl` (complete eval history, survives restores)
  and `metrics.json` (final summary, test metrics for replicates).

Tune's console output and result files are never parsed: Tune drops rows
reported before a restore, the run log does not.

A missing or half-written file gives a row that says so (status, NaN values),
never an exception: an analysis of a half-finished sweep must still run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from distill.numbers import number, parse_number
from distill.rundir import COMPLETED, SUMMARY_NAME, eval_rows
from sweeps.layout import SweepDir, parse_replicate_name
from sweeps.space import SEARCHABLE
from sweeps.study import ATTR_STEP, ATTR_TRIAL, ORPHANED, study_trials, trial_status

# Test-metric values that are lists/dicts but still belong in the frame (reliability diagrams).
OBJECT_METRICS = ("ece_bins", "ece_bins_teacher")
# Replicate folders that did not end with a summary: none yet (running, crashed, interrupted),
# or one that cannot be parsed.
INCOMPLETE, UNREADABLE = "incomplete", "unreadable"


def read_summary(run_dir: Path) -> dict | None:
    """`metrics.json`, or None when absent; {"status": "unreadable"} when cut mid-write."""
    path = Path(run_dir) / SUMMARY_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {"status": UNREADABLE}
    return data if isinstance(data, dict) else {"status": UNREADABLE}


def trials_frame(sd: SweepDir) -> pd.DataFrame:
    """One row per search trial: scale, arm, trial_id, status, params (a column each),
    best val_ppl and its step, number of evals."""
    space, by_study = study_trials(sd)
    param_names = [p for p in SEARCHABLE if any(p in s.params for s in space.studies)]
    rows = []
    for study in space.studies:
        for t in by_study[study.name]:
            status = trial_status(t)
            if status == ORPHANED:
                continue
            trial_id = t.user_attrs.get(ATTR_TRIAL)
            run_dir = sd.run_dir(trial_id) if trial_id else None
            evals = eval_rows(run_dir) if run_dir else []
            finite = [(number(r["val_ppl"]), int(r["step"])) for r in evals if math.isfinite(number(r["val_ppl"]))]
            if status == COMPLETED and t.value is not None:
                # The searcher's objective: the final model's val_ppl, at its last step.
                best, best_step = float(t.value), t.user_attrs.get(ATTR_STEP)
            elif finite:
                # Stopped/diverged trials: best seen before they ended (useful in the lr plot).
                best, best_step = min(finite)
            elif t.intermediate_values:  # no run log: fall back to what Optuna was told
                best_step, best = min(t.intermediate_values.items(), key=lambda kv: kv[1])
            else:
                best, best_step = math.nan, None
            summary = read_summary(run_dir) if run_dir else None
            rows.append({
                "scale": study.scale, "arm": study.arm, "study": study.name, "trial_id": trial_id,
                "optuna_number": t.number, "status": status,
                **{p: t.params.get(p, math.nan) for p in param_names},
                "best_val_ppl": best,
                "best_step": float(best_step) if best_step is not None else math.nan,
                "n_evals": len(evals),
                "last_step": float(evals[-1]["step"]) if evals else math.nan,
                "run_status": summary.get("status") if summary else None,
                "has_run_log": bool(evals),
            })
    cols = ["scale", "arm", "study", "trial_id", "optuna_number", "status", *param_names, "best_val_ppl",
            "best_step", "n_evals", "last_step", "run_status", "has_run_log"]
    return pd.DataFrame(rows, columns=cols)


def history_frame(sd: SweepDir, trials: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (search trial, eval step): val_ppl, best_val_ppl, train_loss, lr, done_training."""
    trials = trials_frame(sd) if trials is None else trials
    rows = []
    for t in trials.itertuples(index=False):
        if not t.trial_id:
            continue
        for r in eval_rows(sd.run_dir(t.trial_id)):
            rows.append({
                "scale": t.scale, "arm": t.arm, "study": t.study, "trial_id": t.trial_id, "status": t.status,
                "step": int(r["step"]), "val_ppl": number(r["val_ppl"]), "best_val_ppl": number(r.get("best_val_ppl")),
                "train_loss": number(r.get("train_loss")), "lr": number(r.get("lr")),
                "done_training": bool(r.get("done_training", False)),
            })
    cols = ["scale", "arm", "study", "trial_id", "status", "step", "val_ppl", "best_val_ppl", "train_loss", "lr",
            "done_training"]
    return pd.DataFrame(rows, columns=cols).sort_values(["scale", "arm", "trial_id", "step"], ignore_index=True)


def replicates_frame(sd: SweepDir) -> pd.DataFrame:
    """One row per replicate folder: scale, arm, seed, status, has_test, every scalar test metric.

    status: the run's own (metrics.json) "completed" / "diverged"; "incomplete" when
    there is no metrics.json (still running, crashed, or interrupted); "unreadable"
    when metrics.json cannot be parsed. Only completed rows with has_test enter tables.
    """
    rows = []
    root = sd.replicates
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        parsed = parse_replicate_name(d.name) if d.is_dir() else None
        if parsed is None:
            continue  # not a replicate run folder
        scale, arm, seed = parsed
        summary = read_summary(d)
        test = (summary or {}).get("test")
        row = {"scale": scale, "arm": arm, "seed": seed, "replicate": d.name,
               "status": summary.get("status", UNREADABLE) if summary else INCOMPLETE,
               "has_test": isinstance(test, dict) and bool(test),
               "step": number((summary or {}).get("step")), "best_val_ppl": number((summary or {}).get("best_val_ppl")),
               "best_step": number((summary or {}).get("best_step"))}
        for k, v in (test or {}).items() if isinstance(test, dict) else ():
            if k in row:
                continue  # never let a metric overwrite an identity column
            if k in OBJECT_METRICS or isinstance(v, bool):
                row[k] = v
            elif parse_number(v) is not None:
                row[k] = number(v)  # scalars only: gen_setting etc. (dicts, strings) are provenance, not metrics
        rows.append(row)
    base = ["scale", "arm", "seed", "replicate", "status", "has_test", "step", "best_val_ppl", "best_step"]
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=base)
    return df[base + [c for c in df.columns if c not in base]].sort_values(["scale", "arm", "seed"], ignore_index=True)


def usable_replicates(reps: pd.DataFrame) -> pd.DataFrame:
    """The rows that may enter a table: completed runs that have test metrics."""
    if reps.empty:
        return reps
    return reps[(reps["status"] == COMPLETED) & reps["has_test"].astype(bool)]
