"""PerStudyASHA on real Tune trial objects: studies apart, a final report is never stopped,
and `search.early_stopping: false` stops nothing."""

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from kdsweep.sweeps.runner import scheduler_for
from kdsweep.sweeps.scheduler import PerStudyASHA
from kdsweep.sweeps.space import SEARCH_SPACES_DIR, load_space, parse_space


def _trials(study: str, n: int) -> list[Trial]:
    return [Trial("__fake", config={"study": study}, stub=True) for _ in range(n)]


def test_a_trial_is_never_stopped_on_its_final_report():
    """max_t = grace * rf^k puts a rung at the last step: a bad trial reaching it would be
    "stopped" after its budget is spent, before its run could save its student."""
    asha = PerStudyASHA(["s"], max_t=4, grace_period=1, reduction_factor=2)  # rungs 1, 2, 4
    good, bad = _trials("s", 2)
    for t in (good, bad):
        asha.on_trial_add(None, t)
    for step in (1, 2, 4):
        assert asha.on_trial_result(None, good, {"step": step, "val_ppl": 1.0, "done_training": step == 4}) == "CONTINUE"
    # the same bad value: stopped mid-way, but not at its final report
    late = _trials("s", 1)[0]
    asha.on_trial_add(None, late)
    assert asha.on_trial_result(None, late, {"step": 2, "val_ppl": 9.0, "done_training": False}) == TrialScheduler.STOP
    assert asha.on_trial_result(None, bad, {"step": 4, "val_ppl": 9.0, "done_training": True}) == TrialScheduler.CONTINUE


def test_studies_do_not_compete():
    asha = PerStudyASHA(["a", "b"], max_t=8, grace_period=1, reduction_factor=2)
    [a] = _trials("a", 1)
    [b] = _trials("b", 1)
    for t in (a, b):
        asha.on_trial_add(None, t)
    assert asha.on_trial_result(None, a, {"step": 1, "val_ppl": 1.0}) == "CONTINUE"
    # b is far worse than a, but alone in its own study: nothing to compare with
    assert asha.on_trial_result(None, b, {"step": 1, "val_ppl": 100.0}) == "CONTINUE"


def test_diverged_is_stopped():
    asha = PerStudyASHA(["a"], max_t=8, grace_period=4, reduction_factor=2)
    [a] = _trials("a", 1)
    asha.on_trial_add(None, a)
    assert asha.on_trial_result(None, a, {"step": 1, "val_ppl": float("inf"), "diverged": True}) == TrialScheduler.STOP


@pytest.mark.parametrize("early_stopping", [True, False])
def test_early_stopping_switch(early_stopping):
    raw = load_space(SEARCH_SPACES_DIR / "demo.yaml").raw
    space = parse_space({**raw, "search": {**raw["search"], "early_stopping": early_stopping}}, "demo.yaml")
    scheduler = scheduler_for(space)
    assert isinstance(scheduler, PerStudyASHA) == early_stopping
    good, bad = _trials(space.studies[0].name, 2)
    for t in (good, bad):
        scheduler.on_trial_add(None, t)
    grace = space.search["grace_period"]  # the demo's first rung, before its 40-step budget
    assert scheduler.on_trial_result(None, good, {"step": grace, "val_ppl": 1.0}) == TrialScheduler.CONTINUE
    verdict = scheduler.on_trial_result(None, bad, {"step": grace, "val_ppl": 9.0})
    assert verdict == (TrialScheduler.STOP if early_stopping else TrialScheduler.CONTINUE)
