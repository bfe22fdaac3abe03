"""Search-space YAML: typed, validated before Ray starts (method §6).

A space says what to distill (teacher, data, scales, enhancement arms), which
hyperparameters to search and how (distributions, per scale and per arm),
the fixed training settings every trial shares, the search settings
(trials per (scale, arm) study, concurrency, ASHA, seed), resources, and an
optional experiment tracker (MLflow or W&B, one run per trial).
`load_space` reports every problem at once, each naming its key.

Every (scale, arm) pair is its own Optuna study with the same trial budget:
the study's central confound was that only the enhanced runs were re-tuned.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdsweep.distill.config import FIELDS as TRAIN_FIELDS
from kdsweep.distill.config import SEED_LIMIT, TrainConfig, config_from_dict, did_you_mean, read_yaml_mapping, shown_key
from kdsweep.distill.errors import ConfigError, shown
from kdsweep.distill.files.atomic import write_atomic
from kdsweep.distill.files.numbers import parse_number
from kdsweep.distill.models import load_scales, looks_like_path
from kdsweep.distill.teacher.cache import STORAGE_DTYPES
from kdsweep.sweeps.layout import check_sweep_name
from kdsweep.sweeps.storage import storage_url_problem

SEARCH_SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"

BASELINE = "baseline"


@dataclass(frozen=True)
class Arm:
    """An arm of the comparison (method §6): which of the two enhancements its loss switches on."""

    uncertainty: bool  # uncertainty-weighted KD
    smooths: bool  # calibration smoothing (its factor, `smoothing`, is searched)

    @property
    def enhancements(self) -> tuple[str, ...]:
        """The ENHANCEMENTS it switches on: what its matched ablation switches off."""
        return tuple(e for e, on in (("uncertainty", self.uncertainty), ("smoothing", self.smooths)) if on)

    def loss_flags(self, smoothing: float | None) -> dict:
        """The TrainConfig values of its loss: `smoothing` the sampled factor, None where it does not smooth."""
        return {"uncertainty": self.uncertainty, "smoothing": smoothing if self.smooths else None}


ARMS = {BASELINE: Arm(uncertainty=False, smooths=False), "uncertainty": Arm(uncertainty=True, smooths=False),
        "calibration": Arm(uncertainty=False, smooths=True), "both": Arm(uncertainty=True, smooths=True)}
ENHANCED_ARMS = tuple(a for a in ARMS if a != BASELINE)
SEARCHABLE = ("lr", "warmup_steps", "temperature", "alpha", "smoothing")
DIST_TYPES = ("loguniform", "uniform", "int", "choice")
# "auto": `local` for one-worker trials (no Ray Train start-up: docs/benchmarks.md, "Per-trial fixed
# cost"), `ray_train` when a trial has several workers (DDP).
EXECUTORS = ("auto", "local", "ray_train")
TOP_KEYS = ("name", "description", "teacher", "tokenizer", "data", "scales", "arms", "params", "scale_params",
            "arm_params", "train", "search", "resources", "tracking", "cache", "teacher_train_data")
SEARCH_DEFAULTS = {"trials_per_study": 4, "max_concurrent": 2, "seed": 0, "grace_period": 20, "reduction_factor": 2,
                   "max_failures": 2, "executor": "auto", "storage_url": None, "startup_trials": None,
                   "early_stopping": True, "search_replicates": 1, "warm_start": "none", "warm_start_top_k": 2}
# search.warm_start: `none` (every study starts cold) or `previous_scale` (a study starts when the same arm's
# study at the next smaller width has ended, and first tries its top-k configs: sweeps/warmstart.py, method §6).
WARM_STARTS = ("none", "previous_scale")
# Search replicate r of a (scale, arm) (method §7, tuned arm vs tuned baseline): its own study, TPE seed and
# training seeds, all in the block [seed + r * SEED_STRIDE, seed + (r + 1) * SEED_STRIDE): its search trials
# train with the block's first seed, its replicates with the next ones. r = 0 is the sweep without replicates.
SEED_STRIDE = 1000
# enhancement -> the TrainConfig value that switches it off (the matched ablation of `sweep replicate`)
ENHANCEMENTS = {"uncertainty": {"uncertainty": False}, "smoothing": {"smoothing": None}}
RESOURCE_DEFAULTS = {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0.0}
# Ranges of the search and resource numbers: beyond them a value is a typo, and some (a 1e12-trial
# budget, a seed of 2**40 that numpy refuses only after Ray has started) used to fail deep inside
# `estimate` or a started sweep.
MAX_INT = 2**31 - 1
MAX_TRIALS_PER_STUDY = 10_000
SEARCH_COUNTS = {"trials_per_study": (1, MAX_TRIALS_PER_STUDY), "max_concurrent": (1, MAX_TRIALS_PER_STUDY),
                 "grace_period": (1, MAX_INT), "max_failures": (0, 1000), "search_replicates": (1, 100),
                 "warm_start_top_k": (1, 100)}
MAX_REDUCTION_FACTOR = 1000
MAX_WORKERS, MAX_CPUS, MAX_GPUS = 1024, 1024, 64
TRACKERS = ("mlflow", "wandb")
NO_TRACKER = "none"  # `--tracker none`: off, whatever the space says
# mlflow_uri null: $MLFLOW_TRACKING_URI, else the sweep's own mlflow.db (sweeps/trackers.py).
# log_student: also store each completed trial's student (its weights) with the tracker's run.
TRACKING_DEFAULTS = {"tracker": None, "mlflow_uri": None, "wandb_project": "kdsweep", "log_student": False}
# The teacher cache (distill/teacher/cache.py, sweeps/cache.py): on by default. dir null = a
# `teacher_cache/` folder beside the sweeps in the storage root; gpus null = one GPU if trials use GPUs.
CACHE_DEFAULTS = {"enabled": True, "dtype": "fp32", "dir": None, "gpus": None}
# Keys the sweep itself sets per trial: not allowed under `train:`.
TRIAL_SET = ("teacher", "tokenizer", "data", "scale", "uncertainty", "output_dir", "provenance",
             "teacher_cache") + SEARCHABLE


@dataclass(frozen=True)
class Dist:
    """One hyperparameter distribution."""

    type: str
    low: float | None = None
    high: float | None = None
    values: tuple | None = None

    def to_dict(self) -> dict:
        if self.type == "choice":
            return {"type": "choice", "values": list(self.values)}
        return {"type": self.type, "low": self.low, "high": self.high}


def switched_off(off) -> dict:
    """The TrainConfig values that switch the enhancements `off` (ENHANCEMENTS keys) off."""
    return {k: v for e in off for k, v in ENHANCEMENTS[e].items()}


def replicate_suffix(search_replicate: int) -> str:
    """'' for search replicate 0 (a sweep without replicates keeps its names), '.r<k>' after it."""
    return f".r{search_replicate}" if search_replicate else ""


@dataclass(frozen=True)
class Study:
    """One (scale, arm) study: its name and its own distributions."""

    scale: str
    arm: str
    params: dict[str, Dist]
    search_replicate: int = 0  # which independent search of this (scale, arm): search.search_replicates

    @property
    def name(self) -> str:
        return f"{self.scale}/{self.arm}{replicate_suffix(self.search_replicate)}"

    @property
    def enhancements(self) -> tuple[str, ...]:
        """The enhancements this arm switches on (ENHANCEMENTS keys): what its matched ablation switches off."""
        return ARMS[self.arm].enhancements

    @property
    def uncertainty(self) -> bool:
        return ARMS[self.arm].uncertainty

    @property
    def smooths(self) -> bool:
        return ARMS[self.arm].smooths


@dataclass(frozen=True)
class SearchSpace:
    name: str
    teacher: str
    tokenizer: str | None
    data: str
    scales: tuple[str, ...]
    arms: tuple[str, ...]
    studies: tuple[Study, ...]
    train: dict[str, Any]  # fixed TrainConfig keys
    search: dict[str, Any]
    resources: dict[str, Any]
    cache: dict[str, Any] = field(default_factory=lambda: dict(CACHE_DEFAULTS))
    tracking: dict[str, Any] = field(default_factory=lambda: dict(TRACKING_DEFAULTS))
    teacher_train_data: str | None = None  # distill/data/exposure.py: what the teacher trained on, if known
    source: str = ""
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    def trial_config(self, study: Study, params: dict[str, Any], output_dir: str, **extra) -> TrainConfig:
        """The TrainConfig of one trial: fixed settings + scale + arm + sampled params."""
        values = {
            **self.train,
            "teacher": self.teacher,
            "tokenizer": self.tokenizer,
            "data": self.data,
            "scale": study.scale,
            "seed": self.search_seed_of(study.search_replicate),
            **params,
            **ARMS[study.arm].loss_flags(params.get("smoothing")),
            "output_dir": output_dir,
            **extra,
        }
        return config_from_dict(values, source=f"trial config of {study.name}")

    def study(self, name: str) -> Study:
        return next(s for s in self.studies if s.name == name)

    @property
    def total_trials(self) -> int:
        return len(self.studies) * self.search["trials_per_study"]

    @property
    def search_seed(self) -> int:
        """The training seed of every search trial of search replicate 0 (`train.seed`, default 0)."""
        return int(self.train.get("seed", TrainConfig.seed))

    @property
    def search_replicates(self) -> int:
        return int(self.search["search_replicates"])

    def search_seed_of(self, search_replicate: int) -> int:
        """The training seed of the search trials of one search replicate (see SEED_STRIDE)."""
        return self.search_seed + search_replicate * SEED_STRIDE

    def replicate_seeds(self, n: int, search_replicate: int = 0) -> list[int]:
        """n training seeds for the replicates of one search replicate's best configs, disjoint from its
        search seed (method §6: a replicate with the search seed would re-run the lucky search trial
        itself) and from every other search replicate's seeds (so the two levels are nested)."""
        if n >= SEED_STRIDE:
            raise ConfigError(f"--seeds: got {n}, allowed: 1 ... {SEED_STRIDE - 1} (seeds of one search replicate)")
        return [self.search_seed_of(search_replicate) + 1 + k for k in range(n)]


