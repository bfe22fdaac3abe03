"""`analysis.analyze` on a real sweep: frames vs Optuna and the run logs, table cells vs
numbers recomputed here straight from the replicates' metrics.json (val chooses, test
reports), both verdict tables (tuned arm vs tuned baseline; enhancement on vs off at the same
config, paired with the matched ablations) with Holm's correction, the floors, teacher exposure,
warnings, plots and HTML, and sweeps with a missing arm / scale, a single seed, differing seeds,
diverged runs, val and test rankings that disagree, search replicates, students at the floor."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from kdsweep.analysis import plots as plots_module
from kdsweep.analysis.fmt import mean_pm
from kdsweep.analysis.load import history_frame, replicates_frame, trials_frame
from kdsweep.analysis.plots import aggregate_bins
from kdsweep.analysis.report import analyze
from kdsweep.analysis.select import ON_REPLICATES, ON_SEARCH
from kdsweep.analysis.stats import holm
from kdsweep.cli import main
from kdsweep.distill.run.rundir import read_log
from kdsweep.sweeps.layout import config_file_name, parse_replicate_name, replicate_name
from kdsweep.sweeps.space import load_space
from kdsweep.sweeps.study import open_study
from tests.analysis.conftest import TEACHER_SAW

pytestmark = pytest.mark.ray

ARMS = ("baseline", "uncertainty", "calibration", "both")
SCALES = ("demo-xs", "demo-s")
ABL_METRICS = ("ppl_ratio", "kl_teacher", "ece", "accuracy", "aa_kl_natural")
MAX_STEPS = 12
# t(0.975, df) from published tables, to check the intervals independently of analysis.stats
T975 = {1: 12.7062047362, 2: 4.30265272975, 3: 3.18244630528}


# ---- reference numbers, straight from the files -------------------------------------------


def reference(sd, split: str = "test", off: str = "") -> dict:
    """{(scale, arm): {seed: metrics of `split`}} of completed replicates with test metrics, read here directly:
    of the tuned configs (`off` ''), or of the matched ablation with that enhancement off."""
    out: dict = {}
    for d in sorted((sd.root / "replicates").iterdir()):
        path = d / "metrics.json"
        name = parse_replicate_name(d.name)
        if not path.is_file() or "+".join(name.off) != off:
            continue
        summary = json.loads(path.read_text())
        if summary["status"] != "completed" or not summary.get("test"):
            continue
        out.setdefault((name.scale, name.arm), {})[name.seed] = summary[split]
    return out


def stats(values: list[float]) -> tuple[float, float, int]:
    """mean, sample std (ddof=1; NaN for n < 2), n."""
    return (statistics.fmean(values), statistics.stdev(values) if len(values) >= 2 else math.nan, len(values))


def metric(ref, scale, arm, m) -> dict[int, float]:
    """Seed -> value; NaN (e.g. aa_kl_natural with no standard residue sampled) is not a value to average."""
    return {s: float(t[m]) for s, t in ref.get((scale, arm), {}).items() if not math.isnan(float(t[m]))}


def close(got, want) -> bool:
    if isinstance(want, float) and math.isnan(want):
        return got is None or (isinstance(got, float) and math.isnan(got))
    return got == pytest.approx(want, rel=1e-9, abs=1e-12)


def check_cell(row: pd.Series, prefix: str, values: list[float]) -> None:
    mean, std, n = stats(values) if values else (math.nan, math.nan, 0)
    assert int(row[f"{prefix}_n"]) == n, prefix
    assert close(float(row[f"{prefix}_mean"]), mean), (prefix, row[f"{prefix}_mean"], mean)
    assert close(float(row[f"{prefix}_std"]), std) or (std < 1e-12 and float(row[f"{prefix}_std"]) == 0), prefix


def cell_text(values: list[float]) -> str:
    """The display: mean ± std at the std's precision (analysis.fmt, tested on its own) with n, or
    '(n=1, no spread)', or '(n=k, constant)', or 'missing'."""
    if not values:
        return "missing"
    mean, std, n = stats(values)
    if n < 2:
        return f"{mean:.4g} (n=1, no spread)"
    return f"{mean:.4g} (n={n}, constant)" if std < 1e-12 * max(1, abs(mean)) else f"{mean_pm(mean, std)} (n={n})"


def chosen_on_val(val_ref, scale, arms, seeds=None) -> str | None:
    """The arm with the lowest mean val ppl_ratio (over `seeds` if given)."""
    means = {}
    for a in arms:
        v = metric(val_ref, scale, a, "ppl_ratio")
        v = {s: x for s, x in v.items() if seeds is None or s in seeds}
        if v:
            means[a] = statistics.fmean(v.values())
    return min(means, key=means.get) if means else None


def interaction_expected(ref, scale, m) -> tuple[float, float, int, str]:
    v = {a: metric(ref, scale, a, m) for a in ARMS}
    if any(not v[a] for a in ARMS):
        return math.nan, math.nan, 0, "missing"
    if all(set(v[a]) == set(v["baseline"]) for a in ARMS):
        per_seed = [v["both"][s] - (v["uncertainty"][s] + v["calibration"][s] - v["baseline"][s])
                    for s in sorted(v["baseline"])]
        return (*stats(per_seed), "per seed")
    st = {a: stats(list(v[a].values())) for a in ARMS}
    mean = st["both"][0] - (st["uncertainty"][0] + st["calibration"][0] - st["baseline"][0])
    std = math.sqrt(sum(st[a][1] ** 2 for a in ARMS))
    return mean, std, min(st[a][2] for a in ARMS), "propagated"


def first_by_search(trials, scale) -> str | None:
    """The enhanced arm of the search's best completed trial (search replicate 0): the first seed's choice."""
    done = trials[(trials["scale"] == scale) & (trials["status"] == "completed") & trials["arm"].isin(ARMS[1:])
                  & (trials["search_replicate"] == 0)]
    return done.sort_values("val_ppl")["arm"].iloc[0] if len(done) else None


def t_check(row, d: list[float]) -> None:
    """A verdict row's interval, p-value and raw verdict against the per-unit differences `d`."""
    assert int(row["n"]) == len(d)
    if len(d) >= 2:
        mean, sd_, n = stats(d)
        half = T975[n - 1] * sd_ / math.sqrt(n)
        assert close(row["diff_mean"], mean)
        assert row["ci_low"] == pytest.approx(mean - half, rel=1e-9) and row["ci_high"] == pytest.approx(mean + half, rel=1e-9)
        want = "better" if mean + half < 0 else "worse" if mean - half > 0 else "inconclusive"
        assert row["verdict"] == want and (row["p"] < 0.05) == (want != "inconclusive")
    elif len(d) == 1:
        assert row["verdict"] == "inconclusive (n=1)" and math.isnan(row["ci_low"])


