"""Search-space validation: every problem named by its key, before Ray starts."""

import copy
import shutil

import pytest
import yaml

from kdsweep.distill.errors import ConfigError
from kdsweep.cli import main
from kdsweep.sweeps.preflight import warmup_rung_warnings
from kdsweep.sweeps.space import (ARMS, ENHANCEMENTS, SEARCH_SPACES_DIR, SEED_STRIDE, dump_space, load_space,
                                  parse_space, smoke_space, with_search_replicates, with_tracker)
from tests.fixtures import write_real_fasta

SHIPPED = sorted(SEARCH_SPACES_DIR.glob("*.yaml"))
DEMO = yaml.safe_load((SEARCH_SPACES_DIR / "demo.yaml").read_text())


def test_ships_the_three_spaces():
    assert {p.stem for p in SHIPPED} >= {"demo", "protgpt2", "micro_ablation"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_space_validates(path):
    space = load_space(path)
    assert len(space.studies) == len(space.scales) * len(space.arms)
    for study in space.studies:
        # smoothing is searched exactly in the arms that smooth
        assert ("smoothing" in study.params) == study.smooths
        cfg = space.trial_config(study, {"lr": 1e-4, "warmup_steps": 0, "temperature": 2.0, "alpha": 0.5,
                                         **({"smoothing": 0.1} if study.smooths else {})}, "/tmp/x")
        assert cfg.uncertainty == study.uncertainty and (cfg.smoothing is not None) == study.smooths


def test_each_arm_names_its_enhancements_and_builds_its_loss_flags():
    assert {a: (arm.uncertainty, arm.smooths) for a, arm in ARMS.items()} == {
        "baseline": (False, False), "uncertainty": (True, False), "calibration": (False, True), "both": (True, True)}
    assert all(set(arm.enhancements) <= set(ENHANCEMENTS) for arm in ARMS.values())
    assert ARMS["both"].enhancements == ("uncertainty", "smoothing") and ARMS["baseline"].enhancements == ()
    assert ARMS["uncertainty"].loss_flags(0.1) == {"uncertainty": True, "smoothing": None}
    assert ARMS["calibration"].loss_flags(0.1) == {"uncertainty": False, "smoothing": 0.1}


def test_protgpt2_space_matches_spec_ranges():
    s = load_space(SEARCH_SPACES_DIR / "protgpt2.yaml")
    assert s.scales == ("tiny", "small", "medium") and s.arms == ("baseline", "uncertainty", "calibration", "both")
    p = s.study("small/both").params
    assert (p["temperature"].low, p["temperature"].high) == (1.0, 10.0)
    assert (p["alpha"].low, p["alpha"].high) == (0.1, 0.9)
    assert (p["smoothing"].low, p["smoothing"].high) == (0.01, 0.2)
    assert (p["warmup_steps"].low, p["warmup_steps"].high) == (0, 500)
    # lr centered per scale, inside the method's 5e-5 .. 1e-3 neighbourhood
    assert s.study("medium/baseline").params["lr"].high < s.study("tiny/baseline").params["lr"].high


def _with(**changes):
    raw = copy.deepcopy(DEMO)
    for dotted, value in changes.items():
        node = raw
        *parents, leaf = dotted.split("__")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = value
    return raw


@pytest.mark.parametrize(
    "raw, needle",
    [
        (_with(learning_rate=1), "learning_rate: unknown key"),
        (_with(params__lr={"type": "loguniform", "low": 0, "high": 1e-3}), "params.lr.low: loguniform needs low > 0"),
        (_with(params__alpha={"type": "uniform", "low": 0.9, "high": 0.1}), "params.alpha: low 0.9 > high 0.1"),
        (_with(arms=["baseline", "fancy"]), "arms[1]: unknown arm 'fancy'"),
        (_with(scales=["demo-s", "gigantic"]), "scales[1]: unknown scale 'gigantic'"),
        (_with(arm_params={"baseline": {"smoothing": {"type": "uniform", "low": 0.01, "high": 0.1}}}),
         "arm_params.baseline.smoothing: the baseline arm does not smooth"),
        (_with(arms=["baseline", "uncertainty"]), "params.smoothing: no arm in `arms` smooths"),
        (_with(params__alpha={"type": "uniform", "low": 0.1, "high": 1.5}), "params.alpha: value 1.5 out of range"),
        (_with(params__lr={"type": "gaussian", "low": 1, "high": 2}), "params.lr.type: got 'gaussian'"),
        (_with(train__lr=1e-3), "train.lr: set by the sweep itself"),
        (_with(train__max_stepz=3), "train.max_stepz: unknown key (did you mean 'max_steps'?)"),
        (_with(search__trials_per_study=0), "search.trials_per_study: got 0"),
        (_with(search__executor="slurm"), "search.executor: got 'slurm'"),
        (_with(cache__dtype="int8"), "cache.dtype: got 'int8', allowed: fp32, bf16, fp16"),
        (_with(cache__enabled="yes"), "cache.enabled: got 'yes', allowed: true or false"),
        (_with(cache__gpus=-1), "cache.gpus: got -1"),
        (_with(cache__path="/x"), "cache.path: unknown key"),
        (_with(train__teacher_cache="/x"), "train.teacher_cache: set by the sweep itself"),
        (_with(search__early_stopping="no"), "search.early_stopping: got 'no', allowed: true"),
        (_with(tracking__tracker="neptune"), "tracking.tracker: got 'neptune', allowed: null (none), mlflow, wandb"),
        (_with(tracking__projekt="x"), "tracking.projekt: unknown key"),
        (_with(tracking__wandb_project=7), "tracking.wandb_project: expected a W&B project name, got 7"),
        (_with(search__search_replicates=0), "search.search_replicates: got 0, allowed: an integer from 1 to 100"),
        (_with(teacher_train_data=5), "teacher_train_data: got 5, allowed: null (unknown), 'demo'"),
        (_with(teacher="nferruz/ProtGPT2", teacher_train_data="demo"), "teacher_train_data: 'demo' names the demo"),
    ],
)
def test_malformed_spaces_name_the_key(raw, needle):
    with pytest.raises(ConfigError) as e:
        parse_space(raw, "bad.yaml")
    assert needle in str(e.value)


def test_all_problems_listed_at_once():
    raw = _with(arms=["fancy"], scales=["gigantic"], params__lr={"type": "loguniform", "low": -1, "high": 1})
    msg = str(pytest.raises(ConfigError, parse_space, raw, "bad.yaml").value)
    assert "arms[0]" in msg and "scales[0]" in msg and "params.lr.low" in msg


def test_cli_rejects_before_ray_starts(tmp_path, capsys):
    import ray

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_with(arms=["nope"])))
    code = main(["sweep", "run", str(bad), "--storage", str(tmp_path / "store")])
    err = capsys.readouterr().err
    assert code == 2 and "arms[0]: unknown arm 'nope'" in err
    assert not ray.is_initialized() and not (tmp_path / "store").exists()
    malformed = tmp_path / "m.yaml"
    malformed.write_text("scales: [demo-s\n")
    assert main(["sweep", "run", str(malformed)]) == 2 and "malformed YAML" in capsys.readouterr().err