class _Problems(list):
    """The problems found so far, each a line naming its key."""

    def unknown(self, where: str, key: str, allowed) -> None:
        self.append(f"{where}{shown_key(key)}: unknown key{did_you_mean(key, allowed)}; allowed: {', '.join(allowed)}")


def _parse_dist(key: str, raw: Any, p: _Problems) -> Dist | None:
    if not isinstance(raw, dict):
        p.append(f"{key}: expected a mapping like {{type: loguniform, low: 1e-4, high: 1e-3}}, got {shown(raw)}")
        return None
    kind = raw.get("type")
    if kind not in DIST_TYPES:
        p.append(f"{key}.type: got {shown(kind)}, allowed: {', '.join(DIST_TYPES)}")
        return None
    allowed = ("type", "values") if kind == "choice" else ("type", "low", "high")
    for k in raw:
        if k not in allowed:
            p.unknown(f"{key}.", k, allowed)
    if kind == "choice":
        values = raw.get("values")
        if not isinstance(values, list) or not values:
            p.append(f"{key}.values: choice needs a non-empty list of values")
            return None
        if bad := [v for v in values if not isinstance(v, (str, int, float))]:  # what Optuna can record
            p.append(f"{key}.values: got {shown(bad[0])}, allowed: numbers or strings")
            return None
        return Dist("choice", values=tuple(values))
    low, high = parse_number(raw.get("low")), parse_number(raw.get("high"))
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        p.append(f"{key}: {kind} needs finite numbers low and high (got low={shown(raw.get('low'))}, "
                 f"high={shown(raw.get('high'))})")
        return None
    if low > high:
        p.append(f"{key}: low {low} > high {high}")
        return None
    if kind == "loguniform" and low <= 0:
        p.append(f"{key}.low: loguniform needs low > 0 (got {low})")
        return None
    if kind == "int" and (low != int(low) or high != int(high)):
        p.append(f"{key}: int needs whole-number low and high (got {low}, {high})")
        return None
    return Dist(kind, low, high)