def holm_check(table: pd.DataFrame) -> None:
    """Holm over every row of a verdict table, recomputed from its raw p-values."""
    for got, want in zip(table["p_holm"], holm(table["p"])):
        assert close(got, want)
    for row in table.to_dict("records"):
        if row["n"] >= 2:
            word = "inconclusive" if not row["p_holm"] < 0.05 else ("better" if row["diff_mean"] < 0 else "worse")
            assert row["verdict_holm"] == word and row["p_holm"] >= row["p"] - 1e-15


def split_note_of(sd) -> str:
    """The split line every table must carry: the start row of a replicate's own log."""
    d = sorted((sd.root / "replicates").iterdir())[0]
    return next(r for r in read_log(d) if r.get("event") == "start")["data"]["split_note"]


def check_tables(sd, result) -> None:
    """Every numeric cell of the scale, verdict and ablation tables against `reference`."""
    ref, val_ref, trials = reference(sd), reference(sd, "val"), trials_frame(sd)
    scale_csv = pd.read_csv(result["tables"]["scale_enhancement"]["csv"]).set_index("scale")
    scale_md = Path(result["tables"]["scale_enhancement"]["md"]).read_text()
    verdict_csv, mechanism_csv = (pd.read_csv(result["tables"][n]["csv"]) for n in ("verdicts", "mechanism"))
    holm_check(verdict_csv)
    holm_check(mechanism_csv)
    verdicts = verdict_csv.set_index(["scale", "arm"])
    mechanism = mechanism_csv.set_index(["scale", "arm", "enhancement"])
    for scale in SCALES:
        row = scale_csv.loc[scale]
        check_cell(row, "compression", [float(t["compression"]) for a in ARMS
                                        for t in ref.get((scale, a), {}).values()])
        base = metric(ref, scale, "baseline", "ppl_ratio")
        chosen = chosen_on_val(val_ref, scale, ARMS[1:])  # val chooses, never test
        basis = ON_REPLICATES
        if chosen is None:  # no replicate: the search objective chooses, and says so
            done = trials[(trials["scale"] == scale) & (trials["status"] == "completed") & trials["arm"].isin(ARMS[1:])]
            chosen, basis = done.sort_values("val_ppl")["arm"].iloc[0], ON_SEARCH
        assert row["chosen_arm"] == chosen and row["chosen_basis"].startswith(basis)
        with_val = [a for a in ARMS[1:] if metric(val_ref, scale, a, "ppl_ratio")]
        if basis == ON_REPLICATES and len(with_val) < 3:  # the basis names the arms it compared
            assert f"(among {', '.join(with_val)};" in row["chosen_basis"]
        for who, arm in (("baseline", "baseline"), ("chosen", chosen)):
            for m in ("ppl_ratio", "ece", "accuracy", "kl_teacher"):
                check_cell(row, f"{who}_{m}", list(metric(ref, scale, arm, m).values()) if arm else [])
        if base and chosen:
            b = metric(ref, scale, chosen, "ppl_ratio")
            if set(b) == set(base):
                want = stats([100 * (base[s] - b[s]) / base[s] for s in sorted(base)])
                assert row["improvement_pct_method"] == "per seed"
            else:
                (ma, sa, na), (mb, sb, nb) = stats(list(base.values())), stats(list(b.values()))
                want = (100 * (ma - mb) / ma, 100 / ma * math.sqrt(sb**2 + (mb / ma) ** 2 * sa**2), min(na, nb))
                assert row["improvement_pct_method"] == "propagated"
            assert close(float(row["improvement_pct_mean"]), want[0]) and close(float(row["improvement_pct_std"]), want[1])
            assert int(row["improvement_pct_n"]) == want[2]
        else:
            assert int(row["improvement_pct_n"]) == 0
        # selection-free: each seed reported with the arm chosen before it (the first by the search objective,
        # the others on the val values of the seeds before them)
        shared = set(base)
        for a in ARMS[1:]:
            shared &= set(metric(ref, scale, a, "ppl_ratio")) & set(metric(val_ref, scale, a, "ppl_ratio"))
        order, free, free_d = sorted(shared), [], []
        for i, s in enumerate(order):
            pick = first_by_search(trials, scale) if i == 0 else chosen_on_val(val_ref, scale, ARMS[1:], set(order[:i]))
            if pick:
                free.append(100 * (base[s] - metric(ref, scale, pick, "ppl_ratio")[s]) / base[s])
                free_d.append(metric(ref, scale, pick, "ppl_ratio")[s] - base[s])
        check_cell(row, "selection_free_improvement_pct", free)
        assert cell_text(list(base.values())) in scale_md

        for arm in ARMS[1:]:
            v = verdicts.loc[(scale, arm)]
            a = metric(ref, scale, arm, "ppl_ratio")
            t_check(v, [a[s] - base[s] for s in sorted(set(a) & set(base))])
            assert bool(v["chosen"]) == (arm == chosen)
        t_check(verdicts.loc[(scale, "chosen arm, selection-free")], free_d)

        # enhancement on vs off at the same config: paired per seed with the matched ablation
        for arm, enhancements in (("uncertainty", ["uncertainty"]), ("calibration", ["smoothing"]),
                                  ("both", ["uncertainty", "smoothing"])):
            on = metric(ref, scale, arm, "ppl_ratio")
            for e in enhancements:
                off = metric(reference(sd, off=e), scale, arm, "ppl_ratio")
                t_check(mechanism.loc[(scale, arm, e)], [on[s] - off[s] for s in sorted(set(on) & set(off))])

        abl = pd.read_csv(result["tables"][f"ablation_{scale}"]["csv"]).set_index("arm")
        md = Path(result["tables"][f"ablation_{scale}"]["md"]).read_text()
        for arm in ARMS:
            for m in ABL_METRICS:
                vals = list(metric(ref, scale, arm, m).values())
                check_cell(abl.loc[arm], m, vals)
                assert cell_text(vals) in md, (scale, arm, m, cell_text(vals))
            for col, m in (("gain_recovered_pct", "unigram_gain_recovered"), ("capped_pct", "aa_gen_capped_share")):
                check_cell(abl.loc[arm], col, [100 * v for v in metric(ref, scale, arm, m).values()])
            flagged = [s for s, t in ref.get((scale, arm), {}).items() if t["at_unigram_floor"]]
            want = (f"({len(flagged)}/{len(ref[(scale, arm)])} seeds at the unigram floor)" if flagged
                    else "above the floor") if (scale, arm) in ref else "not measured"
            assert want in abl.loc[arm, "vs_unigram_floor"]
        for m in ABL_METRICS:
            mean, std, n, how = interaction_expected(ref, scale, m)
            row = abl.loc["interaction"]
            assert int(row[f"{m}_n"]) == n, (scale, m)
            assert close(float(row[f"{m}_mean"]), mean) and close(float(row[f"{m}_std"]), std), (scale, m)
            assert (row[f"{m}_spread"] if isinstance(row[f"{m}_spread"], str) else "missing") == how
    # every table says which split chose and which reports, and ends with the split, its leakage and the
    # teacher's exposure (the declared teacher set holds the train split and TEACHER_SAW test proteins)
    note = split_note_of(sd)
    assert note.startswith("split: ") and "near-duplicate leakage at 20-mers" in note and "8-mer share" in note
    exposure = result["exposure"]
    assert f"test: {TEACHER_SAW} of " in exposure and "val: 0 of " in exposure and "near-duplicate leakage" in exposure
    for name, paths in result["tables"].items():
        md = Path(paths["md"]).read_text()
        assert md.rstrip().endswith(f"- {note}\n- {exposure}"), name
    assert "Chosen arm: the enhanced arm with the lowest mean val ppl_ratio" in scale_md
    assert "The test split only reports" in scale_md and "Headline: selection-free improvement %" in scale_md
    verdict_md, mechanism_md = (Path(result["tables"][n]["md"]).read_text() for n in ("verdicts", "mechanism"))
    assert "Comparison: tuned arm vs tuned baseline" in verdict_md and "search noise" in verdict_md
    assert "not included (one search per study" in verdict_md and "Holm" in verdict_md
    assert "Comparison: enhancement on vs off at the same config" in mechanism_md


