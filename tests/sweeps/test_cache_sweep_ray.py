"""A real sweep (local Ray, `local` executor) whose trials read the teacher cache, against the same sweep with
the live teacher: built once as a Ray task, read by every trial, same results to float rounding."""

from __future__ import annotations

import pytest

from kdsweep.distill.run.rundir import eval_rows
from kdsweep.distill.teacher.cache import read_manifest
from kdsweep.sweeps.layout import SweepDir
from kdsweep.sweeps.study import ATTR_TRIAL, open_study
from tests.fixtures import ray_subprocess_env, run_kdsweep, start_row, write_small_space

pytestmark = pytest.mark.ray
STUDIES = ("demo-xs/baseline", "demo-xs/both")


def _space(tmp_path, name, data, teacher, cache):
    # Sequential trials with random (seeded) proposals: both sweeps try the same configs in the same order,
    # and ASHA sees the same results in the same order.
    return write_small_space(tmp_path, name, data, teacher, cache=cache, train={"max_steps": 8, "eval_interval": 4},
                             search={"trials_per_study": 2, "startup_trials": 2, "max_concurrent": 1,
                                     "grace_period": 4})


def _trials(sd: SweepDir) -> dict[tuple, dict]:
    """{(study, sorted params): {value, run folder}} of every trial of a sweep."""
    out = {}
    for study in STUDIES:
        for t in open_study(sd.storage_url(), sd.name, study).get_trials(deepcopy=False):
            out[(study, tuple(sorted(t.params.items())))] = {"value": t.value, "state": t.state.name,
                                                              "run": sd.runs / t.user_attrs[ATTR_TRIAL]}
    return out


def test_sweep_with_the_cache_equals_the_live_teacher_sweep(tmp_path, small_fasta, char_teacher):
    store = tmp_path / "store"
    with ray_subprocess_env() as env:
        p = run_kdsweep(["sweep", "run", str(_space(tmp_path, "cached", small_fasta, char_teacher, {})),
                      "--storage", str(store)], env)
    assert "teacher cache: 32 blocks × 128 tokens × 32 dims × 4 B" in p.stdout  # 8 steps x 4 blocks
    assert "building as a Ray task (1 CPU, 0 GPU)" in p.stdout
    with ray_subprocess_env() as env:
        run_kdsweep(["sweep", "run", str(_space(tmp_path, "live", small_fasta, char_teacher, {"enabled": False})),
                  "--storage", str(store)], env)

    cached_sd, live_sd = SweepDir(store / "cached"), SweepDir(store / "live")
    cache = cached_sd.meta().teacher_cache
    assert live_sd.meta().teacher_cache is None
    assert cache.startswith(str(store / "teacher_cache")) and read_manifest(cache)["train"]["n_blocks"] == 32
    digest = read_manifest(cache)["key_digest"]
    cached, live = _trials(cached_sd), _trials(live_sd)
    assert cached.keys() == live.keys() and len(cached) == 4
    for key, c in cached.items():
        start = start_row(c["run"])
        assert start["teacher"] == f"cache {digest} {cache}"  # the trial never loaded the teacher's weights
        assert start_row(live[key]["run"])["teacher"] == f"live {char_teacher}"
        assert c["state"] == live[key]["state"]
        if c["value"] is not None:
            assert c["value"] == pytest.approx(live[key]["value"], rel=1e-5)
        rows_c, rows_l = eval_rows(c["run"]), eval_rows(live[key]["run"])
        assert [r["step"] for r in rows_c] == [r["step"] for r in rows_l]
        for rc, rl in zip(rows_c, rows_l):
            assert rc["train_loss"] == pytest.approx(rl["train_loss"], rel=1e-5)
            assert rc["val_ppl"] == pytest.approx(rl["val_ppl"], rel=1e-5)
