"""PNG plots of a sweep (matplotlib, Agg canvas; no pyplot, so no global figure state).

* curves.png               val_ppl vs step of every search trial, a panel per scale,
                           colored by arm; how each trial ended is its end marker
* lr_vs_best.png           best val_ppl vs lr (log x), a panel per (scale, arm)
* reliability_<scale>.png  reliability diagrams per arm from the replicates' ECE bins
* ablation_<scale>.png     test ppl_ratio of the four arms, mean ± std over seeds

A plot whose data is absent is skipped with the reason (returned, not raised to
the caller), so a half-finished sweep still gets the plots it can have.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from analysis.load import usable_replicates
from analysis.tables import cell_of, per_seed
from distill.rundir import COMPLETED, DIVERGED, STOPPED_EARLY
from sweeps.space import ARMS
from sweeps.study import FAILED, RUNNING

ARM_COLORS = {"baseline": "#555555", "uncertainty": "#1f77b4", "calibration": "#ff7f0e", "both": "#2ca02c"}
# How a search trial ended -> its end marker on the curves and in the lr plot.
END_MARKERS = {COMPLETED: "o", STOPPED_EARLY: "x", DIVERGED: "X", FAILED: "s", RUNNING: ">"}
END_LABELS = {COMPLETED: "completed", STOPPED_EARLY: "stopped early (ASHA)", DIVERGED: "diverged",
              FAILED: "failed", RUNNING: "running"}
DPI = 110


class PlotSkipped(Exception):
    """Raised by a plot function when its data is absent; the message says why."""


def _figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _end_legend(ax, statuses) -> None:
    arms = [Line2D([], [], color=ARM_COLORS[a], lw=2, label=a) for a in ARMS]
    ends = [Line2D([], [], ls="", marker=END_MARKERS[s], color="k", mfc="none" if s == STOPPED_EARLY else "k",
                   label=END_LABELS[s]) for s in END_MARKERS if s in statuses]
    ax.legend(handles=arms + ends, fontsize=7, loc="upper right")


def _color(arm: str) -> str:
    return ARM_COLORS.get(arm, "#9467bd")


def plot_curves(trials: pd.DataFrame, history: pd.DataFrame, scales: list[str], path: Path) -> Path:
    """val_ppl vs step per search trial; a trial's last point carries how it ended."""
    if history.empty or not np.isfinite(history["val_ppl"]).any():
        raise PlotSkipped("no eval rows (val_ppl) in any search trial's metrics.jsonl")
    fig = _figure(5.2 * len(scales), 4.2)
    axes = fig.subplots(1, len(scales), squeeze=False)[0]
    for ax, scale in zip(axes, scales):
        h = history[(history["scale"] == scale) & np.isfinite(history["val_ppl"])]
        t = trials[trials["scale"] == scale]
        for tr in t.itertuples(index=False):
            pts = h[h["trial_id"] == tr.trial_id].sort_values("step")
            if pts.empty:
                continue
            ax.plot(pts["step"], pts["val_ppl"], color=_color(tr.arm), lw=1.2, alpha=0.8)
            marker = END_MARKERS.get(tr.status, "o")
            ax.plot(pts["step"].iloc[-1], pts["val_ppl"].iloc[-1], ls="", marker=marker, ms=9 if marker in "xX" else 5,
                    mew=2 if marker == "x" else 1, color=_color(tr.arm),
                    mec="red" if tr.status == DIVERGED else _color(tr.arm))
        # Trials that diverged/failed before their first eval have no curve: say how many.
        no_curve = t[~t["trial_id"].isin(h["trial_id"])]
        if not no_curve.empty:
            counts = no_curve["status"].value_counts()
            ax.text(0.02, 0.02, "no eval point: " + ", ".join(f"{n} {s}" for s, n in counts.items()),
                    transform=ax.transAxes, fontsize=7, color="red")
        ax.set_title(f"scale {scale}: {len(t)} trials")
        ax.set_xlabel("step")
        ax.set_ylabel("val ppl (held-out, τ = 1)")
        if not h.empty and (h["val_ppl"] > 0).all() and h["val_ppl"].max() / h["val_ppl"].min() > 10:
            ax.set_yscale("log")  # only when curves span decades; else log ticks are unreadable
        _end_legend(ax, set(t["status"]))
    return _save(fig, path)


