"""The method §7 tables, built from completed replicates only, as Markdown, CSV and LaTeX.

* scale x enhancement: per scale, baseline vs the enhanced arm chosen on **val**
  (`analysis.select`), both reported on **test**; the headline column is the selection-free
  improvement, and each arm's cell says whether it is above the unigram floor (`analysis.floors`);
* the two verdict tables (`analysis.verdicts`): tuned arm vs tuned baseline, and enhancement on vs
  off at the same config;
* ablation per scale: the four arms side by side, the interaction term
  both - (uncertainty + calibration - baseline), the unigram floor and aa_kl's natural floor;
* replicate status and search-trial counts, so what was left out is visible.

Every number is mean ± std (ddof=1) over seeds with its n, printed per `analysis.fmt`. A
replicate enters a table only if its run completed and has test metrics: diverged, failed or
unfinished runs are counted in their own column, never averaged (a diverged seed has no test
metrics to average, and dropping it silently would flatter the arm). With fewer than 2 seeds a
cell says "no spread" rather than "± 0", a value equal in every run says "constant", and an arm
or scale without any usable replicate says "missing".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from kdsweep.analysis.floors import aa_kl_floor_text, floor_text, interaction_noise_text
from kdsweep.analysis.fmt import mean_pm, sig
from kdsweep.analysis.load import INCOMPLETE, TEST, UNREADABLE, column, per_seed, tuned_replicates, usable_replicates
from kdsweep.analysis.select import choose_arm, search_best, selection_free_of
from kdsweep.distill.run.rundir import COMPLETED, DIVERGED, STOPPED_EARLY
from kdsweep.sweeps.space import ARMS, BASELINE, ENHANCED_ARMS
from kdsweep.sweeps.study import TRIAL_STATES

ABLATION_METRICS = ("ppl_ratio", "kl_teacher", "ece", "accuracy", "aa_kl_natural")
INTERACTION = "interaction: both - (uncertainty + calibration - baseline)"
PAIRED, PROPAGATED = "per seed", "propagated"
CHOSE_ON_VAL = ("Chosen arm: the enhanced arm with the lowest mean val ppl_ratio over its replicates (the full val "
                "split); before any replicate has val metrics, the arm of the search's best completed trial (its "
                "objective: the final val_ppl), as chosen_basis in the CSV says. The test split only reports.")
FLOOR_NOTE = ("unigram floor: a context-free model of the train split's token frequencies, scored on the same test "
              "tokens (its ppl_ratio is what a student that knows only the composition scores). 'at the unigram "
              "floor': the student's per-token NLL is not measurably below it (95 % interval over test proteins); "
              "such a student predicts composition only, and its ppl_ratio, ECE and verdicts say nothing about "
              "distillation. 'gain recovered': (floor NLL - student NLL) / (floor NLL - teacher NLL), 1 = as good as "
              "the teacher, 0 = composition.")


# --------------------------------------------------------------------------------------
# Cells: mean, std, n, and how they print
# --------------------------------------------------------------------------------------


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
            out = f"{sig(self.mean)} (n={self.n}, no spread)"
        elif self.std == 0:
            out = f"{sig(self.mean)} (n={self.n}, constant)"
        else:
            out = f"{mean_pm(self.mean, self.std)} (n={self.n})"
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


def metric_cell(ok: pd.DataFrame, scale: str, arm: str, metric: str, split: str = TEST) -> Cell:
    """The cell of one metric of (scale, arm) on one split over its usable replicates.

    A NaN value (e.g. aa_kl_natural when the sampled sequences held no standard
    residue) is not a number to average: the cell names those seeds instead.
    """
    sel = ok[(ok["scale"] == scale) & (ok["arm"] == arm)] if not ok.empty else ok
    if sel.empty:
        return Cell(note="no completed replicate")
    col = column(split, metric)
    if col not in sel.columns:
        return Cell(note=f"{metric} not in the {split} metrics")
    vals = pd.to_numeric(sel.set_index("seed")[col], errors="coerce")
    c = cell_of(vals.dropna())
    if c.missing:
        return Cell(note=f"NaN in all {len(sel)} completed replicates")
    return Cell(c.mean, c.std, c.n, c.note, tuple(sorted(int(s) for s in vals.index[vals.isna()])))


def _same_seeds(series: list[pd.Series]) -> bool:
    return all(len(s) > 0 for s in series) and all(set(s.index) == set(series[0].index) for s in series)


def improvement_cell(base: pd.Series, chosen: pd.Series) -> Cell:
    """(baseline - chosen) / baseline * 100, in %.

    Same seeds in both arms: computed per seed (paired), then mean ± std over
    seeds. Otherwise from the two means, with first-order error propagation of
    the two seed stds: d/dA = 100 B/A^2, d/dB = -100/A.
    """
    if base.empty or chosen.empty:
        return Cell(note="no value for " + ("baseline" if base.empty else "any enhanced arm"))
    if _same_seeds([base, chosen]):
        c = cell_of(100.0 * (base - chosen.loc[base.index]) / base)
        return Cell(c.mean, c.std, c.n, PAIRED)
    a, b = cell_of(base), cell_of(chosen)
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
    reps = tuned_replicates(reps)
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
    col = column(TEST, "accuracy_is_zero")
    if ok.empty or col not in ok.columns:
        return []
    sel = ok[(ok["scale"] == scale) & (ok["arm"] == arm)]
    return sorted(int(s) for s, z in zip(sel["seed"], sel[col]) if z is True or z == 1.0)


def search_counts(trials: pd.DataFrame, scale: str, arm: str, search_replicate: int | None = None) -> str:
    """'1 completed / 2 stopped early' of a study's search trials (all of a (scale, arm)'s search replicates
    when None): beside every best value, so an equal budget in trials is seen for what it bought."""
    sel = trials[(trials["scale"] == scale) & (trials["arm"] == arm)]
    if search_replicate is not None and "search_replicate" in sel.columns:
        sel = sel[sel["search_replicate"] == search_replicate]
    done, stopped = int((sel["status"] == COMPLETED).sum()), int((sel["status"] == STOPPED_EARLY).sum())
    return f"{done} completed / {stopped} stopped early"


def gain_cell(ok: pd.DataFrame, scale: str, arm: str) -> Cell:
    """The share of the teacher's gain over the unigram floor the arm's students recover, in %."""
    values = per_seed(ok, scale, arm, "unigram_gain_recovered")
    return cell_of(100.0 * values, note="unigram floor not measured")


def scale_table(reps: pd.DataFrame, trials: pd.DataFrame, scales: list[str]) -> Table:
    """method §7 scale x enhancement: a row per scale; the enhanced arm is chosen on val, reported on test;
    the headline is the selection-free improvement."""
    ok = usable_replicates(reps)
    header = ["scale", "compression", "baseline ppl_ratio", "chosen arm (on val)", "chosen-arm ppl_ratio",
              "selection-free improvement % (headline)", "improvement % on the seeds it was chosen on",
              "unigram floor ppl_ratio", "baseline vs floor", "chosen arm vs floor", "baseline ECE",
              "baseline accuracy", "chosen-arm ECE", "chosen-arm accuracy", "baseline kl_teacher",
              "chosen-arm kl_teacher", "excluded replicates"]
    rows, records, notes = [], [], []
    for scale in scales:
        scale_ok = ok[ok["scale"] == scale] if not ok.empty else ok
        # compression = teacher / student params: the same for every arm of a scale, so all its runs count.
        comp_col = column(TEST, "compression")
        comp = cell_of(scale_ok[comp_col]) if comp_col in scale_ok.columns else Cell(note="no completed replicate")
        floor_col = column(TEST, "unigram_ppl_ratio")
        floor = (cell_of(scale_ok[floor_col]) if floor_col in scale_ok.columns
                 else Cell(note="not measured"))
        choice = choose_arm(ok, trials, scale, ENHANCED_ARMS)
        arm = choice.arm
        cells = {"compression": comp, "unigram_floor_ppl_ratio": floor}
        for who, a in (("baseline", BASELINE), ("chosen", arm)):
            for m in ("ppl_ratio", "ece", "accuracy", "kl_teacher"):
                cells[f"{who}_{m}"] = (metric_cell(ok, scale, a, m) if a else
                                       Cell(note="no completed replicate of any enhanced arm"))
            cells[f"{who}_gain_recovered_pct"] = gain_cell(ok, scale, a) if a else Cell(note="no arm")
        imp = improvement_cell(per_seed(ok, scale, BASELINE, "ppl_ratio"),
                               per_seed(ok, scale, arm, "ppl_ratio") if arm else pd.Series(dtype=float))
        cells["improvement_pct"] = imp
        free = selection_free_of(ok, trials, scale, BASELINE, ENHANCED_ARMS)
        cells["selection_free_improvement_pct"] = free_cell = cell_of(
            free.improvement, note="needs >= 2 seeds shared by baseline and every enhanced arm, with val metrics")
        excluded = {a: ex for a in ARMS if (ex := excluded_by_arm(reps, scale, a))}
        excluded_txt = "; ".join(f"{a}: {excluded_text(ex)}" for a, ex in excluded.items()) or "-"

        def ece_text(who: str, a: str | None) -> str:
            zero = _acc_zero_seeds(ok, scale, a) if a else []
            return cells[f"{who}_ece"].text() + (f" [accuracy 0 in seed {', '.join(map(str, zero))}: ECE = mean "
                                                 "confidence]" if zero else "")

        def floor_cell(who: str, a: str | None) -> str:
            if not a:
                return "missing"
            return f"{floor_text(ok, scale, a)}; gain recovered {cells[f'{who}_gain_recovered_pct'].text()} %"

        rows.append([scale, comp.text(), cells["baseline_ppl_ratio"].text(),
                     (arm + ("" if choice.on_replicates else " (search objective)")) if arm else "missing",
                     cells["chosen_ppl_ratio"].text(),
                     free_cell.text() + (f" [each {free.unit} with the arm chosen before it: {free.text}]"
                                         if free.chosen else ""),
                     imp.text() + (" [from means]" if imp.note == PROPAGATED else ""),
                     floor.text(), floor_cell("baseline", BASELINE), floor_cell("chosen", arm),
                     ece_text("baseline", BASELINE), cells["baseline_accuracy"].text(), ece_text("chosen", arm),
                     cells["chosen_accuracy"].text(), cells["baseline_kl_teacher"].text(),
                     cells["chosen_kl_teacher"].text(), excluded_txt])
        rec = {"scale": scale, "chosen_arm": arm or "", "chosen_basis": choice.basis}
        for k, c in cells.items():
            _put(rec, k, c)
        rec["improvement_pct_method"] = imp.note if not imp.missing else ""
        rec["selection_free_unit"] = free.unit
        rec["selection_free_arms"] = free.text
        rec["baseline_floor"] = floor_text(ok, scale, BASELINE)
        rec["chosen_floor"] = floor_text(ok, scale, arm) if arm else ""
        rec["n_excluded"] = sum(len(s) for ex in excluded.values() for s in ex.values())
        rec["excluded"] = excluded_txt if excluded else ""
        records.append(rec)
        if imp.note == PROPAGATED:
            notes.append(f"{scale}: baseline and {arm} do not share the same seeds; improvement % is computed from "
                         "the two means, its std by first-order error propagation.")
    notes += [CHOSE_ON_VAL,
              "Each cell: mean ± std (ddof=1) over seeds of completed replicates on the test split, with n. "
              "improvement % = (baseline - chosen) / baseline * 100, per seed when the seeds are shared.",
              "Headline: selection-free improvement %. The seeds (or search replicates) are taken in order and each "
              "is reported with the arm chosen before it: the first on the search's own objective (models of the "
              "search seed, which no replicate shares), each later one on the mean val ppl_ratio of those before "
              "it; so no reported model took part in choosing itself or the arm of another reported model, and with "
              "no real effect it is centred on 0 with a nominal error rate (method §7). 'improvement % on the seeds "
              "it was chosen on' is biased in the chosen arm's favour (a lucky seed is lucky on val and test alike) "
              "and is shown for comparison only.",
              FLOOR_NOTE,
              "Both comparisons, with intervals, Holm's correction and search-noise status, are in the verdict "
              "tables: 'tuned arm vs tuned baseline' (verdicts) and 'enhancement on vs off at the same config' "
              "(mechanism)."]
    return Table("scale_enhancement", "Scale x enhancement (chosen on val, reported on test)", header, rows,
                 pd.DataFrame(records), notes)


def ablation_table(reps: pd.DataFrame, scale: str, metrics=ABLATION_METRICS) -> Table:
    """method §7 ablation at one scale: four arms + the interaction term, per metric, with the unigram floor
    and aa_kl's natural resampling floor (`analysis.floors`)."""
    ok = usable_replicates(reps)
    metrics = list(metrics)  # all of them always (stable columns); an absent metric's cells say "missing"
    header = ["arm", "seeds", *metrics, "aa_kl natural floor (mean / 95th pct at the sampled residue count)",
              "vs unigram floor", "gain over composition recovered %", "length-capped samples %",
              "excluded replicates"]
    rows, records = [], []
    floor = metric_cell(ok, scale, BASELINE, "unigram_ppl_ratio")
    for arm in ARMS:
        seeds = sorted(int(s) for s in ok[(ok["scale"] == scale) & (ok["arm"] == arm)]["seed"]) if not ok.empty else []
        cells = {m: metric_cell(ok, scale, arm, m) for m in metrics}
        gain = gain_cell(ok, scale, arm)
        capped = cell_of(100.0 * per_seed(ok, scale, arm, "aa_gen_capped_share"), note="not measured")
        ex = excluded_by_arm(reps, scale, arm)
        rows.append([arm, ", ".join(map(str, seeds)) or "-", *(cells[m].text() for m in metrics),
                     aa_kl_floor_text(ok, scale, arm), floor_text(ok, scale, arm), gain.text(), capped.text(),
                     excluded_text(ex)])
        rec = {"arm": arm, "seeds": " ".join(map(str, seeds))}
        for m in metrics:
            _put(rec, m, cells[m])
            rec[f"{m}_spread"] = "seeds" if not cells[m].missing else ""
        _put(rec, "gain_recovered_pct", gain)
        _put(rec, "capped_pct", capped)
        rec["aa_kl_floor"] = aa_kl_floor_text(ok, scale, arm)
        rec["vs_unigram_floor"] = floor_text(ok, scale, arm)
        rec["n_excluded"] = sum(len(s) for s in ex.values())
        records.append(rec)
    inter = {m: interaction_cell({a: per_seed(ok, scale, a, m) for a in ARMS}) for m in metrics}
    methods = sorted({c.note for c in inter.values() if not c.missing})

    def inter_text(m: str) -> str:
        extra = interaction_noise_text(ok, scale, inter[m].mean) if m == "aa_kl_natural" and not inter[m].missing else ""
        return inter[m].text() + extra

    rows.append([INTERACTION, " / ".join(methods) or "-", *(inter_text(m) for m in metrics), "-", "-", "-", "-", "-"])
    rec = {"arm": "interaction", "seeds": " / ".join(methods)}
    for m in metrics:
        _put(rec, m, inter[m])
        rec[f"{m}_spread"] = inter[m].note if not inter[m].missing else ""
    rec["n_excluded"] = 0
    records.append(rec)
    notes = ["No arm is chosen here: the four arms are reported side by side on the test split.",
             "Each cell: mean ± std (ddof=1) over seeds of completed replicates, with n. A NaN value "
             "(aa_kl_natural when no standard residue was sampled: see the run's aa_note) is named, not averaged.",
             "aa_kl_natural: KL divergence of the amino-acid composition of proteins sampled from the student (each "
             "ending where the model ends it: no penalty on the end token) from the test split's. Its natural floor "
             "is the same KL for held-out proteins resampled whole to the same residue count (mean and 95th "
             "percentile): a value inside it is as close as natural proteins come at that sample size, and an arm "
             "difference or interaction smaller than the resamples' own 95th percentile of |difference| is sampling "
             "noise. The i.i.d.-residue figure (K - 1) / 2N is ~4x too small for proteins and is not used.",
             "length-capped samples: the share of samples cut at gen_max_new_tokens without ending (their "
             "composition is of a truncated protein).",
             f"unigram floor ppl_ratio at this scale: {floor.text()}. " + FLOOR_NOTE]
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
    pairs = [(s, a, "") for s in scales for a in arms]
    if not reps.empty:  # replicate folders of scales/arms no longer in the space, and ablations, get a row
        pairs += sorted({(s, a, o) for s, a, o in zip(reps["scale"], reps["arm"], reps["off"])} - set(pairs))
    for scale, arm, off in pairs:
        sel = reps[(reps["scale"] == scale) & (reps["arm"] == arm) & (reps["off"] == off)] if not reps.empty else reps
        ok = usable_replicates(sel, off)
        rec = {
            "scale": scale, "arm": arm + (f" (no {off}: matched ablation)" if off else ""), "in_tables": len(ok),
            "diverged": int((sel["status"] == DIVERGED).sum()) if len(sel) else 0,
            "no_test": int(((sel["status"] == COMPLETED) & ~sel["has_test"].astype(bool)).sum()) if len(sel) else 0,
            "incomplete": int((sel["status"] == INCOMPLETE).sum()) if len(sel) else 0,
            "unreadable": int((sel["status"] == UNREADABLE).sum()) if len(sel) else 0,
        }
        records.append(rec)
        counted = ("in_tables", "diverged", "no_test", "incomplete", "unreadable")
        rows.append([scale, rec["arm"], *(str(rec[k]) for k in counted)])
    notes = ["incomplete / failed = a replicate folder without metrics.json (still running, crashed or interrupted).",
             "(no <enhancement>: matched ablation) = the arm's tuned config retrained with that enhancement switched "
             "off, same seeds: the 'off' side of the mechanism table."]
    return Table("replicate_status", "Replicates by status", header, rows, pd.DataFrame(records), notes)


