"""Property-based fuzzing of the two parsers every user file goes through: the search space
(`sweeps.space.load_space`) and the run config (`distill.config.load_config`).

Each example starts from a valid file and changes it as a careless, unlucky or hostile user
might: known keys (of the schema: top level, sections, TrainConfig fields, distributions) and
unknown ones set to random YAML trees (None, booleans, huge and negative integers, NaN and
infinities, text, paths, nested lists and mappings), keys deleted, and the YAML's bytes
corrupted. The property: the parser either refuses it with a `ConfigError` (what the command
line prints in one message and exits 2 on) whose every problem names the field or the file, in
under 5,000 characters; or it accepts it, and then what it returns is valid (ranges hold, it
writes back out and reads back equal). Any other exception is a traceback a user would see.

CI runs a fixed, derandomized set of examples (KDSWEEP_FUZZ_EXAMPLES, default 50 per parser,
a few seconds); set it higher to search longer (3,000 per parser ran clean, after the search
found keys such as " ", "\\r" and ":" named unreadably in messages).
"""

from __future__ import annotations

import copy
import math
import os
import re

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdsweep.distill.config import FIELDS, SEED_LIMIT, TrainConfig, config_from_dict, dump_config, load_config
from kdsweep.distill.errors import ConfigError, KDSweepError
from kdsweep.sweeps.layout import SWEEP_NAME
from kdsweep.sweeps.space import (CACHE_DEFAULTS, DIST_TYPES, MAX_TRIALS_PER_STUDY, RESOURCE_DEFAULTS, SEARCH_DEFAULTS,
                          SEARCHABLE, TOP_KEYS, TRACKING_DEFAULTS, dump_space, load_space)

EXAMPLES = int(os.environ.get("KDSWEEP_FUZZ_EXAMPLES", "50"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

SPACE = {
    "name": "fuzz", "data": "bundled", "scales": ["demo-xs"], "arms": ["baseline", "both"],
    "params": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
               "warmup_steps": {"type": "int", "low": 0, "high": 10},
               "temperature": {"type": "uniform", "low": 1.0, "high": 4.0},
               "alpha": {"type": "uniform", "low": 0.1, "high": 0.9},
               "smoothing": {"type": "choice", "values": [0.05, 0.1]}},
    "train": {"max_steps": 40, "eval_interval": 10, "block_size": 64},
    "search": {"trials_per_study": 4, "seed": 0},
}
SECTIONS = {"": list(TOP_KEYS), "train": sorted(FIELDS), "search": list(SEARCH_DEFAULTS),
            "resources": list(RESOURCE_DEFAULTS), "cache": list(CACHE_DEFAULTS), "tracking": list(TRACKING_DEFAULTS),
            "params": list(SEARCHABLE), "params.lr": ["type", "low", "high", "values"],
            "params.alpha": ["type", "low", "high", "values"], "scale_params": ["demo-xs", "tiny"],
            "arm_params": ["both", "calibration", "baseline"]}
KNOWN_KEYS = sorted({k for keys in SECTIONS.values() for k in keys})
WORDS = ["../x", "/abs/path", ".", "..", "a/b", "demo-xs", "baseline", "both", *DIST_TYPES, "1e-3", ".nan", "-.inf",
         "fp32", "int8", "local", "ray_train", "mlflow", "sqlite://", "postgres://u@db/kd", "hash", "cluster",
         "x" * 300]

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                    st.integers(min_value=-3, max_value=70000), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=12), st.sampled_from(WORDS))
trees = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=8)), inner, max_size=4)), max_leaves=10)


@st.composite
def edited(draw, base: dict, sections: dict[str, list[str]]) -> dict:
    """`base` with 1 to 4 keys set to random trees or deleted (a section set to a tree replaces it)."""
    raw = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(sorted(sections)))
        key = draw(st.one_of(st.sampled_from(sections[where]), st.text(min_size=1, max_size=8)))
        node = raw
        for part in [p for p in where.split(".") if p]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        if draw(st.integers(0, 5)) == 0:
            node.pop(key, None)
        else:
            node[key] = draw(trees)
    return raw


@st.composite
def yaml_bytes(draw, base: dict, sections: dict[str, list[str]]) -> bytes:
    """The edited mapping as YAML, sometimes with a few bytes inserted or overwritten."""
    data = yaml.safe_dump(draw(edited(base, sections)), allow_unicode=draw(st.booleans())).encode()
    for _ in range(draw(st.integers(0, 2)) if draw(st.integers(0, 3)) == 0 else 0):
        at = draw(st.integers(0, len(data)))
        junk = draw(st.binary(min_size=1, max_size=3))
        data = data[:at] + junk + data[at + (len(junk) if draw(st.booleans()) else 0):]
    return data


# A problem line starts with the key it is about (e.g. `search.seed:`, `params.lr.low:`, `scales[0]:`),
# or with the file it is about.
NAMED = re.compile(r"^[^\s:][^:]*:")


def _parse(data: bytes, folder, loader):
    """(what `loader` read from `data` written to a file in `folder`, the file), or (None, the file)
    after checking that the refusal names its field or file in under 5,000 characters."""
    path = folder / "input.yaml"
    path.write_bytes(data)
    try:
        return loader(path), path
    except KDSweepError as e:
        assert len(str(e)) < 5000, len(str(e))
        for line in e.problems if isinstance(e, ConfigError) else [str(e)]:
            assert NAMED.match(line) or str(path) in line, line
        return None, path


def _valid_space(space) -> None:
    assert SWEEP_NAME.fullmatch(space.name)
    s = space.search
    assert 1 <= s["trials_per_study"] <= MAX_TRIALS_PER_STUDY and 0 <= s["seed"] < SEED_LIMIT
    assert math.isfinite(float(s["reduction_factor"])) and float(s["reduction_factor"]) >= 2
    assert all(math.isfinite(float(space.resources[k])) for k in ("cpus_per_worker", "gpus_per_worker"))
    for study in space.studies:
        for d in study.params.values():
            assert d.type == "choice" or (math.isfinite(d.low) and math.isfinite(d.high) and d.low <= d.high)
        probe = {k: (d.values[0] if d.type == "choice" else int(d.low) if d.type == "int" else d.low)
                 for k, d in study.params.items()}
        assert isinstance(space.trial_config(study, probe, "/tmp/unused"), TrainConfig)


@FUZZ
@given(data=yaml_bytes(SPACE, SECTIONS))
def test_the_space_parser_refuses_with_a_named_field_or_accepts_a_valid_space(data, tmp_path_factory):
    space, path = _parse(data, tmp_path_factory.mktemp("space"), load_space)
    if space is not None:
        _valid_space(space)
        dump_space(space, path)  # what a sweep folder records reads back the same
        assert load_space(path).studies == space.studies


CONFIG = {"lr": 1e-3, "alpha": 0.5, "temperature": 2.0, "max_steps": 10, "block_size": 64, "seed": 3}


@FUZZ
@given(data=yaml_bytes(CONFIG, {"": sorted(FIELDS)}))
def test_the_config_parser_refuses_with_a_named_field_or_accepts_a_valid_config(data, tmp_path_factory):
    cfg, path = _parse(data, tmp_path_factory.mktemp("config"), load_config)
    if cfg is not None:
        assert 0 <= cfg.seed < SEED_LIMIT and all(math.isfinite(v) for v in (cfg.lr, cfg.temperature, cfg.alpha))
        dump_config(cfg, path)  # a run's config.yaml reads back as the same config
        assert load_config(path) == cfg
        assert config_from_dict(cfg.to_dict()) == cfg
