"""The transfer table and plot (analysis/transfer.py): the exponent fit with a known truth, and a
warm-started sweep made by driving the real searcher on SQLite (no Ray, no training)."""

import math

import numpy as np
import pandas as pd
import pytest
import yaml

from kdsweep.analysis.load import trials_frame
from kdsweep.analysis.plots import plot_transfer
from kdsweep.analysis.report import analyze, summary_lines
from kdsweep.analysis.transfer import loglog_fit, transfer_sentence, transfer_table
from kdsweep.sweeps.layout import SweepDir
from kdsweep.sweeps.space import SEARCH_SPACES_DIR, parse_space
from tests.fixtures import searched_sweep


def test_loglog_fit_exact_and_without_interval():
    fit = loglog_fit([32, 64, 128], [4e-3, 2e-3, 1e-3], interval=False)
    assert fit.b == pytest.approx(-1.0) and math.isnan(fit.lo) and fit.n == 3
    assert math.isnan(loglog_fit([32, 32], [1e-3, 2e-3], interval=True).b)  # one width: no slope
    assert loglog_fit([32, 64, 128], [0, 2e-3, 1e-3], interval=False).n == 2  # warmup 0 has no log


def test_loglog_interval_covers_the_true_exponent():
    """3 widths x 3 search replicates, log-normal search noise: the 95 % interval holds the true b ~95 %."""
    rng = np.random.default_rng(0)
    widths = np.repeat([32.0, 64.0, 128.0], 3)
    hits, sims = 0, 2000
    for _ in range(sims):
        values = 0.1 * widths ** -1.0 * np.exp(rng.normal(0, 0.4, widths.size))
        fit = loglog_fit(widths, values, interval=True)
        hits += fit.lo <= -1.0 <= fit.hi
    assert 0.93 <= hits / sims <= 0.97, hits / sims


def _warm_sweep(tmp_path, mup_wins: bool) -> SweepDir:
    """A finished 2-scale baseline sweep with warm start: demo-xs's best lr 4e-3; demo-s tries it halved
    (mup) and unchanged (same), then one TPE trial; `mup_wins` says which ends best."""
    raw = yaml.safe_load((SEARCH_SPACES_DIR / "demo.yaml").read_text())
    raw.update(name="warm", scales=["demo-xs", "demo-s"], arms=["baseline"])
    del raw["params"]["smoothing"]
    raw["search"].update(trials_per_study=3, max_concurrent=3, warm_start="previous_scale", warm_start_top_k=1)
    sd, s = searched_sweep(tmp_path, parse_space(raw, "warm.yaml"))
    for i in range(3):
        s.suggest(f"x{i}")
    for i, value in enumerate((30.0, 20.0, 25.0)):
        s.on_trial_complete(f"x{i}", {"step": 40, "val_ppl": value, "done_training": True})
    for i, value in enumerate((18.0, 19.0, 22.0) if mup_wins else (19.0, 18.0, 22.0)):
        s.suggest(f"s{i}")
        s.on_trial_complete(f"s{i}", {"step": 40, "val_ppl": value, "done_training": True})
    return sd


def test_trials_frame_marks_the_seeds(tmp_path):
    trials = trials_frame(_warm_sweep(tmp_path, mup_wins=True))
    big = trials[trials["scale"] == "demo-s"]
    assert list(big["warm_start_lr"]) == ["mup", "same", ""]
    assert list(big["warm_start"])[:2] == ["warm:demo-xs/baseline#1"] * 2
    assert (trials[trials["scale"] == "demo-xs"]["warm_start"] == "").all()


@pytest.mark.parametrize("mup_wins", [True, False])
def test_transfer_table_and_sentence(tmp_path, mup_wins):
    trials = trials_frame(_warm_sweep(tmp_path, mup_wins))
    small_lr = float(trials[(trials["scale"] == "demo-xs") & (trials["val_ppl"] == 20.0)]["lr"].iloc[0])
    t = transfer_table(trials, ["demo-s", "demo-xs"], ["baseline"])
    big = t.data.set_index("scale").loc["demo-s"]
    assert big["best_seed_rank"] == 1 and big["best_seed_lr"] == ("mup" if mup_wins else "same")
    assert big["lr"] == pytest.approx(small_lr / 2 if mup_wins else small_lr)
    assert [r[1] for r in t.rows] == ["demo-xs", "demo-s", "fitted exponent"]  # by width
    # the chosen lr halved from d=32 to d=64: exponent -1 exactly (mup), else 0
    assert t.rows[2][3].startswith("d^-1 (n=2)" if mup_wins else "d^0 (n=2)")
    sentence = transfer_sentence(t.data, "baseline")
    assert sentence.startswith("baseline: the optimum transferred: at every warm-started study (1)")
    assert "demo-s 1 of 3" in sentence and sentence in t.notes


def test_not_transferred_and_cold(tmp_path):
    trials = trials_frame(_warm_sweep(tmp_path, mup_wins=True))
    seeds = trials["warm_start"] != ""
    worse = trials.assign(val_ppl=trials["val_ppl"].where(~seeds, 50.0))  # both seeds end last
    t = transfer_table(worse, ["demo-xs", "demo-s"], ["baseline"])
    assert t.data.set_index("scale").loc["demo-s", "best_seed_rank"] == 2  # behind the TPE trial, ties share
    assert "did not transfer" in transfer_sentence(t.data, "baseline")
    cold = trials.assign(warm_start="")
    assert "not tested, no study was warm-started" in transfer_sentence(
        transfer_table(cold, ["demo-xs", "demo-s"], ["baseline"]).data, "baseline")


def test_plot_and_report(tmp_path):
    sd = _warm_sweep(tmp_path, mup_wins=True)
    trials = trials_frame(sd)
    plot = plot_transfer(trials, ["demo-xs", "demo-s"], ["baseline"], tmp_path / "t.png")
    assert plot.path.stat().st_size > 1000
    result = analyze(sd, tmp_path / "out")
    assert pd.read_csv(result["tables"]["transfer"]["csv"])["best_seed_rank"].tolist()[1] == 1
    assert "transfer" in result["plots"]
    assert any(line.startswith("  transfer: baseline: the optimum transferred") for line in summary_lines(result))
    assert "the optimum transferred" in result["html"].read_text()
