"""`analysis.analyze` on a real sweep: frames vs Optuna and the run logs, table cells vs
numbers recomputed here straight from the replicates' metrics.json (val chooses, test
reports), verdicts and warnings, plots and HTML, and sweeps with a missing arm / scale, a
single seed, differing seeds, diverged runs, val and test rankings that disagree."""

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
from optuna.trial import TrialState

from analysis import plots as plots_module
from analysis.fmt import mean_pm
from analysis.load import history_frame, replicates_frame, trials_frame
from analysis.plots import aggregate_bins
from analysis.report import analyze
from analysis.select import ON_REPLICATES, ON_SEARCH
from distill.rundir import read_log
from kdsweep.cli import main
from sweeps.layout import config_file_name
from sweeps.space import load_space
from sweeps.study import open_study

pytestmark = pytest.mark.ray

ARMS = ("baseline", "uncertainty", "calibration", "both")
SCALES = ("demo-xs", "demo-s")
ABL_METRICS = ("ppl_ratio", "kl_teacher", "ece", "accuracy", "aa_kl_natural")
MAX_STEPS = 12
# t(0.975, df) from published tables, to check the intervals independently of analysis.stats
T975 = {1: 12.7062047362, 2: 4.30265272975, 3: 3.18244630528}


# ---- reference numbers, straight from the files -------------------------------------------


def reference(sd, split: str = "test") -> dict:
    """{(scale, arm): {seed: metrics of `split`}} of completed replicates with test metrics, read here directly."""
    out: dict = {}
    for d in sorted((sd.root / "replicates").iterdir()):
        path = d / "metrics.json"
        if not path.is_file():
            continue
        summary = json.loads(path.read_text())
        if summary["status"] != "completed" or not summary.get("test"):
            continue
        scale, arm, seed = d.name.rsplit("__", 2)
        out.setdefault((scale, arm), {})[int(seed[len("seed"):])] = summary[split]
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


def split_note_of(sd) -> str:
    """The split line every table must carry: the start row of a replicate's own log."""
    d = sorted((sd.root / "replicates").iterdir())[0]
    return next(r for r in read_log(d) if r.get("event") == "start")["data"]["split_note"]


