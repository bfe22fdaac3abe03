"""What every tracker records of a trial: the curves of a real training row, against its step; names and tags."""

from __future__ import annotations

import math

from distill.train import run_training
from sweeps.tracking import CURVES, NOT_CURVES, run_name, run_params, run_tags, scalars
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
    assert scalars(diverged) == (7, {"best_val_ppl": 30.0})
    assert scalars({"val_ppl": 20.0, **TUNE_BOOKKEEPING}) is None


def test_run_names_tags_and_params():
    search = {"study": "demo-s/both", "scale": "demo-s", "arm": "both", "optuna_number": 4, "lr": 3e-3, "alpha": 0.5}
    assert run_name(search, "9f2c1e07") == "demo-s_both_4_9f2c1e07"
    assert run_tags(search, "9f2c1e07", "demo") == {"sweep": "demo", "study": "demo-s/both", "scale": "demo-s",
                                                     "arm": "both", "trial_id": "9f2c1e07"}
    assert run_params(search) == {"optuna_number": 4, "lr": 3e-3, "alpha": 0.5}
    replicate = {**search, "replicate_seed": 2}
    assert run_name(replicate, "61f48_00001") == "demo-s_both_4_seed2_61f48_00001"
    assert run_tags(replicate, "61f48_00001", "demo")["replicate_seed"] == "2"
    assert run_params(replicate) == {"optuna_number": 4, "replicate_seed": 2, "lr": 3e-3, "alpha": 0.5}