def plot_lr(trials: pd.DataFrame, scales: list[str], arms: list[str], path: Path) -> Path:
    """Best val_ppl vs lr per (scale, arm); stopped-early trials hollow (their best is before the stop)."""
    if "lr" not in trials.columns:
        raise PlotSkipped("lr is not a searched parameter")
    pts_all = trials[np.isfinite(trials["best_val_ppl"].astype(float)) & trials["lr"].notna()]
    if pts_all.empty:
        raise PlotSkipped("no search trial has a finite best val_ppl yet")
    fig = _figure(3.2 * len(arms), 2.9 * len(scales))
    axes = fig.subplots(len(scales), len(arms), squeeze=False)
    for i, scale in enumerate(scales):
        for j, arm in enumerate(arms):
            ax = axes[i][j]
            pts = pts_all[(pts_all["scale"] == scale) & (pts_all["arm"] == arm)]
            ax.set_xscale("log")
            # lr ranges within one decade: major ticks only, and room around the points
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.0e}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_title(f"{scale} / {arm}", fontsize=9)
            if pts.empty:
                ax.text(0.5, 0.5, "no trial with a val_ppl", ha="center", va="center", transform=ax.transAxes,
                        fontsize=8)
                continue
            for status, g in pts.groupby("status"):
                filled = status == COMPLETED
                ax.plot(g["lr"], g["best_val_ppl"], ls="", marker=END_MARKERS.get(status, "o"), ms=7,
                        color=_color(arm), mfc=_color(arm) if filled else "none",
                        label=END_LABELS.get(status, status) + ("" if filled else ": best before it ended"))
            lo, hi = pts["lr"].min(), pts["lr"].max()
            ax.set_xlim(lo / 1.6, hi * 1.6)
            done = pts[pts["status"] == COMPLETED]
            if not done.empty:
                b = done.loc[done["best_val_ppl"].idxmin()]
                ax.plot([b["lr"]], [b["best_val_ppl"]], ls="", marker="*", ms=15, color="gold", mec="k",
                        label="best (exported)")
            ax.legend(fontsize=6)
            if i == len(scales) - 1:
                ax.set_xlabel("learning rate")
            if j == 0:
                ax.set_ylabel("best val ppl")
    return _save(fig, path)


def aggregate_bins(bin_lists: list[list[dict]]) -> list[dict]:
    """Sum the per-seed ECE bins: counts add; accuracy and confidence are count-weighted means."""
    agg: dict[tuple, dict] = {}
    for bins in bin_lists:
        for b in bins or []:
            key = (round(float(b["lo"]), 6), round(float(b["hi"]), 6))
            a = agg.setdefault(key, {"lo": key[0], "hi": key[1], "count": 0, "acc_sum": 0.0, "conf_sum": 0.0})
            c = int(b.get("count") or 0)
            if c:
                a["count"] += c
                a["acc_sum"] += c * float(b["accuracy"])
                a["conf_sum"] += c * float(b["confidence"])
    out = []
    for key in sorted(agg):
        a = agg[key]
        n = a["count"]
        out.append({"lo": a["lo"], "hi": a["hi"], "count": n, "accuracy": a["acc_sum"] / n if n else None,
                    "confidence": a["conf_sum"] / n if n else None})
    return out


def ece_of_bins(bins: list[dict]) -> float:
    n = sum(b["count"] for b in bins)
    return sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]) if n else math.nan


