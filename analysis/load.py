"""A sweep folder -> pandas DataFrames: search trials, their eval histories, the replicates.

Sources are kdsweep's own records only:

* the Optuna storage, for what each search trial *is* (its study, its sampled
  params, and its final state: COMPLETE / PRUNED / FAIL + `status` attribute);
* each run folder's `metrics.jsonl` (complete eval history, survives restores)
  and `metrics.json` (final summary; val and test metrics for replicates);
* each run log's `start` row, for the data split the run used and its leakage figure.

Tune's console output and result files are never parsed: Tune drops rows
reported before a restore, the run log does not.

A missing or half-written file gives a row that says so (status, NaN values),
never an exception: an analysis of a half-finished sweep must still run.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pandas as pd
from optuna.trial import TrialState

from kdsweep.distill.files.numbers import number, parse_number
from kdsweep.distill.run.rundir import COMPLETED, SUMMARY_NAME, TrainReport, eval_rows, read_log
from kdsweep.sweeps.layout import SweepDir, parse_replicate_name
from kdsweep.sweeps.space import SEARCHABLE
from kdsweep.sweeps.study import ATTR_STEP, ATTR_TRIAL, ORPHANED, study_trials, trial_status
from kdsweep.sweeps.warmstart import ATTR_WARM, ATTR_WARM_LR

# Held-out metric values that are lists/dicts but still belong in the frame (reliability diagrams).
OBJECT_METRICS = ("ece_bins", "ece_bins_teacher")
# The held-out splits a replicate is scored on (metrics.json keys): val chooses, test reports (method §7).
VAL, TEST = "val", "test"
SPLITS = (VAL, TEST)
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
    """One row per search trial: scale, arm, trial_id, status, params (a column each), its val_ppl
    and step, the val ECE and accuracy of that eval, number of evals.

    val_ppl is the objective (the final model's val_ppl, what Optuna was told) for completed
    trials, and the last val_ppl a stopped-early or diverged trial reported (what ASHA judged it
    on): never the best seen, which no trial was chosen on.
    """
    space, by_study = study_trials(sd)
    param_names = [p for p in SEARCHABLE if any(p in s.params for s in space.studies)]
    rows = []
    for study in space.studies:
        for t in by_study[study.name]:
            status = trial_status(t)
            if status == ORPHANED or t.state == TrialState.WAITING:  # a warm-start seed not handed out yet
                continue
            trial_id = t.user_attrs.get(ATTR_TRIAL)
            run_dir = sd.run_dir(trial_id) if trial_id else None
            evals = eval_rows(run_dir) if run_dir else []
            finite = [r for r in evals if math.isfinite(number(r["val_ppl"]))]
            last = finite[-1] if finite else {}
            if status == COMPLETED and t.value is not None:
                val_ppl, step = float(t.value), t.user_attrs.get(ATTR_STEP)
            elif last:
                val_ppl, step = number(last["val_ppl"]), last["step"]
            elif t.intermediate_values:  # no run log: fall back to what Optuna was told last
                step, val_ppl = max(t.intermediate_values.items())
            else:
                val_ppl, step = math.nan, None
            summary = read_summary(run_dir) if run_dir else None
            rows.append({
                "scale": study.scale, "arm": study.arm, "search_replicate": study.search_replicate,
                "study": study.name, "trial_id": trial_id,
                "optuna_number": t.number, "status": status,
                # an enqueued warm-start seed: where it came from and its lr rule (sweeps/warmstart.py); "" if sampled
                "warm_start": t.user_attrs.get(ATTR_WARM, ""), "warm_start_lr": t.user_attrs.get(ATTR_WARM_LR, ""),
                **{p: t.params.get(p, math.nan) for p in param_names},
                "val_ppl": val_ppl,
                "step": float(step) if step is not None else math.nan,
                # from the same eval row as val_ppl (run logs older than these metrics: NaN)
                "val_ece": number(last.get("val_ece")), "val_accuracy": number(last.get("val_accuracy")),
                "n_evals": len(evals),
                "run_status": summary.get("status") if summary else None,
                "has_run_log": bool(evals),
            })
    cols = ["scale", "arm", "search_replicate", "study", "trial_id", "optuna_number", "status", "warm_start",
            "warm_start_lr", *param_names,
            "val_ppl", "step",
            "val_ece", "val_accuracy", "n_evals", "run_status", "has_run_log"]
    return pd.DataFrame(rows, columns=cols)


def history_frame(sd: SweepDir, trials: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (search trial, eval step): val_ppl, best_seen_val_ppl (the run's lowest so far),
    train_loss, lr, done_training."""
    trials = trials_frame(sd) if trials is None else trials
    rows = []
    for t in trials.itertuples(index=False):
        if not t.trial_id:
            continue
        for r in map(TrainReport.from_row, eval_rows(sd.run_dir(t.trial_id))):
            rows.append({
                "scale": t.scale, "arm": t.arm, "study": t.study, "trial_id": t.trial_id, "status": t.status,
                "step": int(r.step), "val_ppl": number(r.val_ppl),
                "best_seen_val_ppl": number(r.best_val_ppl),
                "train_loss": number(r.extra.get("train_loss")), "lr": number(r.extra.get("lr")),
                "done_training": r.done_training,
            })
    cols = ["scale", "arm", "study", "trial_id", "status", "step", "val_ppl", "best_seen_val_ppl", "train_loss", "lr",
            "done_training"]
    return pd.DataFrame(rows, columns=cols).sort_values(["scale", "arm", "trial_id", "step"], ignore_index=True)


def replicates_frame(sd: SweepDir) -> pd.DataFrame:
    """One row per replicate folder: scale, arm, seed, search_replicate, off (the enhancements a matched
    ablation switched off, joined by '+'; '' for a tuned config), status, has_test, has_val,
    objective_val_ppl, and every scalar held-out metric of both splits as `val_<metric>` and `test_<metric>`.

    status: the run's own (metrics.json) "completed" / "diverged"; "incomplete" when
    there is no metrics.json (still running, crashed, or interrupted); "unreadable"
    when metrics.json cannot be parsed. Only completed rows with has_test enter tables.
    val_* (the full val split) is what arms are chosen on, test_* what tables report (method §7);
    objective_val_ppl is metrics.json's `val_ppl`, the search objective measured on this run (the
    early-stopping subset of the val split).
    """
    rows = []
    root = sd.replicates
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        parsed = parse_replicate_name(d.name) if d.is_dir() else None
        if parsed is None:
            continue  # not a replicate run folder
        scale, arm, seed, search_replicate, off = parsed
        summary = read_summary(d) or {}
        row = {"scale": scale, "arm": arm, "seed": seed, "search_replicate": search_replicate, "off": "+".join(off),
               "replicate": d.name,
               "status": summary.get("status", UNREADABLE) if summary else INCOMPLETE,
               "has_test": _has_metrics(summary.get("test")), "has_val": _has_metrics(summary.get("val")),
               "step": number(summary.get("step")), "objective_val_ppl": number(summary.get("val_ppl"))}
        for split in SPLITS:
            row.update(_metric_columns(split, summary.get(split)))
        rows.append(row)
    base = ["scale", "arm", "seed", "search_replicate", "off", "replicate", "status", "has_test", "has_val", "step",
            "objective_val_ppl"]
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=base)
    return df[base + [c for c in df.columns if c not in base]].sort_values(["scale", "arm", "off", "seed"],
                                                                            ignore_index=True)