# ---- the analysis of the untouched sweep ------------------------------------------------------


@pytest.fixture(scope="module")
def analysis(sweep, tmp_path_factory):
    return analyze(sweep, tmp_path_factory.mktemp("analysis-out"))


def test_trials_frame_matches_optuna_and_run_logs(sweep):
    df = trials_frame(sweep).set_index("trial_id")
    space = load_space(sweep.space)
    seen = 0
    for study in space.studies:
        for t in open_study(sweep.storage_url(), sweep.name, study.name).get_trials(deepcopy=False):
            row = df.loc[t.user_attrs["ray_trial_id"]]
            seen += 1
            want = {TrialState.COMPLETE: "completed", TrialState.RUNNING: "running"}.get(t.state) or t.user_attrs.get(
                "status", "stopped_early" if t.state == TrialState.PRUNED else "failed")
            assert (row["scale"], row["arm"], row["status"]) == (study.scale, study.arm, want)
            for p, v in t.params.items():
                assert row[p] == pytest.approx(v)
            if "smoothing" in df.columns and "smoothing" not in t.params:
                assert math.isnan(row["smoothing"])  # not searched in this arm: NaN, not a made-up value
            evals = [r for r in read_log(sweep.runs / t.user_attrs["ray_trial_id"]) if "val_ppl" in r and "event" not in r]
            assert row["n_evals"] == len(evals)
            # val ECE and accuracy of the same eval row as val_ppl: the last one
            assert (row["val_ece"], row["val_accuracy"]) == (evals[-1]["val_ece"], evals[-1]["val_accuracy"])
            if want == "completed":
                # the objective: the final model's val_ppl
                assert row["val_ppl"] == pytest.approx(t.value) == pytest.approx(evals[-1]["val_ppl"])
                assert row["step"] == MAX_STEPS
            if want == "stopped_early":  # ASHA really stopped it before the budget
                # its last val_ppl, what ASHA judged it on (never the best seen: nothing was chosen on that)
                assert row["step"] < MAX_STEPS and not evals[-1]["done_training"]
                assert row["val_ppl"] == pytest.approx(evals[-1]["val_ppl"])
    assert seen == len(df) == 2 * 4 * 2
    assert (df.groupby(["scale", "arm"])["status"].apply(lambda s: (s == "completed").any())).all()

    hist = history_frame(sweep)
    assert len(hist) == df["n_evals"].sum()
    assert set(hist["step"]) <= {4, 8, 12}
    stopped = set(df.index[df["status"] == "stopped_early"])
    ended = hist.groupby("trial_id")["done_training"].last()
    assert all(not ended[t] for t in stopped) and all(ended[t] for t in df.index[df["status"] == "completed"])


