"""What every tracker records of a trial: the curves of a real training row, against its step; names,
tags, the final metrics by state, the run files, the UI command."""

from __future__ import annotations

import math

from kdsweep.distill.run.rundir import CONFIG_NAME, LOG_NAME, STUDENT_DIR, SUMMARY_NAME
from kdsweep.distill.run.train import run_training
from kdsweep.sweeps.layout import SweepDir
from kdsweep.sweeps.study import COMPLETED, DIVERGED, FAILED, STOPPED_EARLY
from kdsweep.sweeps.tracking import (
    CURVES,
    FINAL_MIN_SEEN,
    FINAL_OBJECTIVE,
    FINAL_STEP,
    FINAL_VAL_PPL,
    NOT_CURVES,
    final_metrics,
    run_files,
    run_name,
    run_params,
    run_tags,
    scalars,
    tensorboard_run,
    tracker_hint,
)
from tests.fixtures import tiny_config

# What Tune adds to every reported result (ray.tune.result.AUTO_RESULT_KEYS and friends).
TUNE_BOOKKEEPING = {"done": False, "training_iteration": 3, "iterations_since_restore": 3, "time_this_iter_s": 0.5,
                    "time_total_s": 9.1, "time_since_restore": 9.1, "timestamp": 1795264000, "pid": 4242,
                    "trial_id": "a1b2c3d4", "date": "2026-11-21_12-00-00", "hostname": "vm", "node_ip": "10.0.0.1",
                    "checkpoint_dir_name": "checkpoint_000002", "should_checkpoint": True}


def test_every_key_of_a_training_row_is_a_curve_or_known_not_to_be(tmp_path, char_teacher, small_fasta):
    rows = []
    run_training(tiny_config(char_teacher, small_fasta, tmp_path / "run"), report=rows.append,
                 log=lambda _: None)
    assert [r["step"] for r in rows] == [3, 6]
    for row in rows:  # a metric added to the loop must be sorted here, or trackers silently miss it
        assert set(row) == set(CURVES) | set(NOT_CURVES)
        step, values = scalars({**row, **TUNE_BOOKKEEPING})
        assert step == row["step"] and set(values) == set(CURVES)
        assert values == {k: float(row[k]) for k in CURVES}


def test_non_finite_values_and_rows_without_a_step_are_left_out():
    diverged = {"event": "diverged", "step": 7, "val_ppl": math.inf, "best_val_ppl": 30.0, "diverged": True,
                "done_training": False, "grad_norm": math.nan}
    assert scalars(diverged) == (7, {})  # the lowest val_ppl seen is no curve (final/min_val_ppl_seen)
    assert scalars({"val_ppl": 20.0, **TUNE_BOOKKEEPING}) is None


def test_run_names_tags_and_params(tmp_path):
    search = {"study": "demo-s/both", "scale": "demo-s", "arm": "both", "optuna_number": 4, "lr": 3e-3, "alpha": 0.5}
    resolved = {"lr": 3e-3, "alpha": 0.5, "max_steps": 40, "n_layer": 2, "seed": 0, "teacher": "demo"}
    assert run_name(search, "9f2c1e07") == "demo-s_both_4_9f2c1e07"
    assert run_tags(search, "9f2c1e07", "demo") == {"sweep": "demo", "kind": "search", "study": "demo-s/both",
                                                     "scale": "demo-s", "arm": "both", "trial_id": "9f2c1e07"}
    assert run_params(search, resolved) == {"optuna_number": 4, **resolved}
    replicate = {**search, "replicate_seed": 2}
    assert run_name(replicate, "61f48_00001") == "demo-s_both_4_seed2_61f48_00001"
    assert run_tags(replicate, "61f48_00001", "demo")["replicate_seed"] == "2"
    assert run_tags(replicate, "61f48_00001", "demo")["kind"] == "replicates"
    assert run_params(replicate, resolved) == {"optuna_number": 4, "replicate_seed": 2, **resolved}
    sd = SweepDir(tmp_path / "demo")
    assert tensorboard_run(sd, search, "9f2c1e07") == sd.tensorboard / "search" / "demo-s_both_4_9f2c1e07"
    assert tensorboard_run(sd, replicate, "x_1") == sd.tensorboard / "replicates" / "demo-s_both_4_seed2_x_1"


def test_final_metrics_name_the_objective_only_for_a_completed_trial():
    last = {"step": 16, "val_ppl": 19.04, "best_val_ppl": 19.01}
    assert final_metrics(last, COMPLETED) == {FINAL_VAL_PPL: 19.04, FINAL_OBJECTIVE: 19.04, FINAL_MIN_SEEN: 19.01,
                                              FINAL_STEP: 16.0}
    assert final_metrics({**last, "step": 4}, STOPPED_EARLY) == {FINAL_VAL_PPL: 19.04, FINAL_MIN_SEEN: 19.01,
                                                                 FINAL_STEP: 4.0}
    assert final_metrics({**last, "val_ppl": math.inf}, DIVERGED) == {FINAL_MIN_SEEN: 19.01, FINAL_STEP: 16.0}
    assert final_metrics(None, FAILED) == {}


def test_run_files_and_the_tracker_ui_command(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / STUDENT_DIR).mkdir(parents=True)
    for name in (CONFIG_NAME, SUMMARY_NAME, LOG_NAME):
        (run / name).write_text("{}")
    assert run_files(run) == [run / CONFIG_NAME, run / SUMMARY_NAME, run / LOG_NAME]
    assert run_files(run, student=True)[-1] == run / STUDENT_DIR
    assert run_files(tmp_path / "nothing") == []
    sd = SweepDir(tmp_path / "demo")
    tracking = {"tracker": "mlflow", "mlflow_uri": None, "wandb_project": "kdsweep"}
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracker_hint(tracking, sd)[0] == f"mlflow ui --backend-store-uri sqlite:///{sd.mlflow_db}"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert tracker_hint({**tracking, "tracker": "wandb"}, sd)[0] == f"wandb sync {sd.wandb}/offline-run-*"
    assert tracker_hint({**tracking, "tracker": None}, sd) is None
