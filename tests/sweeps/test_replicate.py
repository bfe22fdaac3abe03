"""What `sweep replicate` trains, without Ray: best configs per search replicate, seeds, and the matched
ablations (method §7: each enhancement switched off at the same config, same seeds)."""

from __future__ import annotations

import optuna
import pytest
import yaml

from kdsweep.sweeps.layout import SweepDir, SweepMeta, parse_replicate_name, replicate_name
from kdsweep.sweeps.replicate import replicate_specs
from kdsweep.sweeps.space import SEARCH_SPACES_DIR, load_space
from kdsweep.sweeps.study import ATTR_STATUS, ATTR_TRIAL, open_study, optuna_distribution
from kdsweep.sweeps.trial import trial_train_config


@pytest.fixture
def two_searches(tmp_path) -> SweepDir:
    """A finished sweep made without Ray: demo-xs x {baseline, both} x 2 search replicates, each study
    with one completed trial whose params differ per study."""
    sd = SweepDir(tmp_path / "two")
    sd.root.mkdir()
    raw = yaml.safe_load((SEARCH_SPACES_DIR / "demo.yaml").read_text())
    raw.update(name="two", scales=["demo-xs"], arms=["baseline", "both"], cache={"enabled": False})
    raw["search"]["search_replicates"] = 2
    sd.space.write_text(yaml.safe_dump(raw))
    sd.write_meta(SweepMeta(name="two", git_commit="test"))
    space = load_space(sd.space)
    for i, study in enumerate(space.studies):
        params = {"lr": 1e-3 * (i + 1), "warmup_steps": i, "temperature": 1.5 + i / 4, "alpha": 0.2 + i / 10,
                  **({"smoothing": 0.02 * (i + 1)} if study.smooths else {})}
        trial = optuna.trial.create_trial(value=20.0 - i, params=params,
                                          distributions={k: optuna_distribution(d) for k, d in study.params.items()},
                                          user_attrs={ATTR_TRIAL: f"t{i}", ATTR_STATUS: "completed"})
        open_study(sd.storage_url(create=True), "two", study.name).add_trial(trial)
    return sd


def test_specs_cover_every_search_replicate_with_its_own_seeds_and_ablate_each_enhancement(two_searches):
    space, specs = replicate_specs(two_searches, 2)
    by = {(s["study"], tuple(s["off"]), s["replicate_seed"]): s for s in specs}
    # 4 studies x 2 seeds tuned, + both's two ablations x 2 replicates x 2 seeds
    assert len(specs) == 4 * 2 + 2 * 2 * 2 == len(by)
    assert {k[2] for k in by if k[0].endswith(".r1")} == {1001, 1002} and {k[2] for k in by if "." not in k[0]} == {1, 2}
    for study in ("demo-xs/both", "demo-xs/both.r1"):
        seeds = {k[2] for k in by if k[0] == study and not k[1]}
        for off in (("uncertainty",), ("smoothing",)):
            # same seeds and the same params as the tuned config: paired per seed
            assert {k[2] for k in by if k[0] == study and k[1] == off} == seeds
            for seed in seeds:
                on, ablated = by[(study, (), seed)], by[(study, off, seed)]
                assert {k: v for k, v in on.items() if k != "off"} == {k: v for k, v in ablated.items() if k != "off"}
    assert not any(k[1] for k in by if "baseline" in k[0])  # nothing to switch off
    _, plain = replicate_specs(two_searches, 2, ablations=False)
    assert len(plain) == 8 and not any(s["off"] for s in plain)


def test_an_ablation_trains_the_tuned_config_with_the_enhancement_off(two_searches):
    space, specs = replicate_specs(two_searches, 1)
    [on] = [s for s in specs if s["study"] == "demo-xs/both.r1" and not s["off"]]
    [no_smoothing] = [s for s in specs if s["study"] == "demo-xs/both.r1" and s["off"] == ["smoothing"]]
    [no_uncertainty] = [s for s in specs if s["study"] == "demo-xs/both.r1" and s["off"] == ["uncertainty"]]
    cfg = {name: trial_train_config(space, spec, str(two_searches.root), "tid", teacher_cache=None)
           for name, spec in (("on", on), ("no_smoothing", no_smoothing), ("no_uncertainty", no_uncertainty))}
    assert cfg["on"].uncertainty and cfg["on"].smoothing == on["smoothing"]
    assert cfg["no_smoothing"].uncertainty and cfg["no_smoothing"].smoothing is None
    assert not cfg["no_uncertainty"].uncertainty and cfg["no_uncertainty"].smoothing == on["smoothing"]
    for c in cfg.values():
        assert (c.lr, c.warmup_steps, c.temperature, c.alpha, c.seed) == (
            on["lr"], on["warmup_steps"], on["temperature"], on["alpha"], 1001)
        assert c.final_eval and c.provenance["search_seed"] == 1000
    name = parse_replicate_name(cfg["no_smoothing"].output_dir.rsplit("/", 1)[-1])
    assert name == ("demo-xs", "both", 1001, 1, ("smoothing",)) and cfg["no_smoothing"].provenance["switched_off"] == [
        "smoothing"]
    assert cfg["on"].output_dir.endswith("/replicates/" + replicate_name("demo-xs", "both", 1001, 1))


def test_replicate_names_round_trip_and_old_names_still_parse():
    for args in (("demo-xs", "both", 3), ("my_scale", "calibration", 1002, 1, ("smoothing",)),
                 ("s", "both", 7, 0, ("uncertainty", "smoothing"))):
        assert parse_replicate_name(replicate_name(*args)) == (*args, *((0, ())[len(args) - 3:]))
    assert parse_replicate_name("demo-s__baseline__seed2") == ("demo-s", "baseline", 2, 0, ())
    assert parse_replicate_name("demo-s__both.r0__seed2") is None  # replicate 0 has no suffix
    assert parse_replicate_name("demo-s__both.xyz__seed2") is None and parse_replicate_name("notes.txt") is None