def check_tables(sd, result) -> None:
    """Every numeric cell of the scale, verdict and ablation tables against `reference`."""
    ref, val_ref, trials = reference(sd), reference(sd, "val"), trials_frame(sd)
    scale_csv = pd.read_csv(result["tables"]["scale_enhancement"]["csv"]).set_index("scale")
    scale_md = Path(result["tables"]["scale_enhancement"]["md"]).read_text()
    verdicts = pd.read_csv(result["tables"]["verdicts"]["csv"]).set_index(["scale", "arm"])
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
        # selection-free: each seed reported with the arm chosen on the val values of the other seeds
        shared = set(base)
        for a in ARMS[1:]:
            shared &= set(metric(ref, scale, a, "ppl_ratio")) & set(metric(val_ref, scale, a, "ppl_ratio"))
        free = []
        for s in sorted(shared) if len(shared) >= 2 else []:
            pick = chosen_on_val(val_ref, scale, ARMS[1:], shared - {s})
            free.append(100 * (base[s] - metric(ref, scale, pick, "ppl_ratio")[s]) / base[s])
        check_cell(row, "selection_free_improvement_pct", free)
        assert cell_text(list(base.values())) in scale_md

        for arm in ARMS[1:]:
            v = verdicts.loc[(scale, arm)]
            a = metric(ref, scale, arm, "ppl_ratio")
            d = [a[s] - base[s] for s in sorted(set(a) & set(base))]
            assert int(v["n"]) == len(d) and bool(v["chosen"]) == (arm == chosen)
            if len(d) >= 2:
                mean, sd_, n = stats(d)
                half = T975[n - 1] * sd_ / math.sqrt(n)
                assert close(v["diff_mean"], mean)
                assert v["ci_low"] == pytest.approx(mean - half, rel=1e-9) and v["ci_high"] == pytest.approx(mean + half, rel=1e-9)
                want = "better" if mean + half < 0 else "worse" if mean - half > 0 else "inconclusive"
                assert v["verdict"] == want
            elif len(d) == 1:
                assert v["verdict"] == "inconclusive (n=1)" and math.isnan(v["ci_low"])

        abl = pd.read_csv(result["tables"][f"ablation_{scale}"]["csv"]).set_index("arm")
        md = Path(result["tables"][f"ablation_{scale}"]["md"]).read_text()
        for arm in ARMS:
            for m in (*ABL_METRICS, "aa_kl_expected_bias"):
                vals = list(metric(ref, scale, arm, m).values())
                check_cell(abl.loc[arm], m, vals)
                assert cell_text(vals) in md, (scale, arm, m, cell_text(vals))
        for m in ABL_METRICS:
            mean, std, n, how = interaction_expected(ref, scale, m)
            row = abl.loc["interaction"]
            assert int(row[f"{m}_n"]) == n, (scale, m)
            assert close(float(row[f"{m}_mean"]), mean) and close(float(row[f"{m}_std"]), std), (scale, m)
            assert (row[f"{m}_spread"] if isinstance(row[f"{m}_spread"], str) else "missing") == how
    # every table says which split chose and which reports, and ends with the split and its leakage
    note = split_note_of(sd)
    assert note.startswith("split: ") and "leakage" in note
    for name, paths in result["tables"].items():
        md = Path(paths["md"]).read_text()
        assert md.rstrip().endswith(f"- {note}"), name
    assert "Chosen arm: the enhanced arm with the lowest mean val ppl_ratio" in scale_md
    assert "The test split only reports" in scale_md
    assert "not only the chosen one" in Path(result["tables"]["verdicts"]["md"]).read_text()


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
    assert len(reps) == 16 and (reps["status"] == "completed").all() and reps["has_test"].all() and reps["has_val"].all()
    for split, metrics in (("test", ("ppl", "ppl_teacher", "ppl_ratio", "kl_teacher", "ece", "accuracy", "confidence",
                                     "aa_kl_natural", "aa_kl_expected_bias", "aa_kl_uniprot", "compression",
                                     "teacher_params", "student_params", "gen_tokens_per_s")),
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
    assert status["in_tables"].sum() == 16 and status["diverged"].sum() == 0
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


def test_warnings_name_few_seeds_and_degenerate_models(sweep, analysis):
    """2 seeds per arm: a warning for every (scale, arm). A degenerate-model warning exactly where every
    replicate of a scale has the same test accuracy (the demo students' 0.09499) or one has 0."""
    w = analysis["warnings"]
    [few] = [x for x in w if x.startswith("n=2 usable replicate(s), fewer than 3, in ")]
    assert all(f"{scale}/{arm}" in few for scale in SCALES for arm in ARMS)
    for scale in SCALES:
        acc = [v for a in ARMS for v in metric(reference(sweep), scale, a, "accuracy").values()]
        flagged = any(x.startswith(f"{scale}: every one of the") or x.startswith(f"{scale}: test accuracy 0") for x in w)
        assert flagged == (max(acc) - min(acc) < 1e-4 or min(acc) == 0), (scale, acc)
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
    names = {"curves", "lr_vs_val_ppl", "pareto", *(f"{k}_{s}" for k in ("reliability", "ablation") for s in SCALES)}
    assert set(analysis["plots"]) == names and not analysis["skipped"]
    page = analysis["html"].read_text()
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
    assert len(figs) == 3 + 2 * len(SCALES)
    for fig in figs:
        for ax in fig.axes:
            assert ax.get_ylabel() and (ax.get_title() or ax.get_xlabel()), fig.axes.index(ax)
    ref = reference(sweep)
    for scale in SCALES:
        ablation, reliability = figs[3 + 2 * SCALES.index(scale) + 1], figs[3 + 2 * SCALES.index(scale)]
        values = [v for a in ARMS for v in metric(ref, scale, a, "ppl_ratio").values()]
        lo, hi = ablation.axes[0].get_ylim()
        # zoomed: the axis spans about the data (with error bars), not 0 .. max
        assert min(values) - (hi - lo) < lo <= min(values) and max(values) <= hi
        assert hi - lo < 0.5 * max(values)
        top = max(max(b["hi"], b["accuracy"]) for a in ARMS for t in ref.get((scale, a), {}).values()
                  for b in t["ece_bins"] if b["count"])
        assert reliability.axes[0].get_xlim()[1] == pytest.approx(min(1.0, math.ceil(top * 10 - 1e-9) / 10))


# ---- variants on copies of the sweep ---------------------------------------------------------------


def _drop(sd, scale=None, arm=None, seed=None) -> None:
    for d in (sd.root / "replicates").iterdir():
        s, a, k = d.name.rsplit("__", 2)
        if (scale in (None, s)) and (arm in (None, a)) and (seed in (None, int(k[4:]))):
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
        with_value = sum(bool(metric(ref, scale, a, m)) for a in ARMS for m in (*ABL_METRICS, "aa_kl_expected_bias"))
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
    from sweeps.export import export_best

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
    assert set(result["plots"]) == {"lr_vs_val_ppl"}
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
    assert verdicts[verdicts["chosen"]].set_index("scale").loc[scale, "arm"] == worst_on_test
    assert len(verdicts[verdicts["scale"] == scale]) == 3  # every enhanced arm has its verdict, chosen or not


def test_warnings_for_a_range_edge_and_a_degenerate_scale(sweep_copy):
    sd = sweep_copy()
    # a new best demo-s/both trial whose lr sits at the low end of its loguniform range
    study = open_study(sd.storage_url(), sd.name, "demo-s/both")
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    low = done[0].distributions["lr"].low
    study.add_trial(optuna.trial.create_trial(
        value=min(t.value for t in done) / 2, params={**done[0].params, "lr": low * 1.05},
        distributions=done[0].distributions, user_attrs={"ray_trial_id": "edgetrial", "status": "completed"}))
    # demo-xs: one student predicts differently, so its scale is no longer degenerate; demo-s: all alike
    _set_metric(sd, "demo-xs", "both", "test", "accuracy", 0.5)
    for arm in ARMS:
        _set_metric(sd, "demo-s", arm, "test", "accuracy", 0.25)
    result = analyze(sd, sd.root.parent / "out")
    w = result["warnings"]
    [edge] = [x for x in w if x.startswith("demo-s/both: the best config's lr")]
    assert "low edge of its search range [0.001, 0.03] (loguniform" in edge
    assert "demo-s: every one of the 8 completed replicates has test accuracy 0.25 (spread < 0.0001)" in " ".join(w)
    assert not any(x.startswith("demo-xs: every one") for x in w)