def test_missing_mmseqs_stops_a_sweep_before_ray_starts(tmp_path, no_mmseqs, capsys):
    import ray

    data = write_real_fasta(tmp_path / "user.fasta", 80)
    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump(_with(data=str(data))))
    code = main(["sweep", "run", str(space), "--storage", str(tmp_path / "store")])
    err = capsys.readouterr().err
    assert code == 2 and "mmseqs not found" in err and "split_method: hash" in err
    assert not ray.is_initialized() and not (tmp_path / "store").exists()


def test_early_stopping_is_on_unless_switched_off():
    assert load_space(SEARCH_SPACES_DIR / "demo.yaml").search["early_stopping"] is True
    assert parse_space(_with(search__early_stopping=False), "x.yaml").search["early_stopping"] is False


def test_smoke_space_is_small_but_complete():
    s = smoke_space(load_space(SEARCH_SPACES_DIR / "demo.yaml"))
    assert len(s.scales) == 1 and len(s.arms) == 4 and s.train["max_steps"] <= 20
    assert s.search["grace_period"] < s.train["max_steps"]


def test_cache_section_defaults_to_an_fp32_cache_beside_the_sweeps():
    assert load_space(SEARCH_SPACES_DIR / "demo.yaml").cache == {"enabled": True, "dtype": "fp32", "dir": None,
                                                                  "gpus": None}
    off = parse_space(_with(cache={"enabled": False}), "off.yaml")
    assert off.cache["enabled"] is False and off.cache["dtype"] == "fp32"
    assert load_space(SEARCH_SPACES_DIR / "protgpt2.yaml").cache["dtype"] == "bf16"


def test_tracker_from_the_space_or_the_command_line(tmp_path):
    plain = load_space(SEARCH_SPACES_DIR / "demo.yaml")
    assert plain.tracking == {"tracker": None, "mlflow_uri": None, "wandb_project": "kdsweep", "log_student": False}
    tracked = parse_space(_with(tracking={"tracker": "wandb", "wandb_project": "kd"}), "t.yaml")
    assert tracked.tracking == {"tracker": "wandb", "mlflow_uri": None, "wandb_project": "kd",
                                "log_student": False}
    assert with_tracker(tracked, None) is tracked  # no --tracker: the space decides
    assert with_tracker(tracked, "mlflow").tracking == {"tracker": "mlflow", "mlflow_uri": None, "wandb_project": "kd",
                                "log_student": False}
    off = with_tracker(tracked, "none")
    assert off.tracking["tracker"] is None
    dump_space(off, tmp_path / "space.yaml")  # what a sweep keeps, and a resume reads
    assert load_space(tmp_path / "space.yaml").tracking["tracker"] is None


