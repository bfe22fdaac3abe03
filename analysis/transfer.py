"""Did the optimum transfer across scales? (method §7, the transfer table; sweeps/warmstart.py)

Per arm and scale: the config each search chose (its best completed trial: lr, warmup, τ, α)
against the scale's width d, a fitted exponent b of value ∝ d^b per parameter (least squares on
log value vs log d; with search replicates a t interval on b, the replicates being independent
searches), and the rank, among the study's completed trials, of its best warm-start seed (an
enqueued config carried from the scale below: rank 1 means a carried config was the study's best).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kdsweep.analysis.fmt import sig
from kdsweep.analysis.select import search_best
from kdsweep.analysis.stats import LEVEL, t_quantile
from kdsweep.analysis.tables import Table
from kdsweep.distill.run.rundir import COMPLETED
from kdsweep.sweeps.warmstart import width

TRANSFER_PARAMS = ("lr", "warmup_steps", "temperature", "alpha")
PARAM_LABELS = {"lr": "lr", "warmup_steps": "warmup", "temperature": "τ", "alpha": "α"}
MUP_EXPONENT = -1.0  # μTransfer's prediction for Adam's hidden-layer lr (docs/method.md, warm start)


@dataclass(frozen=True)
class Exponent:
    """b of value ∝ d^b, fitted on `n` (width, value) points; lo/hi NaN without an interval."""

    b: float
    lo: float = math.nan
    hi: float = math.nan
    n: int = 0

    def text(self) -> str:
        if math.isnan(self.b):
            return f"- (n={self.n}: needs 2 widths with values > 0)"
        interval = "" if math.isnan(self.lo) else f" [{sig(self.lo)}, {sig(self.hi)}]"
        return f"d^{sig(self.b)}{interval} (n={self.n})"


def loglog_fit(widths, values, interval: bool, level: float = LEVEL) -> Exponent:
    """Least-squares slope of log(value) on log(width) over the points with value > 0. `interval`:
    also its t interval at `level` (df = n - 2; needs n >= 3), for points that are independent searches."""
    pts = [(math.log(w), math.log(v)) for w, v in zip(widths, values)
           if v is not None and math.isfinite(v) and v > 0]
    n = len(pts)
    if n < 2 or len({x for x, _ in pts}) < 2:
        return Exponent(math.nan, n=n)
    x, y = np.array(pts).T
    sxx = float(((x - x.mean()) ** 2).sum())
    b = float(((x - x.mean()) * (y - y.mean())).sum() / sxx)
    if not interval or n < 3:
        return Exponent(b, n=n)
    resid = y - (y.mean() + b * (x - x.mean()))
    se = math.sqrt(float((resid ** 2).sum()) / (n - 2) / sxx)
    half = t_quantile(1 - (1 - level) / 2, n - 2) * se
    return Exponent(b, b - half, b + half, n)


def seed_rank(study_trials: pd.DataFrame) -> dict:
    """Of one study's trials: its warm-start seeds, how many completed, and the best completed seed's
    rank among the study's completed trials (1 = the study's best) and its lr rule."""
    seeds = study_trials[study_trials["warm_start"].fillna("") != ""] if "warm_start" in study_trials else \
        study_trials.iloc[0:0]
    done = study_trials[(study_trials["status"] == COMPLETED) & study_trials["val_ppl"].notna()]
    done_seeds = seeds[(seeds["status"] == COMPLETED) & seeds["val_ppl"].notna()]
    out = {"seeds": len(seeds), "seeds_completed": len(done_seeds), "completed": len(done),
           "best_seed_rank": math.nan, "best_seed_lr": ""}
    if not done_seeds.empty:
        best = done_seeds.loc[done_seeds["val_ppl"].idxmin()]
        out["best_seed_rank"] = int((done["val_ppl"] < best["val_ppl"]).sum()) + 1
        out["best_seed_lr"] = best["warm_start_lr"]
    return out


def rank_text(r: dict) -> str:
    if not r["seeds"]:
        return "not warm-started"
    if math.isnan(r["best_seed_rank"]):
        return f"no seed completed ({r['seeds']} seeds)"
    return f"{int(r['best_seed_rank'])} of {int(r['completed'])} ({r['best_seed_lr']} lr)"


def transfer_frame(trials: pd.DataFrame, scales: list[str], arms: list[str], replicates: int = 1) -> pd.DataFrame:
    """One row per (arm, scale, search replicate): the width, the chosen config, the seeds' rank."""
    rows = []
    for arm in arms:
        for scale in sorted(scales, key=width):
            for r in range(replicates):
                best = search_best(trials, scale, arm, r)
                sel = trials[(trials["scale"] == scale) & (trials["arm"] == arm)]
                if "search_replicate" in sel.columns:
                    sel = sel[sel["search_replicate"] == r]
                rows.append({"arm": arm, "scale": scale, "search_replicate": r, "width": width(scale),
                             **{p: float(best[p]) if best is not None and p in best else math.nan
                                for p in TRANSFER_PARAMS},
                             **seed_rank(sel)})
    return pd.DataFrame(rows)