def trial_counts_table(trials: pd.DataFrame, scales: list[str], arms: list[str], planned: int,
                       search_replicates: int = 1) -> Table:
    """Search trials by status per (scale, arm) and search replicate (every planned one, with or without
    trials), and the best objective of the completed ones."""
    header = ["scale", "arm", "search replicate", "planned", *TRIAL_STATES, "best objective (final val_ppl)",
              "best trial"]
    rows, records = [], []
    replicates = range(search_replicates)
    for scale in scales:
        for arm in arms:
            for r in replicates:
                sel = trials[(trials["scale"] == scale) & (trials["arm"] == arm)]
                if "search_replicate" in sel.columns:
                    sel = sel[sel["search_replicate"] == r]
                counts = {s: int((sel["status"] == s).sum()) for s in TRIAL_STATES}
                best = search_best(trials, scale, arm, r)
                rec = {"scale": scale, "arm": arm, "search_replicate": r, "planned": planned, **counts,
                       "best_val_ppl": float(best["val_ppl"]) if best is not None else math.nan,
                       "best_trial": best["trial_id"] if best is not None else ""}
                records.append(rec)
                beside = f" (best of {counts[COMPLETED]} completed; {counts[STOPPED_EARLY]} stopped early)"
                rows.append([scale, arm, str(r), str(planned), *(str(counts[s]) for s in TRIAL_STATES),
                             sig(rec["best_val_ppl"]) + beside if best is not None else "-", rec["best_trial"] or "-"])
    notes = ["The search chooses on the val split only: its objective is the final model's val_ppl on the val "
             "split's early-stopping subset (completed trials; the best one is exported). stopped_early = stopped by "
             "ASHA before the full budget: its last val_ppl is no objective value.",
             "The budget is equal in trials, not in what they buy: a best value is the best of the completed trials "
             "only, so a study whose trials ASHA stopped chose among fewer configs. Each best value says how many."]
    return Table("trial_status", "Search trials by status (val split)", header, rows, pd.DataFrame(records), notes)


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