def test_replicates_frame_reads_every_val_and_test_metric(sweep):
    reps = replicates_frame(sweep)
    assert (reps["status"] == "completed").all() and reps["has_test"].all() and reps["has_val"].all()
    # 8 tuned configs x 2 seeds, + the matched ablations: per scale 4 (uncertainty, calibration, both x 2) x 2 seeds
    assert (reps["off"] == "").sum() == 16 and len(reps) == 16 + 16 and (reps["search_replicate"] == 0).all()
    assert set(reps["off"]) == {"", "uncertainty", "smoothing"} and set(reps[reps["off"] == "smoothing"]["arm"]) == {
        "calibration", "both"}
    reps = reps[reps["off"] == ""]
    for split, metrics in (("test", ("ppl", "ppl_teacher", "ppl_ratio", "kl_teacher", "ece", "accuracy", "confidence",
                                     "aa_kl_natural", "aa_kl_expected_bias", "aa_kl_uniprot", "compression",
                                     "teacher_params", "student_params", "gen_tokens_per_s", "unigram_ppl",
                                     "unigram_ppl_ratio", "unigram_gap", "unigram_gain_recovered",
                                     "aa_kl_floor_mean", "aa_kl_floor_p95", "aa_gen_capped_share")),
                           ("val", ("ppl", "ppl_teacher", "ppl_ratio", "kl_teacher", "ece", "accuracy"))):
        ref = reference(sweep, split)
        for r in reps.to_dict("records"):
            want = ref[(r["scale"], r["arm"])][r["seed"]]
            for m in metrics:
                assert r[f"{split}_{m}"] == pytest.approx(float(want[m]), nan_ok=True), (split, m)
            assert r[f"{split}_ece_bins"] == want["ece_bins"] and len(want["ece_bins"]) == 10
    assert (reps["val_ppl_ratio"] != reps["test_ppl_ratio"]).all()  # two splits, two numbers


def test_table_cells_equal_recomputed_mean_std(sweep, analysis):
    check_tables(sweep, analysis)
    tex = Path(analysis["tables"]["ablation_demo-xs"]["tex"]).read_text()
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex and "interaction" in tex
    status = pd.read_csv(analysis["tables"]["replicate_status"]["csv"])
    assert status["in_tables"].sum() == 16 + 16 and status["diverged"].sum() == 0  # tuned + matched ablations
    assert (status["arm"] == "both (no smoothing: matched ablation)").sum() == 2
    counts = pd.read_csv(analysis["tables"]["trial_status"]["csv"])
    trials = trials_frame(sweep)
    for s in ("completed", "stopped_early", "diverged"):
        assert counts[s].sum() == (trials["status"] == s).sum()


def test_pareto_front_of_completed_trials(sweep, analysis):
    """The Pareto table's configs are exactly the completed trials no other completed trial of the
    scale beats on both val_ppl and val ECE (read here from the run logs' final eval rows)."""
    front = pd.read_csv(analysis["tables"]["pareto"]["csv"])
    for scale in SCALES:
        pts = {}
        for t in trials_frame(sweep).itertuples(index=False):
            if t.scale == scale and t.status == "completed":
                last = [r for r in read_log(sweep.runs / t.trial_id) if "val_ppl" in r and "event" not in r][-1]
                pts[t.trial_id] = (last["val_ppl"], last["val_ece"])
        want = {i for i, (x, y) in pts.items()
                if not any(x2 <= x and y2 <= y and (x2, y2) != (x, y) for x2, y2 in pts.values())}
        assert set(front[front["scale"] == scale]["trial_id"]) == want and want
    assert "pareto" in analysis["plots"]


def test_warnings_name_few_seeds_degenerate_models_and_students_at_the_floor(sweep, analysis):
    """2 seeds per arm: a warning for every (scale, arm). A degenerate-model warning exactly for the arms whose
    replicates all have the same test accuracy or one has 0; a composition-only warning exactly for the arms
    with a replicate at the unigram floor; search noise not included (one search per study)."""
    w = analysis["warnings"]
    [few] = [x for x in w if x.startswith("n=2 usable replicate(s), fewer than 3, in ")]
    assert all(f"{scale}/{arm}" in few for scale in SCALES for arm in ARMS)
    ref = reference(sweep)
    for scale in SCALES:
        for arm in ARMS:
            acc = list(metric(ref, scale, arm, "accuracy").values())
            flagged = any(x.startswith(f"{scale}/{arm}: every one of its") or x.startswith(f"{scale}/{arm}: test "
                                                                                          "accuracy 0") for x in w)
            assert flagged == (max(acc) - min(acc) < 1e-4 or min(acc) == 0), (scale, arm, acc)
            at_floor = any(t["at_unigram_floor"] for t in ref[(scale, arm)].values())
            assert any(x.startswith(f"{scale}/{arm}: predicts composition only") for x in w) == at_floor
    assert any(x.startswith("search noise is not included in any verdict") for x in w)
    assert not any("teacher exposure" in x for x in w)  # the space declares the teacher's training data
    html = analysis["html"].read_text()
    assert "<h2>Warnings</h2>" in html and all(escape(x) in html for x in w)


