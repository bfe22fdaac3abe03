"""PNG plots of a sweep (matplotlib, Agg canvas; no pyplot, so no global figure state).

* curves.png               val_ppl vs step of every search trial, a panel per scale,
                           colored by arm; how each trial ended is its end marker
* lr_vs_val_ppl.png        each trial's val_ppl (the objective; last value if stopped) vs lr,
                           a panel per (scale, arm)
* pareto.png               val ppl vs val ECE of the completed trials, a panel per scale,
                           non-dominated configs marked (analysis/pareto.py)
* reliability_<scale>.png  reliability diagrams per arm from the replicates' test ECE bins,
                           axes zoomed to the occupied confidence range
* ablation_<scale>.png     test ppl_ratio of the four arms (mean and 95 % interval, seeds as dots) and each
                           enhanced arm minus baseline with its 95 % t-interval; y zoomed to the data

Each plot returns a `Plot`: its file and a caption that says what it shows. Every panel has
its title and axis labels. A plot whose data is absent is skipped with the reason (returned,
not raised to the caller), so a half-finished sweep still gets the plots it can have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from kdsweep.analysis.fmt import sig
from kdsweep.analysis.load import TEST, column, per_seed, usable_replicates
from kdsweep.analysis.pareto import pareto_points
from kdsweep.analysis.stats import LEVEL, paired_difference, t_quantile
from kdsweep.analysis.tables import cell_of
from kdsweep.analysis.transfer import MUP_EXPONENT, PARAM_LABELS, TRANSFER_PARAMS, transfer_frame
from kdsweep.distill.run.rundir import COMPLETED, DIVERGED, STOPPED_EARLY
from kdsweep.sweeps.space import ARMS, BASELINE, ENHANCED_ARMS
from kdsweep.sweeps.study import FAILED, RUNNING

ARM_COLORS = {"baseline": "#555555", "uncertainty": "#1f77b4", "calibration": "#ff7f0e", "both": "#2ca02c"}
# How a search trial ended -> its end marker on the curves and in the lr plot.
END_MARKERS = {COMPLETED: "o", STOPPED_EARLY: "x", DIVERGED: "X", FAILED: "s", RUNNING: ">"}
END_LABELS = {COMPLETED: "completed", STOPPED_EARLY: "stopped early (ASHA)", DIVERGED: "diverged",
              FAILED: "failed", RUNNING: "running"}
DPI = 110
VAL_SUBSET = "val split's early-stopping subset, τ = 1"


@dataclass(frozen=True)
class Plot:
    path: Path
    caption: str  # what the figure shows, for the report


class PlotSkipped(Exception):
    """Raised by a plot function when its data is absent; the message says why."""


def _figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path, caption: str) -> Plot:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return Plot(path, caption)


def _labels(ax, title: str, x: str, y: str, fontsize: int = 9) -> None:
    """Every panel says what it is and what its axes are."""
    ax.set_title(title, fontsize=fontsize)
    ax.set_xlabel(x, fontsize=8)
    ax.set_ylabel(y, fontsize=8)


def _zoom(ax, lo: float, hi: float, pad: float = 0.12) -> None:
    """y limits around [lo, hi] with a margin: differences of a fraction of a percent stay visible."""
    span = hi - lo if hi > lo else max(abs(hi), 1e-12) * 0.01
    ax.set_ylim(lo - pad * span, hi + pad * span)


def _end_legend(ax, statuses) -> None:
    arms = [Line2D([], [], color=ARM_COLORS[a], lw=2, label=a) for a in ARMS]
    ends = [Line2D([], [], ls="", marker=END_MARKERS[s], color="k", mfc="none" if s == STOPPED_EARLY else "k",
                   label=END_LABELS[s]) for s in END_MARKERS if s in statuses]
    ax.legend(handles=arms + ends, fontsize=7, loc="upper right")


def _color(arm: str) -> str:
    return ARM_COLORS.get(arm, "#9467bd")


def plot_curves(trials: pd.DataFrame, history: pd.DataFrame, scales: list[str], path: Path) -> Plot:
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
        _labels(ax, f"scale {scale}: {len(t)} search trials", "training step", f"val ppl ({VAL_SUBSET})", 10)
        if not h.empty and (h["val_ppl"] > 0).all() and h["val_ppl"].max() / h["val_ppl"].min() > 10:
            ax.set_yscale("log")  # only when curves span decades; else log ticks are unreadable
        _end_legend(ax, set(t["status"]))
    return _save(fig, path, "Learning curves of every search trial: validation perplexity (the val split's "
                            "early-stopping subset, τ = 1) against training step, one panel per scale, colored by "
                            "arm; the last point's marker says how the trial ended (completed, stopped early by "
                            "ASHA, diverged).")


def plot_lr(trials: pd.DataFrame, scales: list[str], arms: list[str], path: Path) -> Plot:
    """Each trial's val_ppl vs lr per (scale, arm); stopped-early trials hollow (their last val_ppl)."""
    if "lr" not in trials.columns:
        raise PlotSkipped("lr is not a searched parameter")
    pts_all = trials[np.isfinite(trials["val_ppl"].astype(float)) & trials["lr"].notna()]
    if pts_all.empty:
        raise PlotSkipped("no search trial has a finite val_ppl yet")
    fig = _figure(3.2 * len(arms), 2.9 * len(scales))
    # one val ppl axis per scale: the arms of a scale compare by eye
    axes = fig.subplots(len(scales), len(arms), squeeze=False, sharey="row")
    lr_lo, lr_hi = pts_all["lr"].min(), pts_all["lr"].max()
    for i, scale in enumerate(scales):
        for j, arm in enumerate(arms):
            ax = axes[i][j]
            pts = pts_all[(pts_all["scale"] == scale) & (pts_all["arm"] == arm)]
            ax.set_xscale("log")
            # ticks at 1, 2, 5 x 10^k only: more crowd the axis
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.0e}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            _labels(ax, f"{scale} / {arm}", "learning rate", "val ppl")
            if pts.empty:
                ax.text(0.5, 0.5, "no trial with a val_ppl", ha="center", va="center", transform=ax.transAxes,
                        fontsize=8)
                continue
            for status, g in pts.groupby("status"):
                filled = status == COMPLETED
                ax.plot(g["lr"], g["val_ppl"], ls="", marker=END_MARKERS.get(status, "o"), ms=7,
                        color=_color(arm), mfc=_color(arm) if filled else "none",
                        label=END_LABELS.get(status, status) + ("" if filled else ": last val_ppl"))
            ax.set_xlim(lr_lo / 1.3, lr_hi * 1.3)  # one lr axis for every panel: positions compare across them
            done = pts[pts["status"] == COMPLETED]
            if not done.empty:
                b = done.loc[done["val_ppl"].idxmin()]
                ax.plot([b["lr"]], [b["val_ppl"]], ls="", marker="*", ms=15, color="gold", mec="k",
                        label="best (exported)")
            ax.legend(fontsize=6, loc="best")
    return _save(fig, path, "Learning rate against validation perplexity, one panel per (scale, arm): filled "
                            "markers are completed trials at their objective (the final model's val_ppl), hollow "
                            "ones trials stopped early at their last val_ppl; the star is the config exported and "
                            "replicated. The panels of a scale share their val ppl axis.")