def plot_reliability(reps: pd.DataFrame, scale: str, path: Path) -> Path:
    """Per arm: accuracy per confidence bin (bars) and mean confidence (dots) vs the diagonal; counts below."""
    ok = usable_replicates(reps)
    ok = ok[ok["scale"] == scale] if not ok.empty else ok
    if ok.empty or "ece_bins" not in ok.columns or not ok["ece_bins"].map(lambda b: isinstance(b, list)).any():
        raise PlotSkipped(f"no completed replicate at scale {scale} has ECE bins")
    fig = _figure(3.0 * len(ARMS), 5.0)
    axes = fig.subplots(2, len(ARMS), squeeze=False, height_ratios=[3, 1], sharex=True)
    for j, arm in enumerate(ARMS):
        top, bottom = axes[0][j], axes[1][j]
        sel = ok[(ok["arm"] == arm) & ok["ece_bins"].map(lambda b: isinstance(b, list))]
        top.plot([0, 1], [0, 1], ls="--", color="k", lw=1, label="perfect calibration")
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        if sel.empty:
            top.set_title(f"{arm}: missing", fontsize=9)
            top.text(0.5, 0.5, "no completed replicate", ha="center", va="center", fontsize=8)
            continue
        bins = aggregate_bins(list(sel["ece_bins"]))
        full = [b for b in bins if b["count"]]
        centers = [(b["lo"] + b["hi"]) / 2 for b in full]
        widths = [(b["hi"] - b["lo"]) * 0.9 for b in full]
        top.bar(centers, [b["accuracy"] for b in full], width=widths, color=_color(arm), alpha=0.6, label="accuracy")
        top.plot([b["confidence"] for b in full], [b["accuracy"] for b in full], ls="", marker="o", ms=4, color="k",
                 label="(mean conf, acc)")
        acc = sum(b["accuracy"] * b["count"] for b in full) / sum(b["count"] for b in full)
        top.set_title(f"{arm} (n={len(sel)} seeds)\nECE {ece_of_bins(bins):.3g}, accuracy {acc:.3g}", fontsize=9)
        top.legend(fontsize=6, loc="upper left")
        bottom.bar(centers, [b["count"] for b in full], width=widths, color=_color(arm))
        bottom.set_yscale("log")
        bottom.set_xlabel("confidence (max prob)")
        if j == 0:
            top.set_ylabel("accuracy")
            bottom.set_ylabel("count")
    fig.suptitle(f"Reliability at scale {scale} (test split, bins summed over seeds)", fontsize=10)
    return _save(fig, path)


def plot_ablation(reps: pd.DataFrame, scale: str, path: Path) -> Path:
    """Test ppl_ratio of the four arms: bars = mean, error bars = std over seeds (none when n < 2), dots = seeds."""
    ok = usable_replicates(reps)
    series = {a: per_seed(ok, scale, a, "ppl_ratio") for a in ARMS}
    if all(s.empty for s in series.values()):
        raise PlotSkipped(f"no completed replicate with ppl_ratio at scale {scale}")
    fig = _figure(5.5, 4.0)
    ax = fig.subplots()
    for i, arm in enumerate(ARMS):
        s = series[arm]
        if s.empty:
            ax.text(i, 0, "missing", ha="center", va="bottom", fontsize=8, color="red")
            continue
        c = cell_of(s)
        ax.bar(i, c.mean, color=_color(arm), alpha=0.7, yerr=None if math.isnan(c.std) else c.std, capsize=6)
        ax.plot(np.full(len(s), i) + np.linspace(-0.15, 0.15, len(s)), s.values, ls="", marker="o", ms=4, color="k")
        ax.text(i, c.mean * 0.04, f"n={c.n}" + ("" if c.n >= 2 else "\nno spread"), ha="center", va="bottom",
                fontsize=8)
    ax.axhline(1.0, color="k", ls=":", lw=1)
    ax.set_xticks(range(len(ARMS)), ARMS)
    ax.set_ylabel("test ppl_ratio (student / teacher)")
    ax.set_title(f"Ablation at scale {scale}: mean ± std over seeds")
    return _save(fig, path)


def make_plots(trials: pd.DataFrame, history: pd.DataFrame, reps: pd.DataFrame, scales: list[str],
               arms: list[str], out_dir: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """Every plot: ({name: png path}, {name: why it was skipped})."""
    jobs = {"curves": lambda p: plot_curves(trials, history, scales, p),
            "lr_vs_best": lambda p: plot_lr(trials, scales, arms, p)}
    for scale in scales:
        jobs[f"reliability_{scale}"] = lambda p, s=scale: plot_reliability(reps, s, p)
        jobs[f"ablation_{scale}"] = lambda p, s=scale: plot_ablation(reps, s, p)
    written, skipped = {}, {}
    for name, job in jobs.items():
        try:
            written[name] = job(out_dir / f"{name}.png")
        except PlotSkipped as e:
            skipped[name] = str(e)
    return written, skipped