def _check_param_values(key: str, name: str, dist: Dist, p: _Problems) -> None:
    """The distribution's support must hold valid TrainConfig values (e.g. alpha within [0, 1])."""
    probes = list(dist.values) if dist.type == "choice" else [dist.low, dist.high]
    for v in probes:
        try:
            config_from_dict({name: int(v) if dist.type == "int" else v})
        except ConfigError as e:
            p.append(f"{key}: value {shown(v)} out of range ({e.problems[0].removeprefix(f'{name}: ')})")
            return


def _parse_params(where: str, raw: Any, p: _Problems) -> dict[str, Dist]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        p.append(f"{where}: expected a mapping of parameter: distribution")
        return {}
    out = {}
    for name, spec in raw.items():
        if name not in SEARCHABLE:
            p.unknown(f"{where}.", name, SEARCHABLE)
            continue
        d = _parse_dist(f"{where}.{name}", spec, p)
        if d is not None:
            _check_param_values(f"{where}.{name}", name, d, p)
            out[name] = d
    return out


def _merged(raw: dict, key: str, defaults: dict, p: _Problems) -> dict:
    """A settings section over its defaults; unknown keys are problems."""
    section = raw.get(key) or {}
    if not isinstance(section, dict):
        p.append(f"{key}: expected a mapping")
        return dict(defaults)
    for k in section:
        if k not in defaults:
            p.unknown(f"{key}.", k, list(defaults))
    return {**defaults, **{k: v for k, v in section.items() if k in defaults}}


