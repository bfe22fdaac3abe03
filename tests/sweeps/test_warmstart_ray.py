"""A warm-started sweep end to end on a real embedded Ray: demo-xs, then demo-s seeded from it."""

import pytest
from optuna.trial import TrialState

from kdsweep.sweeps.layout import SweepDir
from kdsweep.sweeps.study import open_study
from kdsweep.sweeps.warmstart import ATTR_WARM, ATTR_WARM_LR, MUP, SAME, top_configs
from tests.fixtures import ray_subprocess_env, run_kdsweep, write_small_space

pytestmark = pytest.mark.ray


def test_warm_started_sweep_runs_and_reports(tmp_path, small_fasta, char_teacher):
    space = write_small_space(tmp_path, "warm", small_fasta, char_teacher, scales=["demo-xs", "demo-s"],
                              arms=["both"], train={"max_steps": 8},
                              search={"trials_per_study": 3, "max_concurrent": 2, "early_stopping": False,
                                      "warm_start": "previous_scale", "warm_start_top_k": 1})
    store = tmp_path / "store"
    with ray_subprocess_env() as env:
        run_kdsweep(["sweep", "run", str(space), "--storage", str(store)], env)
        p = run_kdsweep(["analyze", "warm", "--storage", str(store)], env)
    sd = SweepDir(store / "warm")
    small = open_study(sd.storage_url(), "warm", "demo-xs/both").get_trials()
    big = open_study(sd.storage_url(), "warm", "demo-s/both").get_trials()
    assert all(t.state == TrialState.COMPLETE for t in small + big) and len(big) == 3
    # every demo-s trial started after the last demo-xs trial ended (scales run smallest first)
    assert min(t.datetime_start for t in big) >= max(t.datetime_complete for t in small)
    (best,) = top_configs(small, 1)
    assert [t.user_attrs.get(ATTR_WARM_LR) for t in big] == [MUP, SAME, None]
    assert big[0].user_attrs[ATTR_WARM] == f"warm:demo-xs/both#{best.number}"
    assert big[0].params["lr"] == pytest.approx(max(best.params["lr"] * 32 / 64, 1e-3))  # clipped to the range
    assert big[1].params["lr"] == pytest.approx(best.params["lr"])
    assert "transfer: both:" in p.stdout