def plot_pareto(trials: pd.DataFrame, scales: list[str], path: Path) -> Plot:
    """val ppl vs val ECE of the completed trials per scale, non-dominated ones ringed and joined."""
    per_scale = {s: pareto_points(trials, s)[0] for s in scales}
    if all(p.empty for p in per_scale.values()):
        raise PlotSkipped("no completed search trial has both a val_ppl and a val ECE")
    fig = _figure(4.6 * len(scales), 3.8)
    axes = fig.subplots(1, len(scales), squeeze=False)[0]
    for ax, scale in zip(axes, scales):
        pts = per_scale[scale]
        _labels(ax, f"scale {scale}: {int(pts['pareto'].sum())} of {len(pts)} completed trials non-dominated",
                f"val ppl ({VAL_SUBSET})", "val ECE")
        if pts.empty:
            ax.text(0.5, 0.5, "no completed trial with val ECE", ha="center", va="center", transform=ax.transAxes)
            continue
        for arm, g in pts.groupby("arm"):
            ax.plot(g["val_ppl"], g["val_ece"], ls="", marker="o", ms=6, color=_color(arm), label=arm)
        front = pts[pts["pareto"]].sort_values("val_ppl")
        ax.plot(front["val_ppl"], front["val_ece"], ls="-", drawstyle="steps-post", color="k", lw=0.8)
        ax.plot(front["val_ppl"], front["val_ece"], ls="", marker="o", ms=11, mfc="none", mec="k",
                label="non-dominated")
        ax.legend(fontsize=7)
    return _save(fig, path, "Fit against calibration of the completed search trials: the final model's val ppl "
                            "against its val ECE (both on the val split's early-stopping subset), one panel per "
                            "scale, colored by arm; ringed points are non-dominated (no other trial is at least as "
                            "good on both, better on one), joined as the Pareto front.")


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