def test_relative_paths_are_made_absolute_against_the_callers_directory(tmp_path, monkeypatch, small_fasta,
                                                                        char_teacher):
    """Trials run in Tune's own folders (and on other nodes): a relative `data:` used to be found by the
    driver and by no trial (exit 0 with every trial failed)."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(small_fasta, work / "rel.fasta")
    shutil.copytree(char_teacher, work / "teacher")
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({**DEMO, "data": "rel.fasta", "teacher": "teacher", "tokenizer": "./teacher",
                                     "cache": {"dir": "caches"}, "teacher_train_data": None}))
    monkeypatch.chdir(work)
    s = load_space(space)
    assert (s.data, s.teacher, s.tokenizer) == (str(work / "rel.fasta"), str(work / "teacher"), str(work / "teacher"))
    assert s.cache["dir"] == str(work / "caches")
    assert s.raw["data"] == str(work / "rel.fasta")  # what space.yaml in the sweep folder records
    space.write_text(yaml.safe_dump({**DEMO, "teacher": "nferruz/ProtGPT2", "data": "bundled", "teacher_train_data": None}))
    hub = load_space(space)
    assert (hub.teacher, hub.data) == ("nferruz/ProtGPT2", "bundled")  # a hub id and the bundled data stay


def test_a_space_file_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(DEMO).encode())
    assert load_space(path).scales == tuple(DEMO["scales"])


def test_search_replicates_are_independent_studies_with_disjoint_seeds():
    """R searches per (scale, arm): replicate 0 keeps the names and seeds of a sweep without replicates,
    replicate r searches with training seed seed + r * SEED_STRIDE, and its best configs' replicate seeds
    follow it, so no seed is shared between levels (method §7: a two-level, nested design)."""
    plain = load_space(SEARCH_SPACES_DIR / "demo.yaml")
    assert plain.search_replicates == 1 and with_search_replicates(plain, None) is plain
    space = with_search_replicates(plain, 3)
    assert len(space.studies) == 3 * len(plain.studies)
    assert [s.name for s in space.studies[:len(plain.studies)]] == [s.name for s in plain.studies]  # same indices
    study = space.study("demo-s/both.r2")
    assert (study.scale, study.arm, study.search_replicate) == ("demo-s", "both", 2)
    assert study.enhancements == ("uncertainty", "smoothing") and space.study("demo-s/baseline").enhancements == ()
    params = {"lr": 1e-3, "warmup_steps": 0, "temperature": 2.0, "alpha": 0.5, "smoothing": 0.1}
    assert space.trial_config(study, params, "/tmp/x").seed == 2 * SEED_STRIDE
    assert space.trial_config(space.study("demo-s/both"), params, "/tmp/x").seed == 0
    seeds = [set(space.replicate_seeds(5, r)) | {space.search_seed_of(r)} for r in range(3)]
    assert all(not (a & b) for i, a in enumerate(seeds) for b in seeds[i + 1:])
    assert space.replicate_seeds(3) == plain.replicate_seeds(3) == [1, 2, 3]
    with pytest.raises(ConfigError, match="--seeds: got 1000"):
        space.replicate_seeds(SEED_STRIDE)


def test_asha_first_rung_inside_the_warmup_is_warned():
    for path in SHIPPED:  # the shipped spaces judge no trial before its warmup ends
        assert warmup_rung_warnings(load_space(path)) == [], path.stem
    [w] = warmup_rung_warnings(parse_space(_with(params__warmup_steps={"type": "int", "low": 0, "high": 10}), "w.yaml"))
    assert "ASHA's first rung (step 10) falls at or before the end of the largest warmup searched" in w
    assert "warmup_steps up to 10" in w
    assert warmup_rung_warnings(parse_space(_with(params__warmup_steps={"type": "int", "low": 0, "high": 10},
                                            search__early_stopping=False), "w.yaml")) == []  # no ASHA, no rung


def test_teacher_train_data_is_optional_and_demo_names_the_demo_teachers_record():
    assert load_space(SEARCH_SPACES_DIR / "demo.yaml").teacher_train_data == "demo"
    assert load_space(SEARCH_SPACES_DIR / "protgpt2.yaml").teacher_train_data is None
