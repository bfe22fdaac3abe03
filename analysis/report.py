"""`kdsweep analyze`: tables, plots, warnings, best configs and an offline index.html for one sweep.

`analyze(sd, out_dir)` writes everything under `out_dir` (default `<sweep>/analysis/`):

    tables/<name>.md|.csv|.tex   method §7 tables + Pareto view + trial / replicate status counts
    plots/<name>.png             see analysis/plots.py
    configs/<scale>__<arm>.yaml  `sweep export` of every study with a completed trial
    index.html                   all of the above; inline CSS, relative links, no network

and returns what it wrote; it prints nothing (the CLI prints). Every table's notes end with
the data split the runs used, its near-duplicate leakage at 20-mers and 8-mer share (from the
runs' own logs), and the teacher's exposure: how many val/test proteins the teacher trained on
(`teacher_train_data`; "unknown" without it).
"""

from __future__ import annotations

import html
import math
import os
import time
import warnings
from pathlib import Path

from kdsweep.analysis.checks import replicate_command, report_warnings
from kdsweep.analysis.fmt import mean_pm, sig
from kdsweep.analysis.load import (history_frame, replicates_frame, split_notes, trials_frame, tuned_replicates,
                                   usable_replicates)
from kdsweep.analysis.pareto import pareto_table
from kdsweep.analysis.plots import make_plots
from kdsweep.analysis.select import choose_arm
from kdsweep.analysis.tables import (Table, ablation_table, replicate_status_table, scale_table, search_counts,
                             trial_counts_table, write_table)
from kdsweep.analysis.transfer import transfer_sentence, transfer_table
from kdsweep.analysis.verdicts import mechanism_table, verdict_table
from kdsweep.distill.config import TrainConfig
from kdsweep.distill.data.batches import resolve_data_path
from kdsweep.distill.data.exposure import exposure, format_exposure, load_teacher_data, split_of
from kdsweep.distill.data.splits import SplitSpec
from kdsweep.distill.errors import KDSweepError
from kdsweep.distill.run.rundir import COMPLETED
from kdsweep.sweeps.export import export_best
from kdsweep.sweeps.layout import SweepDir, config_file_name
from kdsweep.sweeps.space import load_space, replicate_suffix
from kdsweep.sweeps.study import TRIAL_STATES

NO_SPLIT_RECORD = "split: not recorded (the runs' logs predate the split record); leakage unknown"


def split_line(notes: list[str]) -> str:
    """The data split and its leakage figure, as every table's last note says it."""
    if not notes:
        return NO_SPLIT_RECORD
    if len(notes) == 1:
        return notes[0]
    return "the runs split their data differently: " + " | ".join(notes)


def _export(sd: SweepDir, trials, out: Path) -> tuple[dict[str, Path], str | None]:
    """{'scale/arm': config path} via `sweeps.export.export_best` (the same files `sweep export` writes)."""
    if not (trials["status"] == COMPLETED).any():
        return {}, "no completed search trial yet"
    try:
        paths = export_best(sd, out)
    except (KDSweepError, OSError) as e:  # e.g. the data file moved: the rest of the report still stands
        return {}, f"export failed: {e}"
    by_name = {p.name: p for p in paths}
    space = load_space(sd.space)
    return {s.name: by_name[config_file_name(s.scale, s.arm, s.search_replicate)] for s in space.studies
            if config_file_name(s.scale, s.arm, s.search_replicate) in by_name}, None


def exposure_line(space) -> tuple[str, dict | None]:
    """(the teacher-exposure line every table's notes end with, the figures or None). Measured on the
    space's data under its split against `teacher_train_data` (`distill.data.exposure`)."""
    if not space.teacher_train_data:
        return format_exposure(None), None
    cfg: TrainConfig = space.trial_config(space.studies[0], {}, "unused")
    try:
        teacher = load_teacher_data(space.teacher_train_data)
        split = split_of(cfg.data, SplitSpec.from_config(cfg), cfg.sequence_column)
        figures = exposure(teacher, {n: split[n] for n in ("val", "test")}, resolve_data_path(cfg.data))
    except (KDSweepError, OSError) as e:  # e.g. the data file moved: the rest of the report still stands
        return f"teacher exposure: not measured ({e})", None
    return format_exposure(figures, teacher.source), figures


