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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distill.config import FIELDS as TRAIN_FIELDS
from distill.config import TrainConfig, config_from_dict, did_you_mean, read_yaml_mapping
from distill.errors import ConfigError
from distill.models import load_scales
from distill.numbers import parse_number
from distill.teacher_cache import STORAGE_DTYPES
from sweeps.storage import storage_url_problem

SEARCH_SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"

BASELINE = "baseline"
# arm -> (uncertainty weighting on, calibration smoothing on)   method §6
ARMS = {BASELINE: (False, False), "uncertainty": (True, False), "calibration": (False, True), "both": (True, True)}
ENHANCED_ARMS = tuple(a for a in ARMS if a != BASELINE)
SEARCHABLE = ("lr", "warmup_steps", "temperature", "alpha", "smoothing")
DIST_TYPES = ("loguniform", "uniform", "int", "choice")
EXECUTORS = ("local", "ray_train")
TOP_KEYS = ("name", "description", "teacher", "tokenizer", "data", "scales", "arms", "params", "scale_params",
            "arm_params", "train", "search", "resources", "tracking", "cache")
SEARCH_DEFAULTS = {"trials_per_study": 4, "max_concurrent": 2, "seed": 0, "grace_period": 20, "reduction_factor": 2,
                   "max_failures": 2, "executor": "local", "storage_url": None, "startup_trials": None,
                   "early_stopping": True}
RESOURCE_DEFAULTS = {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0.0}
TRACKERS = ("mlflow", "wandb")
NO_TRACKER = "none"  # `--tracker none`: off, whatever the space says
# mlflow_uri null: $MLFLOW_TRACKING_URI, else the sweep's own mlflow.db (sweeps/trackers.py).
# log_student: also store each completed trial's student (its weights) with the tracker's run.
TRACKING_DEFAULTS = {"tracker": None, "mlflow_uri": None, "wandb_project": "kdsweep", "log_student": False}
# The teacher cache (distill/teacher_cache.py, sweeps/cache.py): on by default. dir null = a
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


@dataclass(frozen=True)
class Study:
    """One (scale, arm) study: its name and its own distributions."""

    scale: str
    arm: str
    params: dict[str, Dist]

    @property
    def name(self) -> str:
        return f"{self.scale}/{self.arm}"

    @property
    def uncertainty(self) -> bool:
        return ARMS[self.arm][0]

    @property
    def smooths(self) -> bool:
        return ARMS[self.arm][1]


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
            "uncertainty": study.uncertainty,
            "smoothing": None,
            **params,
            "output_dir": output_dir,
            **extra,
        }
        if not study.smooths:
            values["smoothing"] = None
        return config_from_dict(values, source=f"trial config of {study.name}")

    def study(self, name: str) -> Study:
        return next(s for s in self.studies if s.name == name)

    @property
    def total_trials(self) -> int:
        return len(self.studies) * self.search["trials_per_study"]

    @property
    def search_seed(self) -> int:
        """The training seed of every search trial (`train.seed`, default 0)."""
        return int(self.train.get("seed", TrainConfig.seed))

    def replicate_seeds(self, n: int) -> list[int]:
        """n training seeds for replicates, disjoint from the search seed (method §6): a replicate
        with the search seed would re-run the lucky search trial itself."""
        return [self.search_seed + 1 + k for k in range(n)]


class _Problems(list):
    """The problems found so far, each a line naming its key."""

    def unknown(self, where: str, key: str, allowed) -> None:
        self.append(f"{where}{key}: unknown key{did_you_mean(key, allowed)}; allowed: {', '.join(allowed)}")


def _parse_dist(key: str, raw: Any, p: _Problems) -> Dist | None:
    if not isinstance(raw, dict):
        p.append(f"{key}: expected a mapping like {{type: loguniform, low: 1e-4, high: 1e-3}}, got {raw!r}")
        return None
    kind = raw.get("type")
    if kind not in DIST_TYPES:
        p.append(f"{key}.type: got {kind!r}, allowed: {', '.join(DIST_TYPES)}")
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
        return Dist("choice", values=tuple(values))
    low, high = parse_number(raw.get("low")), parse_number(raw.get("high"))
    if low is None or high is None:
        p.append(f"{key}: {kind} needs numeric low and high (got low={raw.get('low')!r}, high={raw.get('high')!r})")
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
            p.append(f"{key}: value {v!r} out of range ({e.problems[0].removeprefix(f'{name}: ')})")
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


