"""Fit against calibration: val ppl vs val ECE over the completed search trials of a scale (method §7).

A trial is non-dominated (on the Pareto front of its scale) when no other completed trial of
that scale is at least as good on both numbers (lower val_ppl, lower val ECE) and strictly
better on one. Both numbers come from one eval row, the final model's, on the val split's
early-stopping subset: the search never saw the test split, and neither does this view. It
chooses nothing; it shows which configs a researcher who weighs calibration could pick.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from kdsweep.analysis.fmt import sig
from kdsweep.analysis.tables import Table
from kdsweep.distill.run.rundir import COMPLETED
from kdsweep.sweeps.space import SEARCHABLE

AXES = ("val_ppl", "val_ece")


def non_dominated(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n,) bool: no other point is <= on both coordinates and < on one (both minimised)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    le = (x[None, :] <= x[:, None]) & (y[None, :] <= y[:, None])  # [i, j]: j at least as good as i
    lt = (x[None, :] < x[:, None]) | (y[None, :] < y[:, None])
    return ~(le & lt).any(axis=1)


def pareto_points(trials: pd.DataFrame, scale: str) -> tuple[pd.DataFrame, int]:
    """(the completed trials of `scale` with both numbers, a `pareto` column added; how many
    completed trials lack val ECE: run logs older than that metric)."""
    done = trials[(trials["scale"] == scale) & (trials["status"] == COMPLETED)]
    finite = np.isfinite(done["val_ppl"].astype(float)) & np.isfinite(done["val_ece"].astype(float))
    pts = done[finite].copy()
    pts["pareto"] = non_dominated(pts["val_ppl"], pts["val_ece"]) if len(pts) else []
    return pts.sort_values("val_ppl", ignore_index=True), int((~finite).sum())


def pareto_table(trials: pd.DataFrame, scales: list[str]) -> Table:
    """The non-dominated configs of each scale, by val_ppl."""
    params = [p for p in SEARCHABLE if p in trials.columns]
    header = ["scale", "arm", "trial", "val_ppl", "val ECE", "val accuracy", *params, "front"]
    rows, records, notes = [], [], []
    for scale in scales:
        pts, no_ece = pareto_points(trials, scale)
        front = pts[pts["pareto"]]
        for r in front.itertuples(index=False):
            row = r._asdict()
            rows.append([scale, r.arm, str(r.trial_id), sig(r.val_ppl), sig(r.val_ece), sig(r.val_accuracy),
                         *("-" if isinstance(row[p], float) and math.isnan(row[p]) else sig(row[p]) for p in params),
                         f"{len(front)} of {len(pts)}"])
            records.append({"scale": scale, "arm": r.arm, "trial_id": r.trial_id, "val_ppl": r.val_ppl,
                            "val_ece": r.val_ece, "val_accuracy": r.val_accuracy, **{p: row[p] for p in params}})
        if pts.empty:
            rows.append([scale, "-", "-", "-", "-", "-", *("-" for _ in params), "no completed trial with val ECE"])
        if no_ece:
            notes.append(f"{scale}: {no_ece} completed trial(s) without a val ECE (run logs older than that metric) "
                         "are left out.")
    notes.insert(0, "Non-dominated completed search trials of each scale: no other completed trial of the scale has "
                    "both a lower-or-equal val_ppl and a lower-or-equal val ECE, one of them strictly. Both from the "
                    "final model's eval on the val split's early-stopping subset; nothing here is chosen.")
    cols = ["scale", "arm", "trial_id", "val_ppl", "val_ece", "val_accuracy", *params]
    return Table("pareto", "Pareto view: val ppl vs val ECE of completed search trials (val split)", header, rows,
                 pd.DataFrame(records, columns=cols), notes)
