"""The training report row: `TrainReport` reads and writes it, and alone says how its run stands."""

from __future__ import annotations

import math

from kdsweep.distill.run.rundir import COMPLETED, DIVERGED, STOPPED_EARLY, TrainReport
from kdsweep.distill.run.train import run_training
from tests.fixtures import tiny_config

# What Tune adds to a reported row (a few of ray.tune.result.AUTO_RESULT_KEYS).
TUNE_KEYS = {"training_iteration": 3, "time_total_s": 9.1, "trial_id": "a1b2c3d4", "done": False}


def test_a_real_runs_rows_round_trip_and_its_last_row_says_completed(tmp_path, char_teacher, small_fasta):
    rows = []
    run_training(tiny_config(char_teacher, small_fasta, tmp_path / "run"), report=rows.append, log=lambda _: None)
    reports = [TrainReport.from_row(r) for r in rows]
    assert [r.to_row() for r in reports] == rows
    assert [(r.step, r.ended_as) for r in reports] == [(3, STOPPED_EARLY), (6, COMPLETED)]
    assert reports[-1].val_ppl == rows[-1]["val_ppl"] and reports[-1].best_step == rows[-1]["best_step"]
    assert "diverged" not in rows[-1]  # an eval row carries no divergence flag


def test_a_diverged_runs_report_says_diverged(tmp_path, char_teacher, small_fasta):
    rows = []
    cfg = tiny_config(char_teacher, small_fasta, tmp_path / "run", inject_nan_at_step=4)
    run_training(cfg, report=rows.append, log=lambda _: None)
    last = TrainReport.from_row(rows[-1])
    assert (last.ended_as, last.step, last.val_ppl, last.done_training) == (DIVERGED, 4, math.inf, False)
    assert last.extra == {"event": DIVERGED, "status": DIVERGED}
    assert last.to_row() == rows[-1]


def test_tune_bookkeeping_and_missing_rows():
    report = TrainReport.from_row({"step": 8, "val_ppl": 20.0, "done_training": True, **TUNE_KEYS})
    assert report.ended_as == COMPLETED and report.extra == TUNE_KEYS
    assert report.to_row() == {"step": 8, "val_ppl": 20.0, "done_training": True, **TUNE_KEYS}
    # a trial ended before it reported anything: no row, stopped at no step
    assert TrainReport.from_row(None) == TrainReport.from_row({}) == TrainReport()
    assert TrainReport().ended_as == STOPPED_EARLY and TrainReport().to_row() == {"done_training": False}
