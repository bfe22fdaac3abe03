"""The per-study Optuna searcher on a real SQLite storage, driven as Tune drives it."""


import pytest
from optuna.trial import TrialState

from sweeps.searcher import ATTR_STATUS, StudySearcher, open_study
from sweeps.space import SEARCH_SPACES_DIR, parse_space
import yaml


@pytest.fixture
def space():
    raw = yaml.safe_load((SEARCH_SPACES_DIR / "demo.yaml").read_text())
    raw.update(scales=["demo-xs"], arms=["baseline", "calibration"])
    raw["search"]["trials_per_study"] = 2
    return parse_space(raw, "demo.yaml")


def _study(url, name):
    return open_study(url, "sw", name)


def test_round_robin_budget_and_conditional_smoothing(tmp_path, space):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    s = StudySearcher(space, "sw", url)
    configs = [s.suggest(f"t{i}") for i in range(4)]
    assert [c["study"] for c in configs] == ["demo-xs/baseline", "demo-xs/calibration"] * 2
    assert all(("smoothing" in c) == (c["arm"] == "calibration") for c in configs)
    assert s.suggest("t4") == "FINISHED"  # every study used its budget


def test_states_told_to_optuna(tmp_path, space):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    s = StudySearcher(space, "sw", url)
    for i in range(4):
        s.suggest(f"t{i}")
    s.on_trial_result("t0", {"step": 4, "val_ppl": 30.0})
    s.on_trial_result("t0", {"step": 8, "val_ppl": 25.0})
    s.on_trial_complete("t0", {"step": 8, "val_ppl": 25.0, "best_val_ppl": 25.0, "best_step": 8, "done_training": True})
    # stopped by ASHA at its first rung: Tune hands that result to on_trial_complete only
    s.on_trial_complete("t1", {"step": 4, "val_ppl": 40.0, "done_training": False})
    s.on_trial_complete("t2", {"step": 1, "val_ppl": float("inf"), "diverged": True})
    s.on_trial_complete("t3", None, error=True)
    base = _study(url, "demo-xs/baseline").get_trials()
    cal = _study(url, "demo-xs/calibration").get_trials()
    done, diverged = base
    pruned, failed = cal
    assert done.state == TrialState.COMPLETE and done.value == 25.0 and done.intermediate_values == {4: 30.0, 8: 25.0}
    assert pruned.state == TrialState.PRUNED and pruned.intermediate_values == {4: 40.0}
    assert pruned.user_attrs[ATTR_STATUS] == "stopped_early"
    assert diverged.state == TrialState.FAIL and diverged.user_attrs[ATTR_STATUS] == "diverged"
    assert diverged.user_attrs["step"] == 1
    assert failed.state == TrialState.FAIL and failed.user_attrs[ATTR_STATUS] == "failed"


def test_restore_after_driver_kill(tmp_path, space):
    """State saved before the last events: replays are harmless, orphans are failed."""
    url = f"sqlite:///{tmp_path / 'o.db'}"
    s = StudySearcher(space, "sw", url)
    s.suggest("t0")
    s.suggest("t1")
    s.save(str(tmp_path / "state.pkl"))  # Tune's last experiment checkpoint
    s.on_trial_complete("t0", {"step": 8, "val_ppl": 20.0, "best_val_ppl": 20.0, "done_training": True})
    s.suggest("t2")  # asked in Optuna, then the driver dies before Tune saves the trial

    restored = StudySearcher(space, "sw", url)
    restored.restore(str(tmp_path / "state.pkl"))
    # Tune restarts t0 (it was RUNNING in its saved state); the finished run replays its end.
    restored.on_trial_result("t0", {"step": 8, "val_ppl": 20.0})
    restored.on_trial_complete("t0", {"step": 8, "val_ppl": 20.0, "best_val_ppl": 20.0, "done_training": True})
    base = _study(url, "demo-xs/baseline").get_trials()
    assert base[0].state == TrialState.COMPLETE and base[0].value == 20.0
    orphan = base[1]
    assert orphan.state == TrialState.FAIL and orphan.user_attrs[ATTR_STATUS] == "orphaned"
    # the orphan does not use budget: the restored searcher still owes each study its trials
    assert restored.assigned == {"demo-xs/baseline": 1, "demo-xs/calibration": 1}
