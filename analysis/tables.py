"""The method §7 tables, built from completed replicates only, as Markdown, CSV and LaTeX.

* scale x enhancement: per scale, baseline vs the best enhanced arm (lowest mean
  test ppl_ratio among uncertainty / calibration / both);
* ablation per scale: the four arms side by side and the interaction term
  both - (uncertainty + calibration - baseline);
* replicate status and search-trial counts, so what was left out is visible.

Every number is mean ± std (ddof=1) over seeds with its n. A replicate enters
a table only if its run completed and has test metrics: diverged, failed or
unfinished runs are counted in their own column, never averaged (a diverged
seed has no test metrics to average, and dropping it silently would flatter
the arm). With fewer than 2 seeds a cell says "no spread" rather than "± 0",
and an arm or scale without any usable replicate says "missing".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.load import INCOMPLETE, UNREADABLE, usable_replicates
from distill.rundir import COMPLETED, DIVERGED
from sweeps.space import ARMS, BASELINE, ENHANCED_ARMS
from sweeps.study import TRIAL_STATES

ABLATION_METRICS = ("ppl_ratio", "kl_teacher", "ece", "accuracy", "aa_kl_natural")
INTERACTION = "interaction: both - (uncertainty + calibration - baseline)"
PAIRED, PROPAGATED = "per seed", "propagated"


# --------------------------------------------------------------------------------------
# Cells: mean, std, n, and how they print
# --------------------------------------------------------------------------------------


def fmt(x: float, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    return f"{x:.{digits}g}"


@dataclass(frozen=True)
class Cell:
    mean: float = math.nan
    std: float = math.nan  # NaN when n < 2 (or not computable): printed as "no spread", never "± 0"
    n: int = 0
    note: str = ""  # why missing, or how the spread was obtained
    nan_seeds: tuple[int, ...] = ()  # completed replicates whose value is NaN: named, not averaged

    @property
    def missing(self) -> bool:
        return self.n == 0

    def text(self) -> str:
        if self.missing:
            return f"missing ({self.note})" if self.note else "missing"
        if self.n < 2 or math.isnan(self.std):
            out = f"{fmt(self.mean)} (n={self.n}, no spread)"
        else:
            out = f"{fmt(self.mean)} ± {fmt(self.std, 3)} (n={self.n})"
        if self.nan_seeds:
            out += f" [NaN in seed {', '.join(map(str, self.nan_seeds))}, not averaged]"
        return out


def cell_of(values: pd.Series, note: str = "") -> Cell:
    """Mean ± sample std (ddof=1) of the non-NaN values."""
    v = pd.to_numeric(values, errors="coerce").dropna().astype(float)
    if v.empty:
        return Cell(note=note or "no completed replicate")
    std = float(v.std(ddof=1)) if len(v) >= 2 else math.nan
    mean = float(v.mean())
    if std < 1e-12 * max(1.0, abs(mean)):
        std = 0.0  # identical values (e.g. compression of one scale) differ only by float rounding
    return Cell(mean, std, len(v))


def per_seed(reps: pd.DataFrame, scale: str, arm: str, metric: str) -> pd.Series:
    """A metric of the usable replicates of (scale, arm), indexed by seed (NaN values dropped)."""
    if reps.empty or metric not in reps.columns:
        return pd.Series(dtype=float)
    sel = reps[(reps["scale"] == scale) & (reps["arm"] == arm)]
    return pd.to_numeric(sel.set_index("seed")[metric], errors="coerce").dropna().astype(float).sort_index()


def metric_cell(ok: pd.DataFrame, scale: str, arm: str, metric: str) -> Cell:
    """The cell of one metric of (scale, arm) over its usable replicates.

    A NaN value (e.g. aa_kl_natural when the sampled sequences held no standard
    residue) is not a number to average: the cell names those seeds instead.
    """
    sel = ok[(ok["scale"] == scale) & (ok["arm"] == arm)] if not ok.empty else ok
    if sel.empty:
        return Cell(note="no completed replicate")
    if metric not in sel.columns:
        return Cell(note=f"{metric} not in the test metrics")
    vals = pd.to_numeric(sel.set_index("seed")[metric], errors="coerce")
    c = cell_of(vals.dropna())
    if c.missing:
        return Cell(note=f"NaN in all {len(sel)} completed replicates")
    return Cell(c.mean, c.std, c.n, c.note, tuple(sorted(int(s) for s in vals.index[vals.isna()])))


def _same_seeds(series: list[pd.Series]) -> bool:
    return all(len(s) > 0 for s in series) and all(set(s.index) == set(series[0].index) for s in series)


def improvement_cell(base: pd.Series, best: pd.Series) -> Cell:
    """(baseline - best) / baseline * 100, in %.

    Same seeds in both arms: computed per seed (paired), then mean ± std over
    seeds. Otherwise from the two means, with first-order error propagation of
    the two seed stds: d/dA = 100 B/A^2, d/dB = -100/A.
    """
    if base.empty or best.empty:
        return Cell(note="no value for " + ("baseline" if base.empty else "any enhanced arm"))
    if _same_seeds([base, best]):
        c = cell_of(100.0 * (base - best.loc[base.index]) / base)
        return Cell(c.mean, c.std, c.n, PAIRED)
    a, b = cell_of(base), cell_of(best)
    std = 100.0 / a.mean * math.sqrt(b.std**2 + (b.mean / a.mean) ** 2 * a.std**2)
    return Cell(100.0 * (a.mean - b.mean) / a.mean, std, min(a.n, b.n), PROPAGATED)


def interaction_cell(by_arm: dict[str, pd.Series]) -> Cell:
    """both - (uncertainty + calibration - baseline).

    When the four arms have the same seeds, the term is computed per seed and
    reported as mean ± std over seeds (the seed is shared, so its effect cancels
    as it would in a paired design). Otherwise: difference of means with
    std = sqrt(sum of the four arms' seed variances), n = the smallest n.
    """
    absent = [a for a in ARMS if by_arm[a].empty]
    if absent:
        return Cell(note="no value for " + ", ".join(absent))
    b, u, c, both = (by_arm[a] for a in ARMS)
    if _same_seeds([b, u, c, both]):
        idx = b.index
        term = both.loc[idx] - (u.loc[idx] + c.loc[idx] - b.loc[idx])
        cell = cell_of(term)
        return Cell(cell.mean, cell.std, cell.n, PAIRED)
    cells = [cell_of(s) for s in (b, u, c, both)]
    mean = cells[3].mean - (cells[1].mean + cells[2].mean - cells[0].mean)
    std = math.sqrt(sum(x.std**2 for x in cells))  # NaN if any arm has n < 2
    return Cell(mean, std, min(x.n for x in cells), PROPAGATED)


def spread_text(cell: Cell) -> str:
    if cell.missing:
        return ""
    if cell.note == PAIRED:
        return "per-seed term, mean ± std over shared seeds"
    return "seed sets differ: difference of means, std = sqrt(sum of the arms' variances)"


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------


@dataclass
class Table:
    name: str  # file stem
    title: str
    header: list[str]
    rows: list[list[str]]  # display text
    data: pd.DataFrame  # numbers for the CSV: separate mean / std / n columns
    notes: list[str] = field(default_factory=list)


def _put(rec: dict, prefix: str, cell: Cell) -> None:
    rec[f"{prefix}_mean"], rec[f"{prefix}_std"], rec[f"{prefix}_n"] = cell.mean, cell.std, cell.n


def excluded_by_arm(reps: pd.DataFrame, scale: str, arm: str) -> dict[str, list[int]]:
    """Replicates that exist but do not enter tables, by reason -> seeds."""
    if reps.empty:
        return {}
    sel = reps[(reps["scale"] == scale) & (reps["arm"] == arm)]
    out: dict[str, list[int]] = {}
    for r in sel.itertuples(index=False):
        if r.status == COMPLETED and r.has_test:
            continue
        reason = "completed without test metrics" if r.status == COMPLETED else r.status
        out.setdefault(reason, []).append(int(r.seed))
    return out


def excluded_text(ex: dict[str, list[int]]) -> str:
    return "; ".join(f"{len(s)} {why} (seed {', '.join(map(str, sorted(s)))})" for why, s in sorted(ex.items())) or "-"


def _acc_zero_seeds(ok: pd.DataFrame, scale: str, arm: str) -> list[int]:
    if ok.empty or "accuracy_is_zero" not in ok.columns:
        return []
    sel = ok[(ok["scale"] == scale) & (ok["arm"] == arm)]
    return sorted(int(s) for s, z in zip(sel["seed"], sel["accuracy_is_zero"]) if z is True or z == 1.0)


def best_arm(ok: pd.DataFrame, scale: str, arms) -> str | None:
    """Among `arms`, the one with the lowest mean test ppl_ratio over its usable replicates."""
    means = {a: s.mean() for a in arms if not (s := per_seed(ok, scale, a, "ppl_ratio")).empty}
    return min(means, key=means.get) if means else None


def scale_table(reps: pd.DataFrame, scales: list[str]) -> Table:
    """method §7 scale x enhancement: a row per scale."""
    ok = usable_replicates(reps)
    header = ["scale", "compression", "baseline ppl_ratio", "best arm", "best-arm ppl_ratio", "improvement %",
              "baseline ECE", "baseline accuracy", "best-arm ECE", "best-arm accuracy", "baseline kl_teacher",
              "best-arm kl_teacher", "excluded replicates"]
    rows, records, notes = [], [], []
    for scale in scales:
        scale_ok = ok[ok["scale"] == scale] if not ok.empty else ok
        # compression = teacher / student params: the same for every arm of a scale, so all its runs count.
        comp = cell_of(scale_ok["compression"]) if "compression" in scale_ok.columns else Cell(note="no completed replicate")
        arm = best_arm(ok, scale, ENHANCED_ARMS)
        cells = {"compression": comp}
        for who, a in (("baseline", BASELINE), ("best", arm)):
            for m in ("ppl_ratio", "ece", "accuracy", "kl_teacher"):
                cells[f"{who}_{m}"] = (metric_cell(ok, scale, a, m) if a else
                                       Cell(note="no completed replicate of any enhanced arm"))
        imp = improvement_cell(per_seed(ok, scale, BASELINE, "ppl_ratio"),
                               per_seed(ok, scale, arm, "ppl_ratio") if arm else pd.Series(dtype=float))
        cells["improvement_pct"] = imp
        excluded = {a: ex for a in ARMS if (ex := excluded_by_arm(reps, scale, a))}
        excluded_txt = "; ".join(f"{a}: {excluded_text(ex)}" for a, ex in excluded.items()) or "-"

        def ece_text(who: str, a: str | None) -> str:
            zero = _acc_zero_seeds(ok, scale, a) if a else []
            return cells[f"{who}_ece"].text() + (f" [accuracy 0 in seed {', '.join(map(str, zero))}: ECE = mean "
                                                 "confidence]" if zero else "")

        rows.append([scale, comp.text(), cells["baseline_ppl_ratio"].text(), arm or "missing",
                     cells["best_ppl_ratio"].text(),
                     imp.text() + (" [from means]" if imp.note == PROPAGATED else ""),
                     ece_text("baseline", BASELINE), cells["baseline_accuracy"].text(), ece_text("best", arm),
                     cells["best_accuracy"].text(), cells["baseline_kl_teacher"].text(),
                     cells["best_kl_teacher"].text(), excluded_txt])
        rec = {"scale": scale, "best_arm": arm or ""}
        for k, c in cells.items():
            _put(rec, k, c)
        rec["improvement_pct_method"] = imp.note if not imp.missing else ""
        rec["n_excluded"] = sum(len(s) for ex in excluded.values() for s in ex.values())
        rec["excluded"] = excluded_txt if excluded else ""
        records.append(rec)
        if imp.note == PROPAGATED:
            notes.append(f"{scale}: baseline and {arm} do not share the same seeds; improvement % is computed from "
                         "the two means, its std by first-order error propagation.")
    notes.append("Each cell: mean ± std (ddof=1) over seeds of completed replicates (test split), with n. "
                 "best arm = the enhanced arm with the lowest mean ppl_ratio. improvement % = "
                 "(baseline - best) / baseline * 100, per seed when the seeds are shared.")
    return Table("scale_enhancement", "Scale x enhancement (test split)", header, rows, pd.DataFrame(records), notes)


def ablation_table(reps: pd.DataFrame, scale: str, metrics=ABLATION_METRICS) -> Table:
    """method §7 ablation at one scale: four arms + the interaction term, per metric."""
    ok = usable_replicates(reps)
    metrics = list(metrics)  # all of them always (stable columns); an absent metric's cells say "missing"
    header = ["arm", "seeds", *metrics, "excluded replicates"]
    rows, records = [], []
    for arm in ARMS:
        seeds = sorted(int(s) for s in ok[(ok["scale"] == scale) & (ok["arm"] == arm)]["seed"]) if not ok.empty else []
        cells = {m: metric_cell(ok, scale, arm, m) for m in metrics}
        ex = excluded_by_arm(reps, scale, arm)
        rows.append([arm, ", ".join(map(str, seeds)) or "-", *(cells[m].text() for m in metrics), excluded_text(ex)])
        rec = {"arm": arm, "seeds": " ".join(map(str, seeds))}
        for m in metrics:
            _put(rec, m, cells[m])
            rec[f"{m}_spread"] = "seeds" if not cells[m].missing else ""
        rec["n_excluded"] = sum(len(s) for s in ex.values())
        records.append(rec)
    inter = {m: interaction_cell({a: per_seed(ok, scale, a, m) for a in ARMS}) for m in metrics}
    methods = sorted({c.note for c in inter.values() if not c.missing})
    rows.append([INTERACTION, " / ".join(methods) or "-", *(inter[m].text() for m in metrics), "-"])
    rec = {"arm": "interaction", "seeds": " / ".join(methods)}
    for m in metrics:
        _put(rec, m, inter[m])
        rec[f"{m}_spread"] = inter[m].note if not inter[m].missing else ""
    rec["n_excluded"] = 0
    records.append(rec)
    notes = ["Each cell: mean ± std (ddof=1) over seeds of completed replicates (test split), with n. A NaN value "
             "(aa_kl_natural when no standard residue was sampled: see the run's aa_note) is named, not averaged."]
    for method in methods:
        used = [m for m in metrics if inter[m].note == method]
        notes.append(f"interaction ({', '.join(used)}): " + spread_text(inter[used[0]]) + ".")
    return Table(f"ablation_{scale}", f"Ablation at scale {scale} (test split)", header, rows,
                 pd.DataFrame(records), notes)


def replicate_status_table(reps: pd.DataFrame, scales: list[str], arms: list[str]) -> Table:
    """Per (scale, arm): how many replicates entered the tables and how many did not, and why."""
    header = ["scale", "arm", "in tables", "diverged", "completed without test metrics", "incomplete / failed",
              "unreadable"]
    rows, records = [], []
    pairs = [(s, a) for s in scales for a in arms]
    if not reps.empty:  # replicate folders of scales/arms no longer in the space still get a row
        pairs += sorted({(s, a) for s, a in zip(reps["scale"], reps["arm"])} - set(pairs))
    for scale, arm in pairs:
        sel = reps[(reps["scale"] == scale) & (reps["arm"] == arm)] if not reps.empty else reps
        ok = usable_replicates(sel)
        rec = {
            "scale": scale, "arm": arm, "in_tables": len(ok),
            "diverged": int((sel["status"] == DIVERGED).sum()) if len(sel) else 0,
            "no_test": int(((sel["status"] == COMPLETED) & ~sel["has_test"].astype(bool)).sum()) if len(sel) else 0,
            "incomplete": int((sel["status"] == INCOMPLETE).sum()) if len(sel) else 0,
            "unreadable": int((sel["status"] == UNREADABLE).sum()) if len(sel) else 0,
        }
        records.append(rec)
        rows.append([scale, arm, *(str(rec[k]) for k in ("in_tables", "diverged", "no_test", "incomplete",
                                                           "unreadable"))])
    notes = ["incomplete / failed = a replicate folder without metrics.json (still running, crashed or interrupted)."]
    return Table("replicate_status", "Replicates by status", header, rows, pd.DataFrame(records), notes)


def trial_counts_table(trials: pd.DataFrame, scales: list[str], arms: list[str], planned: int) -> Table:
    """Search trials by status per (scale, arm), and the best val_ppl of the completed ones."""
    header = ["scale", "arm", "planned", *TRIAL_STATES, "best val_ppl", "best trial"]
    rows, records = [], []
    for scale in scales:
        for arm in arms:
            sel = trials[(trials["scale"] == scale) & (trials["arm"] == arm)]
            counts = {s: int((sel["status"] == s).sum()) for s in TRIAL_STATES}
            done = sel[(sel["status"] == COMPLETED) & sel["best_val_ppl"].notna()]
            best = done.loc[done["best_val_ppl"].idxmin()] if not done.empty else None
            rec = {"scale": scale, "arm": arm, "planned": planned, **counts,
                   "best_val_ppl": float(best["best_val_ppl"]) if best is not None else math.nan,
                   "best_trial": best["trial_id"] if best is not None else ""}
            records.append(rec)
            rows.append([scale, arm, str(planned), *(str(counts[s]) for s in TRIAL_STATES),
                         fmt(rec["best_val_ppl"]) if best is not None else "-", rec["best_trial"] or "-"])
    notes = ["stopped_early = stopped by ASHA before the full budget (its best val_ppl is not an objective value); "
             "best val_ppl counts completed trials only."]
    return Table("trial_status", "Search trials by status", header, rows, pd.DataFrame(records), notes)


# --------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------


def to_markdown(t: Table) -> str:
    def row(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    lines = [f"### {t.title}", "", row(t.header), "|" + "|".join("---" for _ in t.header) + "|"]
    lines += [row(r) for r in t.rows]
    lines += [""] + [f"- {n}" for n in t.notes]
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(s: str) -> str:
    out = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(s))
    return out.replace("±", r"$\pm$")


def to_latex(t: Table) -> str:
    """A plain `tabular` (no extra packages), with the notes as a comment block."""
    lines = [f"% {latex_escape(t.title)}"] + [f"% {n}" for n in t.notes]
    lines += [r"\begin{tabular}{" + "l" * len(t.header) + "}", r"\hline",
              " & ".join(latex_escape(h) for h in t.header) + r" \\", r"\hline"]
    lines += [" & ".join(latex_escape(c) for c in r) + r" \\" for r in t.rows]
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_table(t: Table, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / f"{t.name}.md", "csv": out_dir / f"{t.name}.csv", "tex": out_dir / f"{t.name}.tex"}
    paths["md"].write_text(to_markdown(t))
    t.data.to_csv(paths["csv"], index=False)
    paths["tex"].write_text(to_latex(t))
    return paths