def analyze(sd: SweepDir, out_dir: str | Path | None = None) -> dict:
    """Write the analysis of a sweep; returns {"out_dir", "tables", "plots", "skipped", "configs",
    "recommended", "warnings", "split", "summary", "replicates", "html"} (paths are `Path`s; plots
    are `analysis.plots.Plot`s)."""
    out = Path(out_dir) if out_dir is not None else sd.analysis
    out.mkdir(parents=True, exist_ok=True)
    space = load_space(sd.space)
    scales, arms = list(space.scales), list(space.arms)
    trials = trials_frame(sd)
    history = history_frame(sd, trials)
    reps = replicates_frame(sd)
    split = split_line(split_notes(sd))
    exposed, exposure_figures = exposure_line(space)
    r = space.search_replicates

    # Order = order in index.html: the short status summary, the method §7 tables, then what was left out.
    tables: list[Table] = [trial_counts_table(trials, scales, arms, space.search["trials_per_study"],
                                                    space.search_replicates),
                           scale_table(reps, trials, scales), verdict_table(reps, trials, scales, r),
                           mechanism_table(reps, space.studies, scales, r),
                           *(ablation_table(reps, s) for s in scales), pareto_table(trials, scales),
                           replicate_status_table(reps, scales, arms),
                           transfer := transfer_table(trials, scales, arms, r)]
    for t in tables:
        t.notes += [split, exposed]
    table_paths = {t.name: write_table(t, out / "tables") for t in tables}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. matplotlib's layout warnings: the caller prints, not us
        plots, skipped = make_plots(trials, history, reps, scales, arms, out / "plots", r)

    configs, why_not = _export(sd, trials, out / "configs")
    if why_not:
        skipped["configs"] = why_not
    recommended = {}
    for scale in scales:
        choice = choose_arm(usable_replicates(reps), trials, scale, arms)
        recommended[scale] = {"arm": choice.arm, "basis": choice.basis,
                              "config": configs.get(f"{scale}/{choice.arm}") if choice.arm else None,
                              "search": search_counts(trials, scale, choice.arm, 0) if choice.arm else ""}

    ok, tuned = usable_replicates(reps), tuned_replicates(reps)
    result = {
        "out_dir": out,
        "tables": table_paths,
        "plots": plots,
        "skipped": skipped,
        "configs": configs,
        "recommended": recommended,
        "warnings": report_warnings(space, trials, reps, exposure_unknown=not space.teacher_train_data,
                                    more=replicate_command(sd.name, str(sd.root.parent))),
        "split": split,
        "exposure": exposed,
        "exposure_figures": exposure_figures,
        "summary": tables[0].data.to_dict("records"),
        "headline": {rec["scale"]: rec for rec in tables[1].data.to_dict("records")},
        "verdicts": tables[2].data.to_dict("records"),
        "mechanism": tables[3].data.to_dict("records"),
        "transfer": [transfer_sentence(transfer.data, arm, r) for arm in arms],
        # tuned configs' replicates, and the matched ablations apart (they are not "excluded": they have their table)
        "replicates": {"total": len(tuned), "in_tables": len(ok), "excluded": len(tuned) - len(ok),
                       "ablations": len(reps) - len(tuned), "ablations_in_tables": len(usable_replicates(reps, None))},
    }
    result["html"] = write_html(sd, out, tables, result)
    return result