def _parse_targets(raw: dict, p: _Problems) -> tuple[list, list]:
    """`scales` and `arms`: what is distilled."""
    known_scales = load_scales()
    scales = raw.get("scales")
    if not isinstance(scales, list) or not scales:
        p.append("scales: required, a non-empty list of scale names; known: " + ", ".join(known_scales))
        scales = []
    for i, s in enumerate(scales):
        if s not in known_scales:
            p.append(f"scales[{i}]: unknown scale {s!r}; known: {', '.join(known_scales)}")
    arms = raw.get("arms", list(ARMS))
    if not isinstance(arms, list) or not arms:
        p.append(f"arms: a non-empty list; allowed: {', '.join(ARMS)}")
        arms = []
    for i, a in enumerate(arms):
        if a not in ARMS:
            p.append(f"arms[{i}]: unknown arm {a!r}; allowed: {', '.join(ARMS)}")
    for key, seq in (("scales", scales), ("arms", arms)):
        if len(set(map(str, seq))) != len(seq):
            p.append(f"{key}: listed twice: {sorted({x for x in seq if seq.count(x) > 1})}")
    return scales, arms


def _parse_searched(raw: dict, scales: list, arms: list, p: _Problems):
    """`params`, `scale_params`, `arm_params`: the distributions, and where smoothing is searched."""
    base = _parse_params("params", raw.get("params"), p)
    given = raw.get("params") if isinstance(raw.get("params"), dict) else {}
    missing = [k for k in ("lr", "warmup_steps", "temperature", "alpha") if k not in given]
    if missing:
        p.append(f"params: must give a distribution for {', '.join(missing)} (searched in every arm)")
    per_scale = {}
    for s, spec in (raw.get("scale_params") or {}).items():
        if s not in scales:
            p.append(f"scale_params.{s}: not one of this space's scales ({', '.join(map(str, scales))})")
        per_scale[s] = _parse_params(f"scale_params.{s}", spec, p)
    per_arm = {}
    for a, spec in (raw.get("arm_params") or {}).items():
        if a not in ARMS:
            p.append(f"arm_params.{a}: unknown arm; allowed: {', '.join(ARMS)}")
            continue
        per_arm[a] = _parse_params(f"arm_params.{a}", spec, p)
        if "smoothing" in per_arm[a] and not ARMS[a][1]:
            p.append(f"arm_params.{a}.smoothing: the {a} arm does not smooth; smoothing is searched only in "
                     "calibration and both")
    smoothing_arms = [a for a in arms if a in ARMS and ARMS[a][1]]
    if "smoothing" in base and not smoothing_arms:
        p.append("params.smoothing: no arm in `arms` smooths (calibration or both); remove the smoothing range")
    for a in smoothing_arms:
        has = "smoothing" in base or "smoothing" in per_arm.get(a, {}) or any(
            "smoothing" in v for v in per_scale.values())
        if not has:
            p.append(f"params.smoothing: required because arm {a!r} smooths (e.g. {{type: loguniform, low: 0.01, high: 0.2}})")
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


def _parse_search(raw: dict, p: _Problems) -> dict:
    search = _merged(raw, "search", SEARCH_DEFAULTS, p)
    for k in ("trials_per_study", "max_concurrent", "grace_period", "max_failures"):
        v = search[k]
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if k == "max_failures" else 1):
            p.append(f"search.{k}: got {v!r}, allowed: an integer >= {0 if k == 'max_failures' else 1}")
    if not isinstance(search["reduction_factor"], (int, float)) or search["reduction_factor"] < 2:
        p.append(f"search.reduction_factor: got {search['reduction_factor']!r}, allowed: a number >= 2")
    if not isinstance(search["early_stopping"], bool):
        p.append(f"search.early_stopping: got {search['early_stopping']!r}, allowed: true (ASHA per study) or "
                 "false (every trial trains its full budget)")
    if not isinstance(search["seed"], int):
        p.append(f"search.seed: got {search['seed']!r}, allowed: an integer")
    st = search["startup_trials"]
    if st is not None and (not isinstance(st, int) or isinstance(st, bool) or st < 0):
        p.append(f"search.startup_trials: got {st!r}, allowed: null (a third of trials_per_study, at most 10) "
                 "or an integer >= 0")
    if search["executor"] not in EXECUTORS:
        p.append(f"search.executor: got {search['executor']!r}, allowed: {', '.join(EXECUTORS)}")
    if search["storage_url"] is not None and (problem := storage_url_problem(search["storage_url"])):
        p.append(f"search.storage_url: {problem}")
    return search