def test_reliability_bins_aggregate_by_count(sweep):
    reps = replicates_frame(sweep)
    sel = reps[(reps["scale"] == "demo-xs") & (reps["arm"] == "both")]
    agg = aggregate_bins(list(sel["test_ece_bins"]))
    for i, b in enumerate(agg):
        per = [bins[i] for bins in sel["test_ece_bins"]]
        n = sum(p["count"] for p in per)
        assert b["count"] == n
        if n:
            assert b["accuracy"] == pytest.approx(sum(p["count"] * p["accuracy"] for p in per if p["count"]) / n)
            assert b["confidence"] == pytest.approx(sum(p["count"] * p["confidence"] for p in per if p["count"]) / n)


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs = []

    def handle_starttag(self, tag, attrs):
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


def html_refs(path: Path) -> list[str]:
    p = _Refs()
    p.feed(path.read_text())
    return p.refs


def test_plots_html_and_configs(sweep, analysis):
    out = analysis["out_dir"]
    names = {"curves", "lr_vs_val_ppl", "pareto", "transfer", *(f"{k}_{s}" for k in ("reliability", "ablation") for s in SCALES)}
    assert set(analysis["plots"]) == names and not analysis["skipped"]
    page = analysis["html"].read_text()
    # the matched ablations are counted apart, never as "excluded" tuned replicates
    reps = replicates_frame(sweep)
    counts = analysis["replicates"]
    assert counts["ablations"] == (reps["off"] != "").sum() > 0 and counts["total"] == (reps["off"] == "").sum()
    assert counts["in_tables"] + counts["excluded"] == counts["total"]
    assert f"matched ablations: {counts['ablations_in_tables']} of {counts['ablations']}" in page
    for plot in analysis["plots"].values():
        data = Path(plot.path).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, plot.path
        # the caption says what the figure shows: a sentence, not the file name
        assert plot.caption[0].isupper() and plot.caption.endswith(".") and len(plot.caption) > 80
        assert f"<figcaption>{escape(plot.caption)}" in page
    refs = html_refs(analysis["html"])
    assert refs and not [r for r in refs if "://" in r or r.startswith("//")]  # offline: nothing external
    for r in refs:
        assert (out / r).is_file(), r
    for name in names:
        assert f"plots/{name}.png" in refs
    for fmt in ("md", "csv", "tex"):
        assert "tables/scale_enhancement." + fmt in refs
    # every study has a completed trial -> its config was exported; each scale names one to train, chosen on val
    assert set(analysis["configs"]) == {f"{s}/{a}" for s in SCALES for a in ARMS}
    val_ref = reference(sweep, "val")
    for scale, rec in analysis["recommended"].items():
        assert rec["arm"] == chosen_on_val(val_ref, scale, ARMS) and rec["basis"] == ON_REPLICATES
        assert rec["config"].name == config_file_name(scale, rec["arm"]) and rec["config"].is_file()
        assert f"configs/{rec['config'].name}" in refs
    assert {(r["scale"], r["arm"]) for r in analysis["summary"]} == {(s, a) for s in SCALES for a in ARMS}


def _captured(monkeypatch):
    """Figures as plotted, before they become PNGs (to read their axes)."""
    figs = []
    monkeypatch.setattr(plots_module, "_save", lambda fig, path, caption: figs.append(fig) or caption)
    return figs


def test_plots_zoom_to_the_data_and_label_every_panel(sweep, monkeypatch, tmp_path):
    reps, trials = replicates_frame(sweep), trials_frame(sweep)
    figs = _captured(monkeypatch)
    plots_module.make_plots(trials, history_frame(sweep, trials), reps, list(SCALES), list(ARMS), tmp_path)
    assert len(figs) == 4 + 2 * len(SCALES)  # curves, lr, pareto, transfer, then two per scale
    for fig in figs:
        for ax in fig.axes:
            assert ax.get_ylabel() and (ax.get_title() or ax.get_xlabel()), fig.axes.index(ax)
    ref = reference(sweep)
    for scale in SCALES:
        ablation, reliability = figs[4 + 2 * SCALES.index(scale) + 1], figs[4 + 2 * SCALES.index(scale)]
        values = [v for a in ARMS for v in metric(ref, scale, a, "ppl_ratio").values()]
        lo, hi = ablation.axes[0].get_ylim()
        # zoomed: the axis spans about the data (with error bars), not 0 .. max
        assert min(values) - (hi - lo) < lo <= min(values) and max(values) <= hi
        assert hi - lo < 0.5 * max(values)
        # the unigram floor is drawn, as one dashed line at the mean of the replicates' measured floors
        floors = [v for a in ARMS for v in metric(ref, scale, a, "unigram_ppl_ratio").values()]
        dashed = [ln for ln in ablation.axes[0].get_lines() if ln.get_linestyle() == "--"]
        assert floors and len(dashed) == 1 and "unigram floor" in dashed[0].get_label()
        assert min(floors) - 1e-12 <= dashed[0].get_ydata()[0] <= max(floors) + 1e-12
        assert lo <= dashed[0].get_ydata()[0] <= hi  # inside the zoomed view
        # the plot draws each arm's bins summed over its seeds (accuracy count-weighted), so the limit is
        # the top of those sums, not of one seed's sparse bin (3 tokens, 2 right: 0.67)
        top = 0.0
        for a in ARMS:
            summed: dict[float, list[float]] = {}
            for t in ref.get((scale, a), {}).values():
                for b in t["ece_bins"]:
                    if b["count"]:
                        acc = summed.setdefault(b["hi"], [0.0, 0.0])
                        acc[0] += b["count"]
                        acc[1] += b["count"] * b["accuracy"]
            top = max([top, *(max(hi, right / count) for hi, (count, right) in summed.items())])
        assert reliability.axes[0].get_xlim()[1] == pytest.approx(min(1.0, math.ceil(top * 10 - 1e-9) / 10))


