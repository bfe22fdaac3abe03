"""Warm start across scales (search.warm_start, --warm-start-from) on real Optuna studies in SQLite,
the searcher driven as Tune drives it."""

import pickle

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from kdsweep.cli import main
from kdsweep.distill.errors import ConfigError
from kdsweep.sweeps.layout import SweepDir
from kdsweep.sweeps.searcher import StudySearcher
from kdsweep.sweeps.space import SEARCH_SPACES_DIR, parse_space
from kdsweep.sweeps.study import open_study, optuna_distribution
from kdsweep.sweeps.warmstart import (
    ATTR_WARM,
    ATTR_WARM_LR,
    MUP,
    SAME,
    WarmSource,
    external_sources,
    mup_lr,
    seeds,
    width,
)
from kdsweep.sweeps.status import sweep_status
from tests.fixtures import searched_sweep, write_finished_sweep


def _raw(**search):
    raw = yaml.safe_load((SEARCH_SPACES_DIR / "demo.yaml").read_text())
    raw.update(scales=["demo-s", "demo-xs"], arms=["baseline"])  # listed largest first on purpose
    del raw["params"]["smoothing"]
    raw["params"]["lr"]["low"] = 1e-4  # room below the demo's lrs for the rescaled ones
    raw["search"].update(trials_per_study=3, max_concurrent=4, **search)
    return raw


def _space(**search):
    return parse_space(_raw(**search), "demo.yaml")


def _finish(searcher, trial_id, value):
    searcher.on_trial_complete(trial_id, {"step": 40, "val_ppl": value, "done_training": True})


def _run_small_scale(searcher):
    """Hand out and finish the demo-xs study's 3 trials (values 30, 20, 25): trial 1 is its best."""
    configs = [searcher.suggest(f"t{i}") for i in range(3)]
    assert [c["scale"] for c in configs] == ["demo-xs"] * 3  # smallest width first, whatever the listed order
    assert searcher.suggest("t3") is None  # demo-s waits until demo-xs has ended
    for i, value in enumerate((30.0, 20.0, 25.0)):
        _finish(searcher, f"t{i}", value)
    return configs


def test_bad_values_refused():
    for search, key in (({"warm_start": "previous"}, "search.warm_start"), ({"warm_start_top_k": 0}, "search.warm_start_top_k"),
                        ({"warm_start_top_k": "2"}, "search.warm_start_top_k"), ({"warm_start_top_k": 101}, "search.warm_start_top_k")):
        with pytest.raises(ConfigError) as e:
            _space(**search)
        assert any(p.startswith(f"{key}: got") for p in e.value.problems), e.value.problems
    assert _space().search["warm_start"] == "none" and _space().search["warm_start_top_k"] == 2