def _parse_resources(raw: dict, executor: str, p: _Problems) -> dict:
    resources = _merged(raw, "resources", RESOURCE_DEFAULTS, p)
    if not isinstance(resources["workers"], int) or resources["workers"] < 1:
        p.append(f"resources.workers: got {resources['workers']!r}, allowed: an integer >= 1")
    cpus = parse_number(resources["cpus_per_worker"])
    if cpus is None or cpus <= 0:
        p.append(f"resources.cpus_per_worker: got {resources['cpus_per_worker']!r}, allowed: a number > 0")
    gpus = parse_number(resources["gpus_per_worker"])
    if gpus is None or gpus < 0:
        p.append(f"resources.gpus_per_worker: got {resources['gpus_per_worker']!r}, allowed: a number >= 0")
    if resources["workers"] != 1 and executor == "local":
        p.append("resources.workers: > 1 needs search.executor: ray_train (DDP across workers)")
    return resources


def _parse_cache(raw: dict, p: _Problems) -> dict:
    """`cache`: whether trials read a teacher cache built before they start, stored how and where."""
    cache = _merged(raw, "cache", CACHE_DEFAULTS, p)
    if not isinstance(cache["enabled"], bool):
        p.append(f"cache.enabled: got {cache['enabled']!r}, allowed: true or false")
    if cache["dtype"] not in STORAGE_DTYPES:
        p.append(f"cache.dtype: got {cache['dtype']!r}, allowed: {', '.join(STORAGE_DTYPES)}")
    if cache["dir"] is not None and not isinstance(cache["dir"], str):
        p.append(f"cache.dir: got {cache['dir']!r}, allowed: null (beside the sweeps) or a folder path")
    gpus = cache["gpus"]
    if gpus is not None and (parse_number(gpus) is None or parse_number(gpus) < 0):
        p.append(f"cache.gpus: got {gpus!r}, allowed: null (one GPU if trials use GPUs) or a number >= 0")
    return cache


def _parse_tracking(raw: dict, p: _Problems) -> dict:
    tracking = _merged(raw, "tracking", TRACKING_DEFAULTS, p)
    if tracking["tracker"] is not None and tracking["tracker"] not in TRACKERS:
        p.append(f"tracking.tracker: got {tracking['tracker']!r}, allowed: null (none), {', '.join(TRACKERS)}")
    if tracking["mlflow_uri"] is not None and not isinstance(tracking["mlflow_uri"], str):
        p.append(f"tracking.mlflow_uri: expected a tracking URI string or null, got {tracking['mlflow_uri']!r}")
    if not isinstance(tracking["wandb_project"], str) or not tracking["wandb_project"]:
        p.append(f"tracking.wandb_project: expected a W&B project name, got {tracking['wandb_project']!r}")
    if not isinstance(tracking["log_student"], bool):
        p.append(f"tracking.log_student: expected true or false, got {tracking['log_student']!r}")
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
            p.append(f"{key}: expected a string, got {raw[key]!r}")
    scales, arms = _parse_targets(raw, p)
    base, per_scale, per_arm = _parse_searched(raw, scales, arms, p)
    train = _parse_train(raw, p)
    search = _parse_search(raw, p)
    resources = _parse_resources(raw, search["executor"], p)
    cache = _parse_cache(raw, p)
    tracking = _parse_tracking(raw, p)
    if p:
        raise ConfigError(p, f"search space {source}")

    studies = []
    for s in scales:
        for a in arms:
            params = {**base, **per_scale.get(s, {}), **per_arm.get(a, {})}
            if not ARMS[a][1]:
                params.pop("smoothing", None)
            studies.append(Study(s, a, params))
    return SearchSpace(
        name=raw.get("name") or Path(source).stem,
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
        source=source,
        raw=copy.deepcopy(raw),
    )


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML (a bare name means one shipped in search_spaces/)."""
    path = Path(path)
    if not path.exists() and not path.suffix and (SEARCH_SPACES_DIR / f"{path}.yaml").is_file():
        path = SEARCH_SPACES_DIR / f"{path}.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: search space file not found")
    return parse_space(read_yaml_mapping(path), str(path))


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


def dump_space(space: SearchSpace, path: Path) -> None:
    path.write_text(yaml.safe_dump(space.raw, sort_keys=False))