# ---- variants on copies of the sweep ---------------------------------------------------------------


def _drop(sd, scale=None, arm=None, seed=None) -> None:
    """Remove replicate folders (matched ablations included) of a scale / arm / seed."""
    for d in (sd.root / "replicates").iterdir():
        name = parse_replicate_name(d.name)
        if (scale in (None, name.scale)) and (arm in (None, name.arm)) and (seed in (None, name.seed)):
            shutil.rmtree(d)


def test_missing_arm_and_scale_say_missing(sweep_copy, capsys):
    sd = sweep_copy()
    _drop(sd, scale="demo-s", arm="calibration")
    _drop(sd, scale="demo-xs")
    result = analyze(sd)  # default out: <sweep>/analysis
    assert capsys.readouterr().out == ""  # returns data, prints nothing
    assert result["html"] == sd.root / "analysis" / "index.html"
    check_tables(sd, result)
    abl = Path(result["tables"]["ablation_demo-s"]["md"]).read_text()
    assert "| calibration | - | missing" in abl
    assert "missing (no value for calibration)" in abl  # the interaction term
    scale_md = Path(result["tables"]["scale_enhancement"]["md"]).read_text()
    row_xs = next(line for line in scale_md.splitlines() if line.startswith("| demo-xs |"))
    assert row_xs.count("missing") >= 10
    assert {"reliability_demo-xs", "ablation_demo-xs"} <= set(result["skipped"])
    assert {"reliability_demo-s", "ablation_demo-s", "curves"} <= set(result["plots"])
    for r in html_refs(result["html"]):
        assert (result["out_dir"] / r).is_file()


def test_single_seed_says_no_spread(sweep_copy):
    sd = sweep_copy()
    _drop(sd, seed=2)  # replicate seeds are 1 and 2 (the search used seed 0)
    result = analyze(sd, sd.root.parent / "out")
    check_tables(sd, result)
    ref = reference(sd)
    for scale in SCALES:
        md = Path(result["tables"][f"ablation_{scale}"]["md"]).read_text()
        table = md.split("\n\n")[1]
        with_value = sum(bool(metric(ref, scale, a, m)) for a in ARMS
                         for m in (*ABL_METRICS, "unigram_gain_recovered", "aa_gen_capped_share"))
        with_value += sum(interaction_expected(ref, scale, m)[2] == 1 for m in ABL_METRICS)
        assert "±" not in table and table.count("(n=1, no spread)") == with_value >= 5
        csv = pd.read_csv(result["tables"][f"ablation_{scale}"]["csv"])
        assert csv["ppl_ratio_std"].isna().all() and (csv["ppl_ratio_n"] == 1).all()


def test_differing_seeds_propagate_the_spread(sweep_copy):
    sd = sweep_copy()
    reps = sd.root / "replicates"
    (reps / "demo-s__both__seed2").rename(reps / "demo-s__both__seed7")  # seed sets now differ between arms
    result = analyze(sd, sd.root.parent / "out")
    check_tables(sd, result)  # asserts method "propagated" and std = sqrt(sum of the four variances)
    md = Path(result["tables"]["ablation_demo-s"]["md"]).read_text()
    assert "std = sqrt(sum of the arms' variances)" in md
    xs = pd.read_csv(result["tables"]["ablation_demo-xs"]["csv"]).set_index("arm")
    assert xs.loc["interaction", "ppl_ratio_spread"] == "per seed"


@pytest.fixture
def diverged_run(sweep, tmp_path) -> Path:
    """A real diverged run: the exported best demo-xs/baseline config, NaN injected after the first eval."""
    from kdsweep.sweeps.export import export_best

    [cfg] = [p for p in export_best(sweep, tmp_path / "cfg") if p.name == config_file_name("demo-xs", "baseline")]
    out = tmp_path / "diverged"
    assert main(["train", "--config", str(cfg), "--set", "inject_nan_at_step=5", "--set", "seed=2",
                 "--out", str(out)]) == 1
    assert json.loads((out / "metrics.json").read_text())["status"] == "diverged"
    return out


