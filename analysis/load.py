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
import re
from pathlib import Path

import pandas as pd

from distill.errors import ConfigError
from distill.runlog import read_log
from sweeps.layout import SweepDir
from sweeps.searcher import ATTR_BEST_STEP, ATTR_TRIAL, ORPHANED
from sweeps.space import SEARCHABLE
from sweeps.status import study_trials, trial_status
from sweeps.trial import REPLICATES

# Search-trial statuses as `sweeps.status.trial_status` names them (orphans are
# dropped: they are Optuna trials a killed driver asked for but never ran).
TRIAL_STATUSES = ("completed", "stopped_early", "diverged", "failed", "running")
ARM_ORDER = ("baseline", "uncertainty", "calibration", "both")
# Test-metric values that are lists/dicts but still belong in the frame (reliability diagrams).
OBJECT_METRICS = ("ece_bins", "ece_bins_teacher")
_SEED_DIR = re.compile(r"^seed(\d+)$")
_NONFINITE = ("inf", "-inf", "nan")  # how runlog/json write non-finite floats


def num(v) -> float:
    """A logged number as float; runlog writes inf/nan as strings; anything else -> NaN."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return math.nan
    return math.nan


def eval_rows(run_dir: Path) -> list[dict]:
    """The eval rows of a run's log (event rows such as start/resumed/diverged/test excluded)."""
    return [r for r in read_log(run_dir) if "val_ppl" in r and "event" not in r and "step" in r]


def read_summary(run_dir: Path) -> dict | None:
    """`metrics.json`, or None when absent; {"status": "unreadable"} when cut mid-write."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {"status": "unreadable"}
    return data if isinstance(data, dict) else {"status": "unreadable"}


def _check_storage(sd: SweepDir) -> None:
    # Optuna's create_study(load_if_exists=True) would silently create an empty
    # database in place of a missing one: say it is missing instead.
    url = sd.storage_url()
    if url.startswith("sqlite:///"):
        db = Path(url[len("sqlite:///"):])
        if not db.is_file():
            raise ConfigError(f"{sd.root}: the sweep's Optuna storage {db} is missing; cannot list its trials")


def trials_frame(sd: SweepDir) -> pd.DataFrame:
    """One row per search trial: scale, arm, trial_id, status, params (a column each),
    best val_ppl and its step, number of evals."""
    _check_storage(sd)
    space, by_study = study_trials(sd)
    param_names = [p for p in SEARCHABLE if any(p in s.params for s in space.studies)]
    rows = []
    for study in space.studies:
        for t in by_study[study.name]:
            status = trial_status(t)
            if status == ORPHANED:
                continue
            trial_id = t.user_attrs.get(ATTR_TRIAL)
            run_dir = sd.runs / trial_id if trial_id else None
            evals = eval_rows(run_dir) if run_dir else []
            finite = [(num(r["val_ppl"]), int(r["step"])) for r in evals if math.isfinite(num(r["val_ppl"]))]
            if status == "completed" and t.value is not None:
                # The searcher's objective (= min val_ppl over the full run).
                best, best_step = float(t.value), t.user_attrs.get(ATTR_BEST_STEP)
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
        for r in eval_rows(sd.runs / t.trial_id):
            rows.append({
                "scale": t.scale, "arm": t.arm, "study": t.study, "trial_id": t.trial_id, "status": t.status,
                "step": int(r["step"]), "val_ppl": num(r["val_ppl"]), "best_val_ppl": num(r.get("best_val_ppl")),
                "train_loss": num(r.get("train_loss")), "lr": num(r.get("lr")),
                "done_training": bool(r.get("done_training", False)),
            })
    cols = ["scale", "arm", "study", "trial_id", "status", "step", "val_ppl", "best_val_ppl", "train_loss", "lr",
            "done_training"]
    return pd.DataFrame(rows, columns=cols).sort_values(["scale", "arm", "trial_id", "step"], ignore_index=True)


def parse_replicate_name(name: str) -> tuple[str, str, int] | None:
    """Inverse of `sweeps.trial.replicate_name`: '<scale>__<arm>__seed<k>' (scale may hold '_')."""
    parts = name.rsplit("__", 2)
    if len(parts) != 3:
        return None
    m = _SEED_DIR.match(parts[2])
    return (parts[0], parts[1], int(m.group(1))) if m else None


def replicates_frame(sd: SweepDir) -> pd.DataFrame:
    """One row per replicate folder: scale, arm, seed, status, has_test, every scalar test metric.

    status: the run's own (metrics.json) "completed" / "diverged"; "incomplete" when
    there is no metrics.json (still running, crashed, or interrupted); "unreadable"
    when metrics.json cannot be parsed. Only completed rows with has_test enter tables.
    """
    rows = []
    root = sd.root / REPLICATES
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        parsed = parse_replicate_name(d.name) if d.is_dir() else None
        if parsed is None:
            continue  # not a replicate run folder
        scale, arm, seed = parsed
        summary = read_summary(d)
        test = (summary or {}).get("test")
        row = {"scale": scale, "arm": arm, "seed": seed, "replicate": d.name,
               "status": summary.get("status", "unreadable") if summary else "incomplete",
               "has_test": isinstance(test, dict) and bool(test),
               "step": num((summary or {}).get("step")), "best_val_ppl": num((summary or {}).get("best_val_ppl")),
               "best_step": num((summary or {}).get("best_step"))}
        for k, v in (test or {}).items() if isinstance(test, dict) else ():
            if k in row:
                continue  # never let a metric overwrite an identity column
            if k in OBJECT_METRICS or isinstance(v, bool):
                row[k] = v
            elif isinstance(v, (int, float)) or (isinstance(v, str) and v.lower() in _NONFINITE):
                row[k] = num(v)  # scalars only: gen_setting etc. (dicts, strings) are provenance, not metrics
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
    return reps[(reps["status"] == "completed") & reps["has_test"].astype(bool)]
