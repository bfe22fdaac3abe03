"""Typed, validated configuration of one distillation run.

A `TrainConfig` is built from a YAML mapping (plus `key=value` overrides) by
`load_config` / `config_from_dict`. Every problem is collected and reported at
once, naming the key and what is allowed, before any model or data is touched.
The same dataclass is what a sweep trial fills in with sampled values and what
`kdsweep sweep export` writes back out.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from kdsweep.distill.atomic import write_atomic
from kdsweep.distill.errors import ConfigError, shown
from kdsweep.distill.models import load_scales
from kdsweep.distill.numbers import parse_number
from kdsweep.distill.reading import load_yaml, read_yaml
from kdsweep.distill.splits import SplitMethod, SplitSpec

Precision = Literal["auto", "fp32", "bf16", "fp16"]
WeightNorm = Literal["mask", "weight"]
LossImpl = Literal["fused", "logits"]
_SPLIT = SplitSpec()  # the split defaults live with the split
# Integers beyond 2**53 are not exact as JSON numbers or floats, and overflow numpy and torch.
MAX_CONFIG_INT = 2**53
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]+")
SEED_LIMIT = 2**32


@dataclass(frozen=True)
class TrainConfig:
    # ---- models ---------------------------------------------------------
    # "demo" = the bundled CPU demo teacher; otherwise a local directory or a
    # Hugging Face hub id such as "nferruz/ProtGPT2".
    teacher: str = "demo"
    # Tokenizer directory/id; None = the teacher's own tokenizer.
    tokenizer: str | None = None
    # A teacher cache folder (`kdsweep cache build`, or a sweep whose space enables `cache:`)
    # read instead of running the teacher: its stored last hidden states times the teacher's
    # head (method §4). None = the live teacher. Its key must match this run's.
    teacher_cache: str | None = None
    # Student: a preset name from distill/assets/scales.yaml, or explicit sizes
    # (explicit n_layer/n_head/n_embd override the preset's values).
    scale: str | None = "demo-s"
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    dropout: float = 0.1
    # ---- data -----------------------------------------------------------
    # "bundled" = the UniProt sample shipped in distill/assets/data.
    data: str = "bundled"
    sequence_column: str = "sequence"
    # train / val / test fractions of the split (method §2).
    split: tuple[float, float, float] = _SPLIT.fractions
    # "cluster": whole MMseqs2 clusters go to one split (needs `mmseqs`, except for the bundled
    # data at the default thresholds, whose clusters are shipped); "hash": per protein, so close
    # homologs land on both sides (distill/splits.py).
    split_method: SplitMethod = _SPLIT.method
    # MMseqs2 --min-seq-id and -c of the cluster split (0.5 / 0.8).
    cluster_identity: float = _SPLIT.identity
    cluster_coverage: float = _SPLIT.coverage
    block_size: int = 512
    # Held-out proteins longer than this many tokens are truncated for scoring
    # (None = the student's n_positions). Recorded in every metrics file.
    max_eval_tokens: int | None = None
    # Early-stopping validation uses the first N val proteins in hash order
    # (a fixed, deterministic subset); None = the whole val split.
    val_max_proteins: int | None = 256
    # ---- loss (method §3) -------------------------------------------------
    temperature: float = 2.0
    alpha: float = 0.5
    uncertainty: bool = False
    smoothing: float | None = None
    weight_norm: WeightNorm = "mask"
    # "fused": the loss from hidden states and LM heads, no (B, L, V) logits (method §3,
    # distill/fused_loss.py); "logits": from both models' logits (distill/loss.py), the reference,
    # and the one for a teacher whose logits are not a linear head of its last hidden state.
    loss_impl: LossImpl = "fused"
    # ---- optimisation (method §4) -----------------------------------------
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 0
    max_steps: int = 200
    # Token budget; when set it overrides max_steps:
    # steps = ceil(max_tokens / (batch_size * block_size)).
    max_tokens: int | None = None
    grad_clip: float = 1.0
    # Effective batch in sequences (blocks) per optimizer step, across all
    # workers; micro_batch_size is per worker per forward pass. Accumulation
    # = batch_size / (micro_batch_size * world_size), which must be whole.
    batch_size: int = 32
    micro_batch_size: int = 8
    # ---- evaluation, checkpoints, runtime -------------------------------
    eval_interval: int = 50
    eval_batch_size: int = 16
    keep_checkpoints: int = 2
    # The dtype the final student is saved in (`<run>/student/`): fp32, or half the bytes in bf16 /
    # fp16 (a copy is converted; training and the final evaluation keep the run's own precision).
    save_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    precision: Precision = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    output_dir: str = "runs/train"
    # Score the test split with every method §5 metric when training ends.
    final_eval: bool = True
    # aa_kl_natural at final eval (method §5): full-length samples (stopping at <|endoftext|>,
    # at most gen_max_new_tokens tokens; null = the student's n_positions - 1), drawn in
    # batches of gen_batch_size until they hold gen_min_residues standard residues.
    gen_min_residues: int = 10_000
    gen_max_new_tokens: int | None = None
    gen_batch_size: int = 32
    # Fault injection: make the loss non-finite at this step. Exists so the
    # divergence path (status "diverged") is tested end to end, also in Ray.
    inject_nan_at_step: int | None = None
    # Fault injection: make the held-out val ppl non-finite at the evaluation of this step (a model
    # whose loss is finite but whose predictions on held-out proteins are not).
    inject_inf_val_at_step: int | None = None
    # Free-form provenance (written by `kdsweep sweep export`); never read by
    # training, copied into the run's outputs.
    provenance: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["split"] = list(self.split)
        return d

    def replace(self, **changes: Any) -> "TrainConfig":
        return config_from_dict({**self.to_dict(), **changes})


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# Names users commonly type (HF Trainer, the study's scripts) that difflib cannot guess.
ALIASES = {"learning_rate": "lr", "warmup": "warmup_steps", "steps": "max_steps", "temp": "temperature",
           "smoothing_factor": "smoothing", "use_uncertainty_weighting": "uncertainty",
           "use_calibration_smoothing": "smoothing", "fp16": "precision", "bf16": "precision"}
_HINTS = typing.get_type_hints(TrainConfig)


def did_you_mean(key: Any, allowed, aliases: Mapping[str, str] | None = None) -> str:
    """" (did you mean 'x'?)" for a mistyped key, from `aliases` first, else the closest allowed name; "" if none."""
    if aliases and isinstance(key, str) and key in aliases:
        close = [aliases[key]]
    else:  # difflib is quadratic in the length: a 5 MB key is not a typo of a field name
        close = difflib.get_close_matches(str(key), list(allowed), n=1) if len(str(key)) <= 100 else []
    return f" (did you mean {close[0]!r}?)" if close else ""


def shown_key(key: Any) -> str:
    """A key as a message names it: as written when it is a plain name (letters, digits, _ . -; cut
    at 100 characters), else quoted with escapes (an empty key, a space, a colon, a \r)."""
    if not isinstance(key, str) or not _PLAIN_KEY.fullmatch(key):
        return shown(key)
    return key if len(key) <= 100 else key[:97] + "..."


def _allowed(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_allowed(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is tuple:
        return "a list of %d numbers" % len(typing.get_args(tp))
    if origin is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Return `value` converted to `tp`, or raise ValueError naming what is allowed."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(name, value, a)
            except ValueError:
                pass
        raise ValueError(f"{name}: got {shown(value)}, allowed: {_allowed(tp)}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ValueError(f"{name}: got {shown(value)}, allowed: {_allowed(tp)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name}: got {shown(value)}, allowed: true or false")
    if isinstance(value, str) and tp in (int, float) and parse_number(value) is not None:
        value = parse_number(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) <= MAX_CONFIG_INT \
                or int(value) != value:  # (a NaN fails the comparison; an inf the bound)
            raise ValueError(f"{name}: got {shown(value)}, allowed: an integer of magnitude <= 2**53")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name}: got {shown(value)}, allowed: a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{name}: got {shown(value)}, allowed: a string")
        return value
    if origin is tuple:
        n = len(typing.get_args(tp))
        if not isinstance(value, (list, tuple)) or len(value) != n:
            raise ValueError(f"{name}: got {shown(value)}, allowed: a list of {n} numbers")
        return tuple(_coerce(f"{name}[{i}]", v, float) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{name}: got {shown(value)}, allowed: a mapping")
        return dict(value)
    raise TypeError(f"unsupported config type for {name}: {tp}")  # programming error


def _range_problems(c: TrainConfig) -> list[str]:
    """Checks across values; each message names the key and the allowed range."""
    p: list[str] = []

    def need(ok: bool, msg: str) -> None:
        if not ok:
            p.append(msg)

    need(c.lr > 0 and math.isfinite(c.lr), f"lr: got {c.lr}, allowed: a finite number > 0")
    need(0.0 <= c.alpha <= 1.0, f"alpha: got {c.alpha}, allowed: 0 <= alpha <= 1")
    need(0 < c.temperature < math.inf, f"temperature: got {c.temperature}, allowed: a finite number > 0")
    need(c.smoothing is None or 0.0 <= c.smoothing <= 1.0,
         f"smoothing: got {c.smoothing}, allowed: null (off) or 0 <= smoothing <= 1")
    need(0.0 <= c.dropout < 1.0, f"dropout: got {c.dropout}, allowed: 0 <= dropout < 1")
    need(0 <= c.weight_decay < math.inf, f"weight_decay: got {c.weight_decay}, allowed: a finite number >= 0")
    need(c.warmup_steps >= 0, f"warmup_steps: got {c.warmup_steps}, allowed: >= 0")
    need(c.max_steps >= 1, f"max_steps: got {c.max_steps}, allowed: >= 1")
    need(c.max_tokens is None or c.max_tokens >= 1, f"max_tokens: got {c.max_tokens}, allowed: null or >= 1")
    need(0 < c.grad_clip < math.inf, f"grad_clip: got {c.grad_clip}, allowed: a finite number > 0")
    need(0 <= c.seed < SEED_LIMIT, f"seed: got {c.seed}, allowed: 0 <= seed < 2**32 (numpy's and torch's seeds)")
    need(c.block_size >= 2, f"block_size: got {c.block_size}, allowed: >= 2")
    need(c.batch_size >= 1, f"batch_size: got {c.batch_size}, allowed: >= 1")
    need(c.micro_batch_size >= 1, f"micro_batch_size: got {c.micro_batch_size}, allowed: >= 1")
    need(c.micro_batch_size <= c.batch_size and c.batch_size % max(c.micro_batch_size, 1) == 0,
         f"batch_size: {c.batch_size} is not a whole multiple of micro_batch_size {c.micro_batch_size}")
    need(c.eval_interval >= 1, f"eval_interval: got {c.eval_interval}, allowed: >= 1")
    need(c.eval_batch_size >= 1, f"eval_batch_size: got {c.eval_batch_size}, allowed: >= 1")
    need(c.keep_checkpoints >= 1, f"keep_checkpoints: got {c.keep_checkpoints}, allowed: >= 1")
    need(c.val_max_proteins is None or c.val_max_proteins >= 1,
         f"val_max_proteins: got {c.val_max_proteins}, allowed: null or >= 1")
    need(c.max_eval_tokens is None or c.max_eval_tokens >= 2,
         f"max_eval_tokens: got {c.max_eval_tokens}, allowed: null or >= 2")
    need(c.gen_min_residues >= 1, f"gen_min_residues: got {c.gen_min_residues}, allowed: >= 1")
    need(c.gen_max_new_tokens is None or c.gen_max_new_tokens >= 1,
         f"gen_max_new_tokens: got {c.gen_max_new_tokens}, allowed: null (full length) or >= 1")
    need(c.gen_batch_size >= 1, f"gen_batch_size: got {c.gen_batch_size}, allowed: >= 1")
    fr = c.split
    need(all(0 <= x <= 1 for x in fr) and abs(sum(fr) - 1.0) < 1e-6 and fr[0] > 0 and fr[1] > 0,
         f"split: got {list(fr)}, allowed: three fractions train/val/test in [0, 1] summing to 1, "
         "with train > 0 and val > 0")
    need(not (c.final_eval and fr[2] == 0),
         "split: the test fraction is 0 but final_eval is true (it scores the test split); "
         "give the test split a fraction > 0 or set final_eval: false")
    need(0.0 < c.cluster_identity <= 1.0,
         f"cluster_identity: got {c.cluster_identity}, allowed: 0 < cluster_identity <= 1 (MMseqs2 --min-seq-id)")
    need(0.0 <= c.cluster_coverage <= 1.0,
         f"cluster_coverage: got {c.cluster_coverage}, allowed: 0 <= cluster_coverage <= 1 (MMseqs2 -c)")
    explicit = [c.n_layer, c.n_head, c.n_embd]
    need(c.scale is not None or all(v is not None for v in explicit),
         "scale: null requires n_layer, n_head and n_embd to be set")
    for k in ("n_layer", "n_head", "n_embd"):
        v = getattr(c, k)
        need(v is None or v >= 1, f"{k}: got {v}, allowed: null or >= 1")
    if c.n_head and c.n_embd and c.n_embd % c.n_head:
        p.append(f"n_embd: {c.n_embd} is not divisible by n_head {c.n_head}")
    return p


def config_from_dict(raw: Mapping[str, Any], *, source: str = "config") -> TrainConfig:
    """Validate a mapping and build a TrainConfig; raise ConfigError listing every problem."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: expected a mapping of key: value, got {type(raw).__name__}")
    problems: list[str] = []
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in FIELDS:
            problems.append(f"{shown_key(key)}: unknown key{did_you_mean(key, FIELDS, ALIASES)}; "
                            f"allowed keys: {', '.join(sorted(FIELDS))}")
            continue
        try:
            values[key] = _coerce(key, value, _HINTS[key])
        except ValueError as e:
            problems.append(str(e))
    if not problems:
        cfg = TrainConfig(**values)
        problems = _range_problems(cfg)
        if cfg.scale is not None and cfg.scale not in load_scales():
            problems.append(f"scale: unknown scale {shown(cfg.scale)}; known: {', '.join(load_scales())}")
    if problems:
        raise ConfigError(problems, source)
    return cfg


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["lr=1e-3", "smoothing=null"]` -> {"lr": 0.001, "smoothing": None} (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {shown(pair)}: expected key=value")
        out[key.strip()] = load_yaml(value, f"--set {shown(pair)}")
    return out


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """Read a YAML file that must hold a mapping (distill.reading: size, UTF-8, each key once,
    aliases capped); errors name the file."""
    raw = read_yaml(path, what)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value at the top level, got {type(raw).__name__}")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    raw = read_yaml_mapping(path) if path is not None else {}
    raw.update(parse_overrides(overrides or []))
    return config_from_dict(raw, source=str(path) if path else "config")


def dump_config(cfg: TrainConfig, path: str | Path, header: str | None = None, omit: tuple[str, ...] = ()) -> None:
    """`cfg` as YAML at `path`, less the keys in `omit` (left at their defaults: `sweep export` omits the test-only ones)."""
    text = yaml.safe_dump({k: v for k, v in cfg.to_dict().items() if k not in omit}, sort_keys=False)
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    write_atomic(path, text)  # a full disk leaves the old file (or none), never a 0-byte config.yaml