def test_diverged_and_stopped_runs_never_enter_tables(sweep_copy, diverged_run):
    sd = sweep_copy()
    reps = sd.root / "replicates"
    shutil.copytree(diverged_run, reps / "demo-xs__baseline__seed3", ignore=shutil.ignore_patterns("checkpoints"))
    # an interrupted replicate: history but no metrics.json
    shutil.copytree(reps / "demo-xs__baseline__seed1", reps / "demo-xs__baseline__seed4")
    (reps / "demo-xs__baseline__seed4" / "metrics.json").unlink()
    # A diverged and a stopped-early search trial whose val_ppl beat every completed one, recorded the way
    # sweeps/searcher.py records them (Optuna state + `status` attribute), with real run folders.
    study = open_study(sd.storage_url(), sd.name, "demo-xs/baseline")
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    best_done = min(t.value for t in done)
    dists = done[0].distributions
    for tid, state, status in (("divtrial", TrialState.PRUNED, "diverged"), ("stoptrial", TrialState.PRUNED,
                                                                             "stopped_early")):
        study.add_trial(optuna.trial.create_trial(
            state=state, params=done[0].params, distributions=dists, intermediate_values={4: best_done / 2},
            user_attrs={"ray_trial_id": tid, "status": status, "step": 4}))
    shutil.copytree(diverged_run, sd.runs / "divtrial", ignore=shutil.ignore_patterns("checkpoints"))
    rows = [r for r in read_log(diverged_run) if "event" not in r][:1]
    (sd.runs / "stoptrial").mkdir()
    (sd.runs / "stoptrial" / "metrics.jsonl").write_text(json.dumps({**rows[0], "val_ppl": best_done / 2}) + "\n")

    result = analyze(sd, sd.root.parent / "out")
    check_tables(sd, result)  # reference() skips the diverged / unfinished replicates
    new = pd.read_csv(result["tables"]["scale_enhancement"]["csv"]).set_index("scale")
    assert new.loc["demo-xs", "baseline_ppl_ratio_n"] == 2  # seeds 1 and 2 only
    assert new.loc["demo-xs", "excluded"] == "baseline: 1 diverged (seed 3); 1 incomplete (seed 4)"
    assert new.loc["demo-xs", "n_excluded"] == 2
    status = pd.read_csv(result["tables"]["replicate_status"]["csv"]).set_index(["scale", "arm"])
    assert status.loc[("demo-xs", "baseline"), ["in_tables", "diverged", "incomplete"]].tolist() == [2, 1, 1]

    trials = trials_frame(sd).set_index("trial_id")
    assert trials.loc["divtrial", "status"] == "diverged" and trials.loc["stoptrial", "status"] == "stopped_early"
    assert trials.loc["divtrial", "n_evals"] == 1 and trials.loc["divtrial", "run_status"] == "diverged"
    counts = pd.read_csv(result["tables"]["trial_status"]["csv"]).set_index(["scale", "arm"])
    row = counts.loc[("demo-xs", "baseline")]
    assert row["diverged"] == 1 and row["best_val_ppl"] == pytest.approx(best_done)  # completed trials only
    assert result["configs"]["demo-xs/baseline"].is_file()
    exported = result["configs"]["demo-xs/baseline"].read_text()
    assert "trial_id: divtrial" not in exported and "trial_id: stoptrial" not in exported
    assert "curves" in result["plots"] and result["plots"]["curves"].path.stat().st_size > 5_000


def test_sweep_without_run_folders_or_replicates(sweep_copy):
    """Run logs and replicates gone (e.g. copied without them): rows with status, skipped plots, no crash."""
    sd = sweep_copy()
    shutil.rmtree(sd.runs)
    shutil.rmtree(sd.root / "replicates")
    trials = trials_frame(sd)
    assert len(trials) == 16 and (trials["n_evals"] == 0).all() and set(trials["status"]) <= {"completed", "stopped_early"}
    done = trials[trials["status"] == "completed"]
    assert done["val_ppl"].notna().all()  # from Optuna, not from the (missing) logs
    result = analyze(sd, sd.root.parent / "out")
    assert set(result["plots"]) == {"lr_vs_val_ppl", "transfer"}  # both from Optuna alone
    assert {"curves", "pareto"} <= set(result["skipped"]) and all(f"ablation_{s}" in result["skipped"] for s in SCALES)
    assert result["replicates"]["total"] == 0
    # no replicate: the search objective chooses, and says so
    for scale, rec in result["recommended"].items():
        best = done[done["scale"] == scale].sort_values("val_ppl").iloc[0]
        assert (rec["arm"], rec["basis"]) == (best["arm"], ON_SEARCH)
    assert result["split"] == "split: not recorded (the runs' logs predate the split record); leakage unknown"
    md = Path(result["tables"]["scale_enhancement"]["md"]).read_text()
    assert md.count("| missing") >= 2 * 10
    for r in html_refs(result["html"]):
        assert (result["out_dir"] / r).is_file()


def _set_metric(sd, scale, arm, split, key, value) -> None:
    """Overwrite one held-out metric in every replicate summary of (scale, arm)."""
    for d in (sd.root / "replicates").glob(f"{scale}__{arm}__seed*"):
        path = d / "metrics.json"
        summary = json.loads(path.read_text())
        summary[split][key] = value(summary[split][key]) if callable(value) else value
        path.write_text(json.dumps(summary))


def test_val_chooses_where_val_and_test_disagree(sweep_copy):
    """Make the enhanced arm that is worst on test the best on val: the table and the recommended
    config follow val; test numbers are still those of the replicates."""
    sd = sweep_copy()
    ref = reference(sd)
    scale = "demo-xs"
    test_means = {a: statistics.fmean(metric(ref, scale, a, "ppl_ratio").values()) for a in ARMS[1:]}
    worst_on_test = max(test_means, key=test_means.get)
    _set_metric(sd, scale, worst_on_test, "val", "ppl_ratio", lambda v: v / 2)  # val ppl_ratio halved
    result = analyze(sd, sd.root.parent / "out")
    check_tables(sd, result)  # chosen arm = lowest mean val ppl_ratio, test cells from the test metrics
    row = pd.read_csv(result["tables"]["scale_enhancement"]["csv"]).set_index("scale").loc[scale]
    assert row["chosen_arm"] == worst_on_test != min(test_means, key=test_means.get)
    assert row["chosen_ppl_ratio_mean"] == pytest.approx(test_means[worst_on_test])
    assert result["recommended"][scale]["arm"] == worst_on_test
    verdicts = pd.read_csv(result["tables"]["verdicts"]["csv"])
    arms = verdicts[verdicts["chosen"] & (verdicts["arm"] != "chosen arm, selection-free")]
    assert arms.set_index("scale").loc[scale, "arm"] == worst_on_test
    # every enhanced arm has its verdict, chosen or not, and the chosen arm has its selection-free one
    assert len(verdicts[verdicts["scale"] == scale]) == 3 + 1