def _names(raw: dict, key: str, known, default, p: _Problems) -> list[str]:
    """`scales` or `arms`: a non-empty list of known names, each once (the known ones are kept)."""
    seq = raw.get(key, default)
    if not isinstance(seq, list) or not seq:
        p.append(f"{key}: required, a non-empty list; known: {', '.join(known)}")
        return []
    out = []
    for i, name in enumerate(seq):
        if not isinstance(name, str) or name not in known:
            p.append(f"{key}[{i}]: unknown {key[:-1]} {shown(name)}; known: {', '.join(known)}")
        elif name in out:
            p.append(f"{key}: listed twice: {name}")
        else:
            out.append(name)
    return out


def _parse_targets(raw: dict, p: _Problems) -> tuple[list, list]:
    """`scales` and `arms`: what is distilled."""
    return _names(raw, "scales", list(load_scales()), None, p), _names(raw, "arms", list(ARMS), list(ARMS), p)


def _section(raw: dict, key: str, p: _Problems) -> dict:
    """An optional mapping section (`scale_params`, `arm_params`): {} when absent or not a mapping."""
    section = raw.get(key)
    if section is None:
        return {}
    if not isinstance(section, dict):
        p.append(f"{key}: expected a mapping of name: {{parameter: distribution}}, got {shown(section)}")
        return {}
    return section


def _parse_searched(raw: dict, scales: list, arms: list, p: _Problems):
    """`params`, `scale_params`, `arm_params`: the distributions, and where smoothing is searched."""
    base = _parse_params("params", raw.get("params"), p)
    given = raw.get("params") if isinstance(raw.get("params"), dict) else {}
    missing = [k for k in ("lr", "warmup_steps", "temperature", "alpha") if k not in given]
    if missing:
        p.append(f"params: must give a distribution for {', '.join(missing)} (searched in every arm)")
    per_scale = {}
    for s, spec in _section(raw, "scale_params", p).items():
        if s not in scales:
            p.append(f"scale_params.{shown_key(s)}: not one of this space's scales ({', '.join(scales)})")
            continue
        per_scale[s] = _parse_params(f"scale_params.{s}", spec, p)
    per_arm = {}
    for a, spec in _section(raw, "arm_params", p).items():
        if a not in ARMS:
            p.append(f"arm_params.{shown_key(a)}: unknown arm; allowed: {', '.join(ARMS)}")
            continue
        per_arm[a] = _parse_params(f"arm_params.{a}", spec, p)
        if "smoothing" in per_arm[a] and not ARMS[a].smooths:
            p.append(f"arm_params.{a}.smoothing: the {a} arm does not smooth; smoothing is searched only in "
                     "calibration and both")
    smoothing_arms = [a for a in arms if a in ARMS and ARMS[a].smooths]
    if "smoothing" in base and not smoothing_arms:
        p.append("params.smoothing: no arm in `arms` smooths (calibration or both); remove the smoothing range")
    for a in smoothing_arms:
        has = "smoothing" in base or "smoothing" in per_arm.get(a, {}) or any(
            "smoothing" in v for v in per_scale.values())
        if not has:
            p.append(f"params.smoothing: required because arm {shown(a)} smooths (e.g. {{type: loguniform, low: 0.01, high: 0.2}})")
    return base, per_scale, per_arm