def occupied_limit(bins_by_arm: list[list[dict]]) -> float:
    """The upper end of the occupied confidence bins and their accuracies (one limit for x and y so the
    diagonal stays at 45°), rounded up to a tenth; 1 when the bins reach it."""
    top = max((max(b["hi"], b["accuracy"]) for bins in bins_by_arm for b in bins if b["count"]), default=1.0)
    return min(1.0, math.ceil(top * 10 - 1e-9) / 10)


def plot_reliability(reps: pd.DataFrame, scale: str, path: Path) -> Plot:
    """Per arm: accuracy per confidence bin (bars) and mean confidence (dots) vs the diagonal; counts below."""
    bins_col = column(TEST, "ece_bins")
    ok = usable_replicates(reps)
    ok = ok[ok["scale"] == scale] if not ok.empty else ok
    if ok.empty or bins_col not in ok.columns or not ok[bins_col].map(lambda b: isinstance(b, list)).any():
        raise PlotSkipped(f"no completed replicate at scale {scale} has ECE bins")
    with_bins = ok[ok[bins_col].map(lambda b: isinstance(b, list))]
    seed_bins = {arm: list(g[bins_col]) for arm, g in with_bins.groupby("arm")}
    per_arm = {arm: aggregate_bins(lists) for arm, lists in seed_bins.items()}
    limit = occupied_limit(list(per_arm.values()))
    fig = _figure(3.0 * len(ARMS), 5.2)
    axes = fig.subplots(2, len(ARMS), squeeze=False, height_ratios=[3, 1], sharex=True)
    for j, arm in enumerate(ARMS):
        top, bottom = axes[0][j], axes[1][j]
        top.plot([0, limit], [0, limit], ls="--", color="k", lw=1, label="perfect calibration")
        top.set_xlim(0, limit)
        top.set_ylim(0, limit)
        _labels(bottom, "", "confidence (max probability)", "tokens per bin")
        if arm not in per_arm:
            _labels(top, f"{arm}: missing", "", "accuracy")
            top.text(limit / 2, limit / 2, "no completed replicate", ha="center", va="center", fontsize=8)
            continue
        bins = per_arm[arm]
        full = [b for b in bins if b["count"]]
        centers = [(b["lo"] + b["hi"]) / 2 for b in full]
        widths = [(b["hi"] - b["lo"]) * 0.9 for b in full]
        top.bar(centers, [b["accuracy"] for b in full], width=widths, color=_color(arm), alpha=0.6, label="accuracy")
        top.plot([b["confidence"] for b in full], [b["accuracy"] for b in full], ls="", marker="o", ms=4, color="k",
                 label="(mean confidence, accuracy)")
        acc = sum(b["accuracy"] * b["count"] for b in full) / sum(b["count"] for b in full)
        _labels(top, f"{arm} (n={len(seed_bins[arm])} seeds)\nECE {sig(ece_of_bins(bins))}, accuracy {sig(acc)}", "",
                "accuracy")
        top.legend(fontsize=6, loc="upper left")
        bottom.bar(centers, [b["count"] for b in full], width=widths, color=_color(arm))
        bottom.set_yscale("log")
    fig.suptitle(f"Reliability at scale {scale} (test split, bins summed over seeds)", fontsize=10)
    zoom = "" if limit == 1 else (f" Both axes show 0 to {limit:g}, the occupied range: no token was predicted with "
                                  "more confidence and no bin was more accurate.")
    return _save(fig, path, f"Reliability diagrams at scale {scale} on the test split, one column per arm: bars are "
                            "the accuracy of the tokens in each confidence bin (summed over seeds), dots the bin's "
                            "mean confidence against its accuracy, the dashed diagonal perfect calibration; below, "
                            f"how many tokens fell in each bin (log scale).{zoom}")