def exponents(frame: pd.DataFrame, arm: str, replicates: int) -> dict[str, Exponent]:
    sel = frame[frame["arm"] == arm]
    return {p: loglog_fit(sel["width"], sel[p], interval=replicates > 1) for p in TRANSFER_PARAMS}


def transfer_sentence(frame: pd.DataFrame, arm: str, replicates: int = 1) -> str:
    """One sentence: did the optimum transfer to the larger scales for `arm`, and how the chosen lr scaled."""
    sel = frame[frame["arm"] == arm]
    lr = exponents(frame, arm, replicates)["lr"]
    lr_text = "" if math.isnan(lr.b) else f"; the chosen lr scaled as {lr.text()} (μTransfer predicts d^-1)"
    warmed = sel[sel["seeds"] > 0]
    if warmed.empty:
        return f"{arm}: not tested, no study was warm-started (search.warm_start: none){lr_text}."
    best = warmed[warmed["best_seed_rank"] == 1]
    where = ", ".join(f"{s.scale} {rank_text(s._asdict())}" for s in warmed.itertuples(index=False))
    if len(best) == len(warmed):
        verdict = f"the optimum transferred: at every warm-started study ({len(warmed)}) a carried config was the best"
    elif best.empty:
        verdict = "the optimum did not transfer: no warm-started study's best was a carried config"
    else:
        verdict = f"the optimum transferred at {len(best)} of {len(warmed)} warm-started studies"
    return f"{arm}: {verdict} (best carried config's rank: {where}){lr_text}."


def transfer_table(trials: pd.DataFrame, scales: list[str], arms: list[str], replicates: int = 1) -> Table:
    """Per arm: the chosen lr, warmup, τ, α per scale (ordered by width) and their fitted exponents."""
    frame = transfer_frame(trials, scales, arms, replicates)
    labels = [PARAM_LABELS[p] for p in TRANSFER_PARAMS]
    header = ["arm", "scale", "width d", *labels, "best warm-start seed: rank among completed"]
    rows = []
    for arm in arms:
        sel = frame[frame["arm"] == arm]
        for scale, g in sel.groupby("scale", sort=False):
            rows.append([arm, scale, str(int(g["width"].iloc[0])),
                         *(", ".join(sig(v) for v in g[p]) for p in TRANSFER_PARAMS),
                         "; ".join(rank_text(r._asdict()) for r in g.itertuples(index=False))])
        fits = exponents(frame, arm, replicates)
        rows.append([arm, "fitted exponent", "value ∝ d^b", *(fits[p].text() for p in TRANSFER_PARAMS), ""])
    notes = ["Chosen config: each search's best completed trial (val split); several values in a cell are the "
             "search replicates'. Exponent b: least squares of log value on log width d (n_embd), values > 0 only; "
             f"the interval ({LEVEL:.0%}, t with n - 2 df) only when search replicates exist.",
             "Rank: where the best completed warm-start seed (a config carried from the scale below, "
             "search.warm_start / --warm-start-from) ended among its study's completed trials: 1 = the study's best; "
             "mup lr = lr · d_prev / d_this (μTransfer), same lr = unchanged.",
             *(transfer_sentence(frame, arm, replicates) for arm in arms)]
    return Table("transfer", "Transfer across scales: chosen config vs width (val split)", header, rows, frame, notes)