def _parse_train(raw: dict, p: _Problems) -> dict:
    """`train`: the fixed TrainConfig settings every trial shares."""
    train = raw.get("train") or {}
    if not isinstance(train, dict):
        p.append("train: expected a mapping of fixed training settings")
        return {}
    before = len(p)
    for k in train:
        if k in TRIAL_SET:
            p.append(f"train.{k}: set by the sweep itself (searched, or from teacher/data/scales/arms); remove it here")
        elif k not in TRAIN_FIELDS:
            p.unknown("train.", k, sorted(set(TRAIN_FIELDS) - set(TRIAL_SET)))
    if len(p) == before:
        try:
            config_from_dict(train, source="train")
        except ConfigError as e:
            p.extend(f"train.{problem}" for problem in e.problems)
    return dict(train)


def _check_int(where: str, value: Any, low: int, high: int, p: _Problems, extra: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        span = f">= {low}" if high == MAX_INT else f"from {low} to {high}"
        p.append(f"{where}: got {shown(value)}, allowed: {extra}an integer {span}")


def _check_number(where: str, value: Any, low: float, high: float, p: _Problems, *, low_open: bool = False,
                  extra: str = "") -> None:
    x = parse_number(value)
    inside = x is not None and math.isfinite(x) and (low < x if low_open else low <= x) and x <= high
    if not inside:
        p.append(f"{where}: got {shown(value)}, allowed: {extra}a finite number {'>' if low_open else '>='} "
                 f"{low:g} and <= {high:g}")


def _parse_search(raw: dict, p: _Problems) -> dict:
    search = _merged(raw, "search", SEARCH_DEFAULTS, p)
    for k, (low, high) in SEARCH_COUNTS.items():
        _check_int(f"search.{k}", search[k], low, high, p)
    _check_number("search.reduction_factor", search["reduction_factor"], 2, MAX_REDUCTION_FACTOR, p)
    if not isinstance(search["early_stopping"], bool):
        p.append(f"search.early_stopping: got {shown(search['early_stopping'])}, allowed: true (ASHA per study) or "
                 "false (every trial trains its full budget)")
    _check_int("search.seed", search["seed"], 0, SEED_LIMIT - 1, p)
    if search["startup_trials"] is not None:
        _check_int("search.startup_trials", search["startup_trials"], 0, MAX_TRIALS_PER_STUDY, p,
                   "null (a third of trials_per_study, at most 10) or ")
    if search["warm_start"] not in WARM_STARTS:
        p.append(f"search.warm_start: got {shown(search['warm_start'])}, allowed: {', '.join(WARM_STARTS)}")
    if search["executor"] not in EXECUTORS:
        p.append(f"search.executor: got {shown(search['executor'])}, allowed: {', '.join(EXECUTORS)}")
    if search["storage_url"] is not None and (problem := storage_url_problem(search["storage_url"])):
        p.append(f"search.storage_url: {problem}")
    return search


def _parse_resources(raw: dict, executor: str, p: _Problems) -> dict:
    resources = _merged(raw, "resources", RESOURCE_DEFAULTS, p)
    _check_int("resources.workers", resources["workers"], 1, MAX_WORKERS, p)
    _check_number("resources.cpus_per_worker", resources["cpus_per_worker"], 0, MAX_CPUS, p, low_open=True)
    _check_number("resources.gpus_per_worker", resources["gpus_per_worker"], 0, MAX_GPUS, p)
    if resources["workers"] != 1 and executor == "local":
        p.append("resources.workers: > 1 needs search.executor: ray_train (DDP across workers)")
    return resources


def _parse_cache(raw: dict, p: _Problems) -> dict:
    """`cache`: whether trials read a teacher cache built before they start, stored how and where."""
    cache = _merged(raw, "cache", CACHE_DEFAULTS, p)
    if not isinstance(cache["enabled"], bool):
        p.append(f"cache.enabled: got {shown(cache['enabled'])}, allowed: true or false")
    if cache["dtype"] not in STORAGE_DTYPES:
        p.append(f"cache.dtype: got {shown(cache['dtype'])}, allowed: {', '.join(STORAGE_DTYPES)}")
    if cache["dir"] is not None and not isinstance(cache["dir"], str):
        p.append(f"cache.dir: got {shown(cache['dir'])}, allowed: null (beside the sweeps) or a folder path")
    if cache["gpus"] is not None:
        _check_number("cache.gpus", cache["gpus"], 0, MAX_GPUS, p, extra="null (one GPU if trials use GPUs) or ")
    return cache


def _parse_tracking(raw: dict, p: _Problems) -> dict:
    tracking = _merged(raw, "tracking", TRACKING_DEFAULTS, p)
    if tracking["tracker"] is not None and tracking["tracker"] not in TRACKERS:
        p.append(f"tracking.tracker: got {shown(tracking['tracker'])}, allowed: null (none), {', '.join(TRACKERS)}")
    if tracking["mlflow_uri"] is not None and not isinstance(tracking["mlflow_uri"], str):
        p.append(f"tracking.mlflow_uri: expected a tracking URI string or null, got {shown(tracking['mlflow_uri'])}")
    if not isinstance(tracking["wandb_project"], str) or not tracking["wandb_project"]:
        p.append(f"tracking.wandb_project: expected a W&B project name, got {shown(tracking['wandb_project'])}")
    if not isinstance(tracking["log_student"], bool):
        p.append(f"tracking.log_student: expected true or false, got {shown(tracking['log_student'])}")
    return tracking


def parse_space(raw: Any, source: str = "search space") -> SearchSpace:
    """Validate a search-space mapping; raise ConfigError listing every problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    p = _Problems()
    for k in raw:
        if k not in TOP_KEYS:
            p.unknown("", k, TOP_KEYS)
    for key in ("teacher", "data", "name"):
        if key in raw and not isinstance(raw[key], str):
            p.append(f"{key}: expected a string, got {shown(raw[key])}")
    if raw.get("tokenizer") is not None and not isinstance(raw["tokenizer"], str):
        p.append(f"tokenizer: expected null (the teacher's) or a string, got {shown(raw['tokenizer'])}")
    name = raw.get("name") if isinstance(raw.get("name"), str) else Path(source).stem
    try:
        check_sweep_name(name, "name" if "name" in raw else f"name (from the file name {Path(source).name})")
    except ConfigError as e:
        p.extend(e.problems)
    scales, arms = _parse_targets(raw, p)
    base, per_scale, per_arm = _parse_searched(raw, scales, arms, p)
    train = _parse_train(raw, p)
    search = _parse_search(raw, p)
    resources = _parse_resources(raw, search["executor"], p)
    if search["executor"] == "auto":
        search["executor"] = "local" if resources["workers"] == 1 else "ray_train"
    cache = _parse_cache(raw, p)
    tracking = _parse_tracking(raw, p)
    teacher_train = raw.get("teacher_train_data")
    if teacher_train is not None and (not isinstance(teacher_train, str) or not teacher_train):
        p.append(f"teacher_train_data: got {teacher_train!r}, allowed: null (unknown), 'demo' (the demo teacher's "
                 "recorded training set), a sequence file or an ID list (.txt)")
    elif teacher_train == "demo" and raw.get("teacher", "demo") != "demo":
        p.append(f"teacher_train_data: 'demo' names the demo teacher's training set, but teacher is "
                 f"{raw.get('teacher')!r}; give that teacher's own training data, or leave it out (unknown)")
    if p:
        raise ConfigError(p, f"search space {source}")

    studies = []
    # Replicate 0's studies first, in the order of a sweep without replicates: their indices (TPE seeds,
    # searcher.sampler_seed) are the same, so search replicates only add studies.
    for r in range(search["search_replicates"]):
        for s in scales:
            for a in arms:
                params = {**base, **per_scale.get(s, {}), **per_arm.get(a, {})}
                if not ARMS[a].smooths:
                    params.pop("smoothing", None)
                studies.append(Study(s, a, params, r))
    return SearchSpace(
        name=name,
        teacher=raw.get("teacher", "demo"),
        tokenizer=raw.get("tokenizer"),
        data=raw.get("data", "bundled"),
        scales=tuple(scales),
        arms=tuple(arms),
        studies=tuple(studies),
        train=train,
        search=search,
        resources=resources,
        cache=cache,
        tracking=tracking,
        teacher_train_data=teacher_train,
        source=source,
        raw=copy.deepcopy(raw),
    )


def worker_resources(space: SearchSpace) -> dict:
    """One training worker's Ray resources (the local executor's trial is its one worker)."""
    res = space.resources
    gpus = float(res["gpus_per_worker"])
    return {"CPU": float(res["cpus_per_worker"])} | ({"GPU": gpus} if gpus else {})


def reuses_processes(space: SearchSpace) -> bool:
    """Whether a finished trial's process runs the next trial (Tune's `reuse_actors`: no process
    start and imports, about 6 s a trial here, docs/benchmarks.md). Safe for the `local` executor:
    a trial's state is its run's own (seeded, in its own folder), and Tune reuses a process only
    once the previous trial's thread has returned (a stopped trial ends inside its blocking
    report). Not for `ray_train`: its Tune function waits in `fit()`, which a stop does not end
    in time, so Tune would start a new process anyway."""
    return space.search["executor"] == "local"


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML (a bare name means one shipped in search_spaces/)."""
    path = Path(path)
    if not path.exists() and not path.suffix and (SEARCH_SPACES_DIR / f"{path}.yaml").is_file():
        path = SEARCH_SPACES_DIR / f"{path}.yaml"
    return parse_space(resolve_paths(read_yaml_mapping(path, "search space file")), str(path))