def plot_ablation(reps: pd.DataFrame, scale: str, path: Path) -> Plot:
    """Left: test ppl_ratio of the four arms (mean and its t-interval, seeds as dots). Right: each enhanced arm
    minus baseline per seed, its mean and 95 % t-interval, against 0. y zoomed to the data."""
    ok = usable_replicates(reps)
    series = {a: per_seed(ok, scale, a, "ppl_ratio") for a in ARMS}
    if all(s.empty for s in series.values()):
        raise PlotSkipped(f"no completed replicate with ppl_ratio at scale {scale}")
    fig = _figure(9.5, 4.0)
    left, right = fig.subplots(1, 2)
    shown = []
    for i, arm in enumerate(ARMS):
        s = series[arm]
        if s.empty:
            left.text(i, 0.5, "missing", ha="center", va="center", fontsize=8, color="red",
                      transform=left.get_xaxis_transform())
            continue
        c = cell_of(s)
        # the mean's 95 % t-interval (none from one seed)
        spread = 0.0 if math.isnan(c.std) or c.n < 2 else t_quantile(1 - (1 - LEVEL) / 2, c.n - 1) * c.std / math.sqrt(c.n)
        left.errorbar(i, c.mean, yerr=spread or None, fmt="D", ms=8, color=_color(arm), capsize=6, lw=2)
        left.plot(np.full(len(s), i) + np.linspace(-0.18, 0.18, len(s)), s.values, ls="", marker="o", ms=4,
                  color="k", alpha=0.7)
        left.annotate(f"n={c.n}" + ("" if c.n >= 2 else ", no spread"), (i, 0), xycoords=("data", "axes fraction"),
                      xytext=(0, 3), textcoords="offset points", ha="center", fontsize=8)
        shown += [*s.values, c.mean - spread, c.mean + spread]
    # The unigram floor (method §5): the ppl_ratio of a model that knows only the train split's residue
    # composition, on the same test tokens, so one value per scale (mean over its replicates). A student
    # on or above this line has learnt nothing but composition.
    floor = pd.concat([per_seed(ok, scale, a, "unigram_ppl_ratio") for a in ARMS])
    if not floor.empty:
        left.axhline(floor.mean(), color="tab:red", lw=1.2, ls="--", label=f"unigram floor {floor.mean():.4g}")
        left.legend(loc="best", fontsize=8, frameon=False)
        shown.append(float(floor.mean()))
    _zoom(left, min(shown), max(shown))
    left.set_xticks(range(len(ARMS)), ARMS)
    _labels(left, f"test ppl_ratio at scale {scale}: mean, {round(100 * LEVEL)} % interval, seeds as dots", "arm",
            "test ppl_ratio (student / teacher)")

    base = series[BASELINE]
    diffs = {a: paired_difference(series[a], base) for a in ENHANCED_ARMS}
    right.axhline(0, color="k", lw=1, ls=":")
    shown = [0.0]
    for i, arm in enumerate(ENHANCED_ARMS):
        d = diffs[arm]
        if d.n == 0:
            right.text(i, 0.5, "missing", ha="center", va="center", fontsize=8, color="red",
                       transform=right.get_xaxis_transform())
            continue
        per = (series[arm].loc[list(d.seeds)] - base.loc[list(d.seeds)]).values
        right.plot(np.full(len(per), i) + np.linspace(-0.18, 0.18, len(per)), per, ls="", marker="o", ms=4,
                   color="k", alpha=0.7)
        has_ci = not math.isnan(d.lo)
        right.errorbar(i, d.mean, yerr=[[d.mean - d.lo], [d.hi - d.mean]] if has_ci else None, fmt="D", ms=8,
                       color=_color(arm), capsize=6, lw=2)
        right.annotate(d.verdict, (i, 0), xycoords=("data", "axes fraction"), xytext=(0, 3),
                       textcoords="offset points", ha="center", fontsize=8)
        shown += [*per, *((d.lo, d.hi) if has_ci else ())]
    _zoom(right, min(shown), max(shown))
    right.set_xticks(range(len(ENHANCED_ARMS)), ENHANCED_ARMS)
    _labels(right, f"arm - baseline per seed, mean and {round(100 * LEVEL)} % t-interval", "enhanced arm",
            "difference in test ppl_ratio (< 0: better)")
    return _save(fig, path, f"Ablation at scale {scale} on the test split. Left: ppl_ratio (student ppl / teacher "
                            f"ppl on the same tokens) of each arm, the mean over seeds with its {round(100 * LEVEL)} % "
                            "t-interval (diamond and bar) and each seed as a dot; the dashed red line is the "
                            "unigram floor, the ppl_ratio of a model that knows only the train split's residue "
                            "composition (where measured). Right: each enhanced arm minus "
                            f"the baseline of the same seed, with the mean and its {round(100 * LEVEL)} % "
                            "t-interval and the verdict word; below the dotted zero line is better. Both y-axes "
                            "are zoomed to the data, not started at 0.")


