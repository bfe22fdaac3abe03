"""sweeps.cache without Ray: one cache key for every study of a space, where it lives, what its build reserves."""

import dataclasses

import pytest

from kdsweep.distill.errors import ConfigError
from kdsweep.distill.teacher.cache import plan_teacher_cache
from kdsweep.sweeps.cache import build_resources, cache_root, check_cache_dir, plan_space_cache
from kdsweep.sweeps.space import load_space
from tests.fixtures import write_small_space


def _with(space, section: str, **changes):
    """The space with keys of its `cache` or `resources` section changed."""
    return dataclasses.replace(space, **{section: {**getattr(space, section), **changes}})


@pytest.fixture
def space(tmp_path, small_fasta, char_teacher):
    """Two scales x two arms, each study with its own learning-rate range."""
    return load_space(write_small_space(
        tmp_path, "keys", small_fasta, char_teacher, scales=["demo-xs", "demo-s"],
        scale_params={"demo-s": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-3}}},
        train={"max_steps": 6}))


def test_every_scale_and_arm_reads_the_same_cache(space, tmp_path):
    """The key depends on the teacher, data, split, block size, pool and precision, never on the student or the
    loss settings: one cache serves every study (and every replicate seed)."""
    shared = plan_space_cache(space, tmp_path)
    assert len(space.studies) == 4
    for study in space.studies:
        for params, seed in (({k: d.low if d.low is not None else d.values[0] for k, d in study.params.items()}, 0),
                             ({k: d.high if d.high is not None else d.values[-1] for k, d in study.params.items()}, 7)):
            cfg = space.trial_config(study, params, str(tmp_path / "unused"), seed=seed)
            assert plan_teacher_cache(cfg, space.cache["dtype"], tmp_path).key == shared.key, study.name


def test_the_cache_lives_beside_the_sweeps_or_in_cache_dir(space, tmp_path):
    assert cache_root(space, tmp_path / "store") == tmp_path / "store" / "teacher_cache"
    node_local = _with(space, "cache", dir=str(tmp_path / "scratch"))
    assert cache_root(node_local, tmp_path / "store") == tmp_path / "scratch"
    assert plan_space_cache(node_local, tmp_path / "store").path.parent == tmp_path / "scratch"
    check_cache_dir(node_local, tmp_path / "store")  # creatable: fine, and nothing is created
    assert not (tmp_path / "scratch").exists()
    with pytest.raises(ConfigError, match="cache.dir: /proc/kdsweep-cache is not writable"):
        check_cache_dir(_with(space, "cache", dir="/proc/kdsweep-cache"), tmp_path / "store")


def test_the_build_task_reserves_a_trial_workers_cpus_and_a_whole_gpu_if_trials_use_gpus(space):
    assert build_resources(space) == {"num_cpus": 1.0, "num_gpus": 0.0}
    gpu_trials = _with(space, "resources", cpus_per_worker=4, gpus_per_worker=0.5)
    assert build_resources(gpu_trials) == {"num_cpus": 4.0, "num_gpus": 1.0}
    assert build_resources(_with(gpu_trials, "cache", gpus=0)) == {"num_cpus": 4.0, "num_gpus": 0.0}