def resolve_paths(raw: dict) -> dict:
    """The space's local paths (data, a teacher or tokenizer folder, cache.dir) made absolute against
    the caller's directory, before anything is recorded or started: trials run in Tune's own folders,
    and on other nodes, where a relative path finds nothing (the sweep would end with every trial
    failed). Hub ids ('nferruz/ProtGPT2') and the bundled names are left as they are."""
    out = dict(raw)
    for key in ("data", "teacher", "tokenizer"):
        value = raw.get(key)
        if isinstance(value, str) and value not in ("bundled", "demo") and (key == "data" or looks_like_path(value)):
            out[key] = str(Path(value).expanduser().absolute())
    cache = raw.get("cache")
    if isinstance(cache, dict) and isinstance(cache.get("dir"), str):
        out["cache"] = {**cache, "dir": str(Path(cache["dir"]).expanduser().absolute())}
    return out


def smoke_space(space: SearchSpace) -> SearchSpace:
    """`--smoke`: the smallest sweep that still exercises every part (all arms, ASHA, retries)."""
    raw = copy.deepcopy(space.raw)
    raw["scales"] = list(space.scales[:1])
    train = raw.setdefault("train", {})
    train.update(max_steps=16, max_tokens=None, eval_interval=4, val_max_proteins=24, final_eval=False)
    search = raw.setdefault("search", {})
    search.update(trials_per_study=3, grace_period=4, reduction_factor=2)
    raw["name"] = f"{space.name}-smoke"
    return parse_space(raw, space.source)


def with_tracker(space: SearchSpace, tracker: str | None) -> SearchSpace:
    """`--tracker`: the space with `tracking.tracker` set to one of TRACKERS or NO_TRACKER
    (None: unchanged)."""
    if tracker is None:
        return space
    raw = copy.deepcopy(space.raw)
    raw["tracking"] = {**(raw.get("tracking") or {}), "tracker": None if tracker == NO_TRACKER else tracker}
    return parse_space(raw, space.source)


def with_search_replicates(space: SearchSpace, replicates: int | None) -> SearchSpace:
    """`--search-replicates R`: the space with `search.search_replicates` set (None: unchanged)."""
    if replicates is None:
        return space
    raw = copy.deepcopy(space.raw)
    raw["search"] = {**(raw.get("search") or {}), "search_replicates": replicates}
    return parse_space(raw, space.source)


def dump_space(space: SearchSpace, path: Path) -> None:
    write_atomic(path, yaml.safe_dump(space.raw, sort_keys=False))

