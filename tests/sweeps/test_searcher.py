"""The per-study Optuna searcher on a real SQLite storage, driven as Tune drives it."""

import json
import math
import pickle

import pytest
import yaml
from optuna.trial import TrialState

from kdsweep.distill.errors import ConfigError
from kdsweep.distill.run.rundir import COMPLETED, RunResult, write_summary
from kdsweep.sweeps.layout import SweepDir
from kdsweep.sweeps.runner import run_sweep
from kdsweep.sweeps.searcher import StudySearcher, reconcile_with_tune, startup_trials
from kdsweep.sweeps.space import SEARCH_SPACES_DIR, parse_space
from kdsweep.sweeps.study import ATTR_STATUS, ORPHANED, open_study, trial_status


def _space(max_concurrent: int = 4):
    raw = yaml.safe_load((SEARCH_SPACES_DIR / "demo.yaml").read_text())
    raw.update(scales=["demo-xs"], arms=["baseline", "calibration"])
    raw["search"].update(trials_per_study=2, max_concurrent=max_concurrent)
    return parse_space(raw, "demo.yaml")


@pytest.fixture
def space():
    return _space()


def _study(url, name):
    return open_study(url, "sw", name)


def _searcher(tmp_path, space, url=None):
    return StudySearcher(space, SweepDir(tmp_path / "sw"), url or f"sqlite:///{tmp_path / 'o.db'}")


def test_round_robin_budget_and_conditional_smoothing(tmp_path, space):
    s = _searcher(tmp_path, space)
    configs = [s.suggest(f"t{i}") for i in range(4)]
    assert [c["study"] for c in configs] == ["demo-xs/baseline", "demo-xs/calibration"] * 2
    assert all(("smoothing" in c) == (c["arm"] == "calibration") for c in configs)
    assert s.suggest("t4") == "FINISHED"  # every study used its budget


def test_states_told_to_optuna(tmp_path, space):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    s = _searcher(tmp_path, space, url)
    for i in range(4):
        s.suggest(f"t{i}")
        (tmp_path / "sw" / "runs" / f"t{i}").mkdir(parents=True)  # the trials' run folders
    s.on_trial_result("t0", {"step": 4, "val_ppl": 24.0})
    s.on_trial_result("t0", {"step": 8, "val_ppl": 25.0})
    # the objective is the FINAL val_ppl (25), not the best one seen (24)
    s.on_trial_complete("t0", {"step": 8, "val_ppl": 25.0, "best_val_ppl": 24.0, "best_step": 4, "done_training": True})
    # stopped by ASHA at its first rung: Tune hands that result to on_trial_complete only
    s.on_trial_complete("t1", {"step": 4, "val_ppl": 40.0, "best_val_ppl": 40.0, "best_step": 4,
                               "done_training": False})
    s.on_trial_complete("t2", {"step": 1, "val_ppl": float("inf"), "diverged": True})
    s.on_trial_complete("t3", None, error=True)
    base = _study(url, "demo-xs/baseline").get_trials()
    cal = _study(url, "demo-xs/calibration").get_trials()
    done, diverged = base
    pruned, failed = cal
    assert done.state == TrialState.COMPLETE and done.value == 25.0 and done.intermediate_values == {4: 24.0, 8: 25.0}
    assert pruned.state == TrialState.PRUNED and pruned.intermediate_values == {4: 40.0}
    assert trial_status(pruned) == pruned.user_attrs[ATTR_STATUS] == "stopped_early"
    # the driver wrote the stopped trial's run summary (its process is ended without warning)
    summary = json.loads((tmp_path / "sw" / "runs" / "t1" / "metrics.json").read_text())
    assert summary["status"] == "stopped_early" and summary["step"] == 4 and summary["val_ppl"] == 40.0
    # diverged: PRUNED with +inf at the divergence step and a violated constraint, so TPE learns from it
    assert diverged.state == TrialState.PRUNED and diverged.intermediate_values == {1: math.inf}
    assert diverged.constraints == {"diverged": 1.0}
    assert trial_status(diverged) == "diverged" and diverged.user_attrs["step"] == 1
    assert failed.state == TrialState.FAIL and trial_status(failed) == "failed"
    assert not (tmp_path / "sw" / "runs" / "t3" / "metrics.json").exists()


def test_a_run_that_finished_first_is_told_completed(tmp_path, space):
    """ASHA's stop can race the run's own end: the run wrote its completed summary first, so
    Optuna must say completed too (run folder and Optuna never disagree)."""
    url = f"sqlite:///{tmp_path / 'o.db'}"
    s = _searcher(tmp_path, space, url)
    s.suggest("t0")
    run = tmp_path / "sw" / "runs" / "t0"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 8, "val_ppl": 21.5, "done_training": True}) + "\n")
    write_summary(RunResult(COMPLETED, 8, 21.0, 4, run, val_ppl=21.5))
    s.on_trial_complete("t0", {"step": 4, "val_ppl": 30.0, "best_val_ppl": 30.0, "best_step": 4,
                               "done_training": False})
    [t] = _study(url, "demo-xs/baseline").get_trials()
    assert t.state == TrialState.COMPLETE and t.value == 21.5 and trial_status(t) == "completed"
    assert json.loads((run / "metrics.json").read_text())["status"] == "completed"