def plot_transfer(trials: pd.DataFrame, scales: list[str], arms: list[str], path: Path, replicates: int = 1) -> Plot:
    """The chosen lr, warmup, τ, α per scale against the scale's width, log-log, one line per arm."""
    if len(scales) < 2:
        raise PlotSkipped("one scale: nothing to transfer to")
    frame = transfer_frame(trials, scales, arms, replicates)
    if not np.isfinite(frame["lr"].astype(float)).any():
        raise PlotSkipped("no study has a completed trial yet")
    fig = _figure(3.0 * len(TRANSFER_PARAMS), 3.0)
    axes = fig.subplots(1, len(TRANSFER_PARAMS), squeeze=False)[0]
    for ax, param in zip(axes, TRANSFER_PARAMS):
        ax.set_xscale("log")
        ax.set_yscale("log")
        _labels(ax, PARAM_LABELS[param], "width d (n_embd)", f"chosen {PARAM_LABELS[param]}")
        for arm in arms:
            pts = frame[(frame["arm"] == arm) & (frame[param] > 0)]
            if pts.empty:
                continue
            # one line through each width's mean over search replicates, every replicate a dot
            line = pts.groupby("width")[param].apply(lambda v: float(np.exp(np.log(v).mean())))
            ax.plot(line.index, line.values, marker="o", ms=5, color=_color(arm), label=arm)
            ax.plot(pts["width"], pts[param], ls="", marker=".", color=_color(arm))
        if param == "lr":
            first = frame[(frame[param] > 0)].sort_values("width")
            if not first.empty:  # μTransfer's d^-1 through the smallest width's first chosen lr
                d0, v0 = float(first["width"].iloc[0]), float(first[param].iloc[0])
                ds = np.array(sorted(frame["width"].unique()), dtype=float)
                ax.plot(ds, v0 * (ds / d0) ** MUP_EXPONENT, ls="--", color="grey", label="d^-1 (μTransfer)")
        ax.legend(fontsize=6, loc="best")
    return _save(fig, path, "The config each search chose (its best completed trial) against the scale's width, "
                            "log-log, one line per arm (geometric mean over search replicates; dots: each "
                            "replicate). Dashed: the learning rate μTransfer's 1/width rule would carry over. The "
                            "transfer table gives the fitted exponents and whether warm-start seeds won.")


def make_plots(trials: pd.DataFrame, history: pd.DataFrame, reps: pd.DataFrame, scales: list[str],
               arms: list[str], out_dir: Path, replicates: int = 1) -> tuple[dict[str, Plot], dict[str, str]]:
    """Every plot: ({name: Plot}, {name: why it was skipped})."""
    jobs = {"curves": lambda p: plot_curves(trials, history, scales, p),
            "lr_vs_val_ppl": lambda p: plot_lr(trials, scales, arms, p),
            "pareto": lambda p: plot_pareto(trials, scales, p),
            "transfer": lambda p: plot_transfer(trials, scales, arms, p, replicates)}
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