def _pm(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "missing"
    return mean_pm(mean, std) if not math.isnan(std) and std > 0 else sig(mean)


def summary_lines(result: dict) -> list[str]:
    """What a CLI would print after `analyze` (the function itself prints nothing)."""
    lines = [f"analysis: {result['html']}"]
    for r in result["summary"]:
        lines.append(f"  {r['scale']}/{r['arm']}{replicate_suffix(r['search_replicate'])}: " + ", ".join(
            f"{r[k]} {k}" for k in TRIAL_STATES if r[k]))
    reps = result["replicates"]
    lines.append(f"replicates: {reps['in_tables']} in tables, {reps['excluded']} excluded; matched ablations: "
                 f"{reps['ablations_in_tables']} of {reps['ablations']} in the mechanism table")
    lines.append(result["split"])
    lines.append(result["exposure"])
    for scale, rec in result["headline"].items():
        lines.append(f"  {scale}: selection-free improvement (headline) "
                     f"{_pm(rec['selection_free_improvement_pct_mean'], rec['selection_free_improvement_pct_std'])} % "
                     f"(n={rec['selection_free_improvement_pct_n']} {rec['selection_free_unit']}s)")
    for v in result["verdicts"] + result["mechanism"]:
        what = (f"{v['arm']} vs baseline" if v["comparison"].startswith("tuned")
                else f"{v['arm']}: {v['enhancement']} on vs off")
        lines.append(f"  {v['scale']} [{v['comparison']}] {what}: {v['verdict']} (Holm: {v['verdict_holm']})")
    for scale, rec in result["recommended"].items():
        lines.append(f"  {scale}: train {rec['config'] or '-'} ({rec['arm'] or 'none'}: {rec['basis']}; search "
                     f"{rec['search'] or '-'})")
    lines += [f"  transfer: {sentence}" for sentence in result["transfer"]]
    lines += [f"  skipped {name}: {why}" for name, why in result["skipped"].items()]
    lines += [f"warning: {w}" for w in result["warnings"]]
    return lines


# --------------------------------------------------------------------------------------
# index.html: self-contained (inline CSS, no scripts), relative links to files that exist
# --------------------------------------------------------------------------------------

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;color:#222;max-width:1500px}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f2f2f2} td.missing{color:#b00} td.nospread{color:#a60}
img{max-width:100%;border:1px solid #ddd;margin:.3em 0}
.wide{overflow-x:auto;max-width:100%}
.notes{font-size:12px;color:#555} code{background:#f5f5f5;padding:0 3px}
.warnings{background:#fff4e5;border:1px solid #e0a040;padding:.3em 1em .3em 2em}
figcaption{font-size:13px;color:#333;max-width:1100px;margin-bottom:1.5em}
"""


def _rel(path: Path, out: Path) -> str | None:
    """A relative link to `path`, or None if the file does not exist (never link a missing file)."""
    return Path(os.path.relpath(path, out)).as_posix() if Path(path).is_file() else None


def _a(path: Path, out: Path, text: str) -> str:
    rel = _rel(path, out)
    return f'<a href="{html.escape(rel)}">{html.escape(text)}</a>' if rel else html.escape(text)


def table_html(t: Table, shared_notes: frozenset[str] = frozenset()) -> str:
    """The table in a box of its own width (a wide table scrolls there, not the page); its notes but
    those `shared_notes` the report gives once for every table."""
    def td(text: str) -> str:
        cls = ' class="missing"' if text.startswith("missing") else (' class="nospread"' if "no spread" in text else "")
        return f"<td{cls}>{html.escape(text)}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(td(c) for c in r) + "</tr>" for r in t.rows)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in t.notes if n not in shared_notes)
    return (f"<div class=wide><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
            f"<ul class=notes>{notes}</ul>")


# The figure and tables that answer the sweep's question, first in the report: per scale, every arm's
# test ppl_ratio and its difference from baseline with the verdict; then the tables that say it in numbers.
ANSWER_PLOT, ANSWER_TABLES = "ablation_{scale}", ("scale_enhancement", "verdicts")


def write_html(sd: SweepDir, out: Path, tables: list[Table], result: dict) -> Path:
    meta = sd.meta()
    e = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>kdsweep analysis: {e(sd.name)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>Sweep <code>{e(sd.name)}</code></h1>",
             f"<p>created {e(str(meta.created or '?'))}, kdsweep commit <code>{e(str(meta.git_commit or '?'))}"
             f"</code>; analysed {e(time.strftime('%Y-%m-%d %H:%M:%S'))}. Replicates: {result['replicates']['in_tables']}"
             f" in tables, {result['replicates']['excluded']} excluded (diverged / failed / unfinished); matched "
             f"ablations: {result['replicates']['ablations_in_tables']} of {result['replicates']['ablations']} in the "
             "mechanism table.</p>",
             f"<p>Data: {e(result['split'])}. Arms are chosen on the val split; the test split only reports.</p>",
             f"<p>{e(result['exposure'])}.</p>",
             "<p>Two comparisons, named apart: <b>tuned arm vs tuned baseline</b> (methods, each tuned by its own "
             "search) and <b>enhancement on vs off at the same config</b> (the mechanism at its tuned point). The "
             "headline figure is the selection-free improvement.</p>"]
    if result["warnings"]:
        parts.append("<h2>Warnings</h2><ul class=warnings>" + "".join(f"<li>{e(w)}</li>" for w in result["warnings"])
                     + "</ul>")
    answer_at = len(parts)  # the answer goes here, once the sections it is made of are known
    # a note that several tables share (the data split and its leakage, ...) is given once
    shared = frozenset(n for n in {n for t in tables for n in t.notes} if sum(n in t.notes for t in tables) > 1)

    parts.append("<h2>Configs to train</h2><table><tr><th>scale</th><th>arm</th><th>config</th><th>chosen on</th>"
                 "<th>its search</th></tr>")
    for scale, rec in result["recommended"].items():
        cfg = _a(rec["config"], out, rec["config"].name) if rec["config"] else "-"
        parts.append(f"<tr><td>{e(scale)}</td><td>{e(rec['arm'] or 'missing')}</td><td>{cfg}</td>"
                     f"<td>{e(rec['basis'])}</td><td>{e(rec['search'] or '-')}</td></tr>")
    parts.append("</table>")
    if result["configs"]:
        parts.append("<p>Every exported best config (same files as <code>kdsweep sweep export</code>; train with "
                     "<code>kdsweep train --config FILE</code>): "
                     + ", ".join(_a(p, out, name) for name, p in result["configs"].items()) + "</p>")

    def table_section(t: Table) -> str:
        links = " ".join(_a(p, out, fmt) for fmt, p in result["tables"][t.name].items())
        return f"<h2>{e(t.title)}</h2><p class=notes>files: {links}</p>{table_html(t, shared)}"

    def figure(name: str, plot) -> str:
        rel = _rel(plot.path, out)
        return (f"<figure id=\"{e(name)}\"><img src=\"{e(rel)}\" alt=\"{e(plot.caption)}\">"
                f"<figcaption>{e(plot.caption)} <span class=notes>({_a(plot.path, out, rel)})</span>"
                "</figcaption></figure>") if rel else ""

    answer_plots = [ANSWER_PLOT.format(scale=s) for s in load_space(sd.space).scales]
    answer_plots = [n for n in answer_plots if n in result["plots"]]
    once = sorted(shared - {result["split"]})  # the split is in the Data line above
    parts[answer_at:answer_at] = (
        ["<h2>Answer: every arm's test ppl_ratio per scale, and the verdicts</h2>"]
        + [figure(n, result["plots"][n]) for n in answer_plots]
        + ([f"<p class=notes>Notes for every table: {'; '.join(e(n) for n in once)}.</p>"] if once else [])
        + [table_section(t) for t in tables if t.name in ANSWER_TABLES])
    parts += [table_section(t) for t in tables if t.name not in ANSWER_TABLES]
    parts.append("<h2>Plots</h2>")
    parts += [figure(name, plot) for name, plot in result["plots"].items() if name not in answer_plots]
    if result["skipped"]:
        parts.append("<h3>Skipped</h3><ul>" + "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>"
                                                       for k, v in result["skipped"].items()) + "</ul>")
    parts.append("</body></html>")
    path = out / "index.html"
    path.write_text("\n".join(parts))
    return path