def test_warnings_for_a_range_edge_and_a_degenerate_scale(sweep_copy):
    sd = sweep_copy()
    # a new best demo-s/both trial whose lr sits at the low end of its loguniform range
    study = open_study(sd.storage_url(), sd.name, "demo-s/both")
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    low = done[0].distributions["lr"].low
    study.add_trial(optuna.trial.create_trial(
        value=min(t.value for t in done) / 2, params={**done[0].params, "lr": low * 1.05},
        distributions=done[0].distributions, user_attrs={"ray_trial_id": "edgetrial", "status": "completed"}))
    # demo-xs/both: its two students predict differently, so it is no longer degenerate; demo-s: all alike
    for seed, acc in ((1, 0.5), (2, 0.4)):
        path = sd.root / "replicates" / replicate_name("demo-xs", "both", seed) / "metrics.json"
        summary = json.loads(path.read_text())
        summary["test"]["accuracy"] = acc
        path.write_text(json.dumps(summary))
    for arm in ARMS:
        _set_metric(sd, "demo-s", arm, "test", "accuracy", 0.25)
    result = analyze(sd, sd.root.parent / "out")
    w = result["warnings"]
    [edge] = [x for x in w if x.startswith("demo-s/both: the best config's lr")]
    assert "low edge of its search range [0.001, 0.03] (loguniform" in edge
    for arm in ARMS:
        assert any(x.startswith(f"demo-s/{arm}: every one of its 2 completed replicates has test accuracy 0.25 "
                                "(spread < 0.0001): a degenerate model") for x in w), arm
    assert not any(x.startswith("demo-xs/both: every one") for x in w)


def _edit_space(sd, **changes) -> None:
    raw = yaml.safe_load(sd.space.read_text())
    for key, value in changes.items():
        section, _, leaf = key.partition("__")
        if leaf:
            raw.setdefault(section, {})[leaf] = value
        elif value is None:
            raw.pop(section, None)
        else:
            raw[section] = value
    sd.space.write_text(yaml.safe_dump(raw, sort_keys=False))


def test_search_replicates_give_two_level_verdicts(sweep_copy):
    """A second search replicate (its replicate folders made from the first's, seeds + 1000, values shifted per
    arm): every verdict's interval is then over the 2 replicates' mean differences and says search noise is
    included; the selection-free unit is the search replicate."""
    sd = sweep_copy()
    _edit_space(sd, search__search_replicates=2)
    shift = {"baseline": 0.0, "uncertainty": 0.02, "calibration": -0.01, "both": 0.005}
    for d in sorted((sd.root / "replicates").iterdir()):
        name = parse_replicate_name(d.name)
        new = sd.root / "replicates" / replicate_name(name.scale, name.arm, name.seed + 1000, 1, name.off)
        shutil.copytree(d, new, ignore=shutil.ignore_patterns("student", "checkpoints"))
        summary = json.loads((new / "metrics.json").read_text())
        for split in ("val", "test"):
            summary[split]["ppl_ratio"] += shift[name.arm] + (0.003 if name.off else 0.0)
        (new / "metrics.json").write_text(json.dumps(summary))
    result = analyze(sd, sd.root.parent / "out")
    ref = reference(sd)
    verdicts = pd.read_csv(result["tables"]["verdicts"]["csv"]).set_index(["scale", "arm"])
    for scale in SCALES:
        base = metric(ref, scale, "baseline", "ppl_ratio")
        for arm in ARMS[1:]:
            a = metric(ref, scale, arm, "ppl_ratio")
            per_rep = [statistics.fmean(a[s] - base[s] for s in a if s // 1000 == r) for r in (0, 1)]
            row = verdicts.loc[(scale, arm)]
            assert row["unit"] == "search replicates" and row["n"] == 2
            t_check(row, per_rep)
        free = verdicts.loc[(scale, "chosen arm, selection-free")]
        assert free["unit"] == "search replicates" and free["chosen_by_unit"].startswith("search replicate 0: ")
    md = Path(result["tables"]["verdicts"]["md"]).read_text()
    assert "included (2 search replicates, two-level interval)" in md and "not included" not in md
    mechanism = pd.read_csv(result["tables"]["mechanism"]["csv"])
    assert (mechanism["unit"] == "search replicates").all() and (mechanism["n"] == 2).all()
    # an ablation's off side is shifted by +0.003 in replicate 1 only: on - off moves by -0.0015 on average
    assert not any(x.startswith("search noise is not included") for x in result["warnings"])
    counts = pd.read_csv(result["tables"]["trial_status"]["csv"])
    assert set(counts["search_replicate"]) == {0, 1}


def test_students_at_the_floor_are_flagged_and_unknown_exposure_is_said(sweep_copy):
    sd = sweep_copy()
    _edit_space(sd, teacher_train_data=None)
    for d in (sd.root / "replicates").iterdir():
        path = d / "metrics.json"
        summary = json.loads(path.read_text())
        summary["test"]["at_unigram_floor"] = d.name == replicate_name("demo-s", "uncertainty", 2)
        path.write_text(json.dumps(summary))
    result = analyze(sd, sd.root.parent / "out")
    abl = pd.read_csv(result["tables"]["ablation_demo-s"]["csv"]).set_index("arm")
    assert abl.loc["uncertainty", "vs_unigram_floor"] == "PREDICTS COMPOSITION ONLY (1/2 seeds at the unigram floor)"
    assert abl.loc["baseline", "vs_unigram_floor"].startswith("above the floor (2/2 seeds")
    [w] = [x for x in result["warnings"] if "predicts composition only" in x]
    assert w.startswith("demo-s/uncertainty: predicts composition only: in 1 of 2 replicates (seed 2)")
    assert "teacher exposure: teacher's training data unknown" in result["exposure"]
    assert any(x.startswith("teacher exposure: teacher's training data unknown") for x in result["warnings"])
    for paths in result["tables"].values():
        assert Path(paths["md"]).read_text().rstrip().endswith(result["exposure"])