def test_studies_are_named_and_described_for_the_dashboard(tmp_path, space):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    StudySearcher(space, SweepDir(tmp_path / "sw"), url, git_commit="abc123").suggest("t0")
    study = _study(url, "demo-xs/baseline")
    assert study.metric_names == ["val_ppl"]
    attrs = study.user_attrs
    assert (attrs["sweep"], attrs["scale"], attrs["arm"], attrs["git_commit"]) == ("sw", "demo-xs", "baseline", "abc123")
    assert attrs["search_space"]["params"]["lr"]["type"] == "loguniform"


def test_tpe_settings_and_a_resumed_study_does_not_replay_its_proposals(tmp_path):
    raw = yaml.safe_load((SEARCH_SPACES_DIR / "demo.yaml").read_text())
    raw.update(scales=["demo-xs"], arms=["baseline"])
    del raw["params"]["smoothing"]
    raw["search"].update(trials_per_study=6, max_concurrent=1)
    assert startup_trials(parse_space(raw, "demo.yaml")) == 2  # default: a third of the budget, not 10
    raw["search"]["startup_trials"] = 4
    space = parse_space(raw, "demo.yaml")
    url = f"sqlite:///{tmp_path / 'o.db'}"
    first = _searcher(tmp_path, space, url)
    proposals = []
    for i in range(2):
        proposals.append(first.suggest(f"t{i}"))
        first.on_trial_complete(f"t{i}", {"step": 8, "val_ppl": 20.0 + i, "done_training": True})
    sampler = first._study("demo-xs/baseline").sampler
    assert sampler._n_startup_trials == 4 and sampler._multivariate
    # The driver restarts while the study is still in its random start-up: a sampler re-created
    # with the first seed would propose t0's point again.
    again = _searcher(tmp_path, space, url).suggest("t2")
    params = space.studies[0].params
    assert all({k: again[k] for k in params} != {k: p[k] for k in params} for p in proposals)


def test_caps_trials_in_flight(tmp_path):
    s = _searcher(tmp_path, _space(max_concurrent=2))
    assert s.suggest("t0") and s.suggest("t1")
    assert s.suggest("t2") is None  # two in flight: Tune is told to ask again later
    s.on_trial_complete("t0", {"step": 8, "val_ppl": 20.0, "done_training": True})
    assert s.suggest("t2")["study"] == "demo-xs/baseline"


def test_restore_after_driver_kill(tmp_path, space):
    """Tune's snapshot and the searcher's are separate files and may disagree after a kill:
    the restored searcher reads the storage, settled against the trials Tune will resume."""
    url = f"sqlite:///{tmp_path / 'o.db'}"
    s = _searcher(tmp_path, space, url)
    pickled = pickle.dumps(s)  # Tune pickles the searcher with the experiment when it starts
    s.suggest("t0")
    s.suggest("t1")
    s.save(str(tmp_path / "state.json"))  # a searcher snapshot from before the events below
    s.on_trial_complete("t0", {"step": 8, "val_ppl": 20.0, "best_val_ppl": 20.0, "done_training": True})
    s.suggest("t2")  # asked in Optuna, then the driver dies before Tune's snapshot holds the trial

    # Tune's snapshot holds t0 (still running then) and t1: t2 can never finish.
    assert reconcile_with_tune(space, "sw", url, {"t0", "t1"}) == ["demo-xs/baseline#1"]
    restored = pickle.loads(pickled)
    restored.restore(str(tmp_path / "state.json"))
    # the orphan does not use budget; t1 is in flight; the stale snapshot file is not believed
    assert restored.assigned == {"demo-xs/baseline": 1, "demo-xs/calibration": 1}
    assert restored.live == {"t1": ("demo-xs/calibration", 0)}
    # Tune resumes t0; its finished run replays its end, which changes nothing.
    restored.on_trial_result("t0", {"step": 8, "val_ppl": 25.0})
    restored.on_trial_complete("t0", {"step": 8, "val_ppl": 25.0, "best_val_ppl": 25.0, "done_training": True})
    base = _study(url, "demo-xs/baseline").get_trials()
    assert base[0].state == TrialState.COMPLETE and base[0].value == 20.0
    assert base[1].state == TrialState.FAIL and base[1].user_attrs[ATTR_STATUS] == ORPHANED
    # the replacement goes to the study that lost a trial
    assert restored.suggest("t3")["study"] == "demo-xs/baseline"
    restored.on_trial_complete("t1", {"step": 4, "val_ppl": 40.0, "done_training": False})
    assert _study(url, "demo-xs/calibration").get_trials()[0].state == TrialState.PRUNED


def test_new_sweep_refuses_a_name_taken_in_a_shared_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    open_study(url, "demo", "demo-xs/baseline")  # an earlier sweep named "demo" in the same database
    space = _space()
    space.search["storage_url"] = url
    with pytest.raises(ConfigError, match="already holds studies of a sweep named 'demo'.*demo:demo-xs/baseline"):
        run_sweep(space, name="demo", storage=str(tmp_path / "runs"))
    assert not (tmp_path / "runs" / "demo").exists()  # nothing half-written