def test_bad_values_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_raw(warm_start="scale")))
    assert main(["sweep", "run", str(bad), "--storage", str(tmp_path / "store")]) == 2
    assert "search.warm_start: got 'scale', allowed: none, previous_scale" in capsys.readouterr().err
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(_raw()))
    assert main(["sweep", "run", str(good), "--storage", str(tmp_path / "store"), "--warm-start-from", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "store" / "demo").exists()  # nothing written


def test_larger_scale_first_tries_smaller_scales_best_rescaled(tmp_path):
    space = _space(warm_start="previous_scale", warm_start_top_k=1)
    url = f"sqlite:///{tmp_path / 'o.db'}"
    s = StudySearcher(space, SweepDir(tmp_path / "sw"), url)
    small = _run_small_scale(s)
    best = small[1]
    first, second, third = (s.suggest(f"t{i}") for i in (3, 4, 5))
    assert first["scale"] == second["scale"] == third["scale"] == "demo-s"
    assert (width("demo-xs"), width("demo-s")) == (32, 64)
    # μTransfer: lr * d_prev / d_this = lr / 2; then the same lr unscaled; the other params carried over
    assert first["lr"] == pytest.approx(best["lr"] * 32 / 64) and second["lr"] == pytest.approx(best["lr"])
    for key in ("warmup_steps", "temperature", "alpha"):
        assert first[key] == second[key] == best[key]
    trials = open_study(url, "sw", "demo-s/baseline").get_trials()
    assert [t.user_attrs.get(ATTR_WARM_LR) for t in trials] == [MUP, SAME, None]  # then TPE
    assert trials[0].user_attrs[ATTR_WARM] == f"sw:demo-xs/baseline#{1}"
    assert ATTR_WARM not in trials[2].user_attrs


def test_resume_keeps_the_enqueued_state(tmp_path):
    space = _space(warm_start="previous_scale", warm_start_top_k=2)
    url = f"sqlite:///{tmp_path / 'o.db'}"
    s = StudySearcher(space, SweepDir(tmp_path / "sw"), url)
    _run_small_scale(s)
    first = s.suggest("t3")  # enqueues 3 seeds (top-2 x 2 lrs, capped at the budget of 3), asks the first
    # a driver killed here; a resumed driver's searcher (Tune unpickles it) reads the storage again
    again = pickle.loads(pickle.dumps(s))
    again.restore("unused")
    assert again.assigned["demo-s/baseline"] == 1  # WAITING seeds are not handed out yet
    rest = [again.suggest(f"t{i}") for i in (4, 5)]
    assert again.suggest("t6") == "FINISHED"
    trials = open_study(url, "sw", "demo-s/baseline").get_trials()
    assert len(trials) == 3 and all(t.state == TrialState.RUNNING for t in trials)
    assert [t.user_attrs[ATTR_WARM_LR] for t in trials] == [MUP, SAME, MUP]
    assert [t.user_attrs[ATTR_WARM] for t in trials] == ["sw:demo-xs/baseline#1"] * 2 + ["sw:demo-xs/baseline#2"]
    assert len({c["lr"] for c in [first, *rest]}) == 3


def test_status_counts_seeds_not_handed_out_as_pending(tmp_path):
    sd, s = searched_sweep(tmp_path, parse_space({**_raw(warm_start="previous_scale"), "name": "sw"}, "demo.yaml"))
    _run_small_scale(s)
    s.suggest("t3")  # 3 seeds enqueued, the first handed out
    rows = {r["study"]: r for r in sweep_status(sd)}
    assert (rows["demo-s/baseline"]["running"], rows["demo-s/baseline"]["pending"]) == (1, 2)
    assert (rows["demo-xs/baseline"]["completed"], rows["demo-xs/baseline"]["pending"]) == (3, 0)


def test_seeds_clip_dedupe_and_cap():
    space = _space()
    study = space.study("demo-s/baseline")
    trials = open_study("sqlite:///:memory:", "x", "demo-xs/baseline")
    trials.add_trial(optuna.trial.create_trial(
        value=10.0, params={"lr": 1.5e-4, "warmup_steps": 1, "temperature": 2.0, "alpha": 0.5},
        distributions={k: optuna_distribution(d) for k, d in study.params.items()}))
    low = study.params["lr"].low
    out = seeds(WarmSource("x", "", "demo-xs/baseline", "demo-xs"), trials.get_trials(), study, k=2, budget=5)
    # 1.5e-4 / 2 is below the range's low 1e-4: clipped into it
    assert [s.params["lr"] for s in out] == [low, 1.5e-4]
    same_width = seeds(WarmSource("x", "", "demo-s/baseline", "demo-s"), trials.get_trials(), study, k=2, budget=5)
    assert len(same_width) == 1  # equal widths: one config, not two copies
    assert seeds(WarmSource("x", "", "demo-xs/baseline", "demo-xs"), trials.get_trials(), study, k=2, budget=1) \
        == out[:1]
    assert mup_lr(1e-3, 256, 1024) == pytest.approx(2.5e-4)


def test_warm_start_from_an_earlier_sweep(tmp_path):
    other = write_finished_sweep(tmp_path)  # sweep "norays": demo-xs/baseline, one completed trial
    sources = external_sources(_space(), other)
    assert set(sources) == {"demo-xs/baseline", "demo-s/baseline"}
    assert sources["demo-s/baseline"].study == "demo-xs/baseline"
    # with previous_scale, only the smallest scale seeds from the other sweep
    assert set(external_sources(_space(warm_start="previous_scale"), other)) == {"demo-xs/baseline"}
    s = StudySearcher(_space(), SweepDir(tmp_path / "sw"), f"sqlite:///{tmp_path / 'o.db'}",
                      warm_start_from=sources)
    first = {c["scale"]: c["lr"] for c in (s.suggest(f"t{i}") for i in range(2))}  # one per study, no waiting
    assert first == {"demo-xs": 3e-3, "demo-s": pytest.approx(1.5e-3)}  # the same width unscaled; 32 -> 64 halved
    raw = _raw()
    raw["arms"] = ["uncertainty"]
    with pytest.raises(ConfigError, match="--warm-start-from: sweep 'norays' has no study of arms uncertainty"):
        external_sources(parse_space(raw, "demo.yaml"), other)
