"""`analysis.analyze` on a real sweep: frames vs Optuna and the run logs, table cells vs
numbers recomputed here straight from the replicates' metrics.json, plots and HTML,
and sweeps with a missing arm / scale, a single seed, differing seeds, diverged runs."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from html.parser import HTMLParser
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from analysis.load import history_frame, replicates_frame, trials_frame
from analysis.plots import aggregate_bins
from analysis.report import analyze
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


# ---- reference numbers, straight from the files -------------------------------------------


def reference(sd) -> dict:
    """{(scale, arm): {seed: test metrics}} of completed replicates with test metrics, read here directly."""
    out: dict = {}
    for d in sorted((sd.root / "replicates").iterdir()):
        path = d / "metrics.json"
        if not path.is_file():
            continue
        summary = json.loads(path.read_text())
        if summary["status"] != "completed" or not summary.get("test"):
            continue
        scale, arm, seed = d.name.rsplit("__", 2)
        out.setdefault((scale, arm), {})[int(seed[len("seed"):])] = summary["test"]
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
    assert close(float(row[f"{prefix}_std"]), std), (prefix, row[f"{prefix}_std"], std)


def cell_text(values: list[float]) -> str:
    """The display the brief asks for: mean ± std (n=k), or '(n=1, no spread)', or 'missing'."""
    if not values:
        return "missing"
    mean, std, n = stats(values)
    return f"{mean:.4g} ± {std:.3g} (n={n})" if n >= 2 else f"{mean:.4g} (n=1, no spread)"


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


def check_tables(sd, result) -> None:
    """Every numeric cell of the scale table and of each ablation table against `reference`."""
    ref = reference(sd)
    scale_csv = pd.read_csv(result["tables"]["scale_enhancement"]["csv"]).set_index("scale")
    scale_md = Path(result["tables"]["scale_enhancement"]["md"]).read_text()
    for scale in SCALES:
        row = scale_csv.loc[scale]
        check_cell(row, "compression", [float(t["compression"]) for a in ARMS
                                        for t in ref.get((scale, a), {}).values()])
        base = metric(ref, scale, "baseline", "ppl_ratio")
        enhanced = {a: statistics.fmean(metric(ref, scale, a, "ppl_ratio").values())
                    for a in ARMS[1:] if metric(ref, scale, a, "ppl_ratio")}
        best = min(enhanced, key=enhanced.get) if enhanced else None
        assert (row["best_arm"] if isinstance(row["best_arm"], str) else None) == best
        for who, arm in (("baseline", "baseline"), ("best", best)):
            for m in ("ppl_ratio", "ece", "accuracy", "kl_teacher"):
                check_cell(row, f"{who}_{m}", list(metric(ref, scale, arm, m).values()) if arm else [])
        if base and best:
            b = metric(ref, scale, best, "ppl_ratio")
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
        assert cell_text(list(base.values())) in scale_md

        abl = pd.read_csv(result["tables"][f"ablation_{scale}"]["csv"]).set_index("arm")
        md = Path(result["tables"][f"ablation_{scale}"]["md"]).read_text()
        for arm in ARMS:
            for m in ABL_METRICS:
                vals = list(metric(ref, scale, arm, m).values())
                check_cell(abl.loc[arm], m, vals)
                assert cell_text(vals) in md, (scale, arm, m, cell_text(vals))
        for m in ABL_METRICS:
            mean, std, n, how = interaction_expected(ref, scale, m)
            row = abl.loc["interaction"]
            assert int(row[f"{m}_n"]) == n, (scale, m)
            assert close(float(row[f"{m}_mean"]), mean) and close(float(row[f"{m}_std"]), std), (scale, m)
            assert (row[f"{m}_spread"] if isinstance(row[f"{m}_spread"], str) else "missing") == how


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
            if want == "completed":
                # the objective: the final model's val_ppl
                assert row["best_val_ppl"] == pytest.approx(t.value) == pytest.approx(evals[-1]["val_ppl"])
                assert row["last_step"] == MAX_STEPS
            if want == "stopped_early":  # ASHA really stopped it before the budget
                # (Optuna gives a PRUNED trial its last intermediate value as `value`: not an objective value)
                assert row["last_step"] < MAX_STEPS and not evals[-1]["done_training"]
                assert row["best_val_ppl"] == pytest.approx(min(r["val_ppl"] for r in evals))
    assert seen == len(df) == 2 * 4 * 2
    assert (df.groupby(["scale", "arm"])["status"].apply(lambda s: (s == "completed").any())).all()

    hist = history_frame(sweep)
    assert len(hist) == df["n_evals"].sum()
    assert set(hist["step"]) <= {4, 8, 12}
    stopped = set(df.index[df["status"] == "stopped_early"])
    ended = hist.groupby("trial_id")["done_training"].last()
    assert all(not ended[t] for t in stopped) and all(ended[t] for t in df.index[df["status"] == "completed"])


def test_replicates_frame_reads_every_test_metric(sweep):
    reps = replicates_frame(sweep)
    ref = reference(sweep)
    assert len(reps) == 16 and (reps["status"] == "completed").all() and reps["has_test"].all()
    for r in reps.itertuples(index=False):
        test = ref[(r.scale, r.arm)][r.seed]
        for m in ("ppl", "ppl_teacher", "ppl_ratio", "kl_teacher", "ece", "accuracy", "confidence", "aa_kl_natural",
                  "aa_kl_uniprot", "compression", "teacher_params", "student_params", "gen_tokens_per_s"):
            assert getattr(r, m) == pytest.approx(float(test[m]), nan_ok=True), m
        assert r.ece_bins == test["ece_bins"] and len(r.ece_bins) == 10


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


def test_reliability_bins_aggregate_by_count(sweep):
    reps = replicates_frame(sweep)
    sel = reps[(reps["scale"] == "demo-xs") & (reps["arm"] == "both")]
    agg = aggregate_bins(list(sel["ece_bins"]))
    for i, b in enumerate(agg):
        per = [bins[i] for bins in sel["ece_bins"]]
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
    names = {"curves", "lr_vs_best", *(f"{k}_{s}" for k in ("reliability", "ablation") for s in SCALES)}
    assert set(analysis["plots"]) == names and not analysis["skipped"]
    for path in analysis["plots"].values():
        data = Path(path).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, path
    refs = html_refs(analysis["html"])
    assert refs and not [r for r in refs if "://" in r or r.startswith("//")]  # offline: nothing external
    for r in refs:
        assert (out / r).is_file(), r
    for name in names:
        assert f"plots/{name}.png" in refs
    for fmt in ("md", "csv", "tex"):
        assert "tables/scale_enhancement." + fmt in refs
    # every study has a completed trial -> its config was exported; each scale names one to train
    assert set(analysis["configs"]) == {f"{s}/{a}" for s in SCALES for a in ARMS}
    for scale, rec in analysis["recommended"].items():
        assert rec["config"].name == config_file_name(scale, rec["arm"]) and rec["config"].is_file()
        assert f"configs/{rec['config'].name}" in refs
    assert {(r["scale"], r["arm"]) for r in analysis["summary"]} == {(s, a) for s in SCALES for a in ARMS}


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
        with_value = sum(bool(metric(ref, scale, a, m)) for a in ARMS for m in ABL_METRICS)
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
    assert "curves" in result["plots"] and Path(result["plots"]["curves"]).stat().st_size > 5_000


def test_sweep_without_run_folders_or_replicates(sweep_copy):
    """Run logs and replicates gone (e.g. copied without them): rows with status, skipped plots, no crash."""
    sd = sweep_copy()
    shutil.rmtree(sd.runs)
    shutil.rmtree(sd.root / "replicates")
    trials = trials_frame(sd)
    assert len(trials) == 16 and (trials["n_evals"] == 0).all() and set(trials["status"]) <= {"completed", "stopped_early"}
    done = trials[trials["status"] == "completed"]
    assert done["best_val_ppl"].notna().all()  # from Optuna, not from the (missing) logs
    result = analyze(sd, sd.root.parent / "out")
    assert set(result["plots"]) == {"lr_vs_best"}
    assert "curves" in result["skipped"] and all(f"ablation_{s}" in result["skipped"] for s in SCALES)
    assert result["replicates"]["total"] == 0
    assert all(rec["basis"] == "lowest search val_ppl (no replicate yet)" for rec in result["recommended"].values())
    md = Path(result["tables"]["scale_enhancement"]["md"]).read_text()
    assert md.count("| missing") >= 2 * 10
    for r in html_refs(result["html"]):
        assert (result["out_dir"] / r).is_file()