def _has_metrics(metrics) -> bool:
    return isinstance(metrics, dict) and bool(metrics)


def _metric_columns(split: str, metrics) -> dict:
    """{"<split>_<metric>": value} of the scalar metrics (and the ECE bins) of one split."""
    out = {}
    for k, v in metrics.items() if isinstance(metrics, dict) else ():
        if k in OBJECT_METRICS or isinstance(v, bool):
            out[column(split, k)] = v
        elif parse_number(v) is not None:
            out[column(split, k)] = number(v)  # scalars only: gen_setting etc. (dicts, strings) are provenance
    return out


def column(split: str, metric: str) -> str:
    """The replicates-frame column of a held-out metric on one split."""
    return f"{split}_{metric}"


def split_notes(sd: SweepDir) -> list[str]:
    """The distinct `split_note` lines (split method, thresholds, leakage: `distill.data.batches.split_note`)
    of the sweep's runs, replicates first, most common first. One line when every run split its
    data alike, as a sweep's runs do; an empty list when the logs predate the record."""
    dirs = sorted(sd.replicates.iterdir()) if sd.replicates.is_dir() else []
    dirs += sorted(sd.runs.iterdir()) if sd.runs.is_dir() else []
    starts = (next((r for r in read_log(d) if r.get("event") == "start"), {}) for d in dirs)  # first attempt's
    notes = [note for r in starts if (note := (r.get("data") or {}).get("split_note"))]
    return [note for note, _ in Counter(notes).most_common()]  # ties keep their order: replicates first


def per_seed(reps: pd.DataFrame, scale: str, arm: str, metric: str, split: str = TEST) -> pd.Series:
    """A metric of (scale, arm) on one split, indexed by seed, NaN values dropped. Pass usable rows."""
    col = column(split, metric)
    if reps.empty or col not in reps.columns:
        return pd.Series(dtype=float)
    sel = reps[(reps["scale"] == scale) & (reps["arm"] == arm)]
    return pd.to_numeric(sel.set_index("seed")[col], errors="coerce").dropna().astype(float).sort_index()


def usable_replicates(reps: pd.DataFrame, off: str = "") -> pd.DataFrame:
    """The rows that may enter a table: completed runs that have test metrics, of the tuned configs
    (`off` = '') or of one matched ablation (`off` = 'smoothing', ...; None: every ablation)."""
    if reps.empty:
        return reps
    done = reps[(reps["status"] == COMPLETED) & reps["has_test"].astype(bool)]
    return done[done["off"] != ""] if off is None else done[done["off"] == off]


def tuned_replicates(reps: pd.DataFrame) -> pd.DataFrame:
    """The replicate rows of tuned configs (all statuses): the matched ablations are left out."""
    return reps if reps.empty else reps[reps["off"] == ""]


def unit_of(reps: pd.DataFrame) -> dict[int, int]:
    """Seed -> its search replicate (seeds of different search replicates never coincide: SEED_STRIDE)."""
    return {} if reps.empty else {int(s): int(r) for s, r in zip(reps["seed"], reps["search_replicate"])}
