"""Typed, validated configuration of one distillation run.

A `TrainConfig` is built from a YAML mapping (plus `key=value` overrides) by
`load_config` / `config_from_dict`. Every problem is collected and reported at
once, naming the key and what is allowed, before any model or data is touched.
The same dataclass is what a sweep trial fills in with sampled values and what
`kdsweep sweep export` writes back out.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import math
import re
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import yaml

from kdsweep.distill.data.splits import SplitMethod, SplitSpec
from kdsweep.distill.errors import ConfigError, shown
from kdsweep.distill.files.atomic import write_atomic
from kdsweep.distill.files.numbers import parse_number
from kdsweep.distill.files.reading import load_yaml, read_yaml
from kdsweep.distill.models import load_scales

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
    """One distillation run (method §2-§5). Each field's docstring is its documentation:
    `kdsweep train --help` lists them (`config_reference`), with the default and what is allowed."""

    # ---- models ---------------------------------------------------------
    teacher: str = "demo"
    """The teacher: "demo" (the bundled CPU demo teacher), a local folder, or a Hugging Face hub id
    such as "nferruz/ProtGPT2"."""
    tokenizer: str | None = None
    """Tokenizer folder or hub id; null = the teacher's own tokenizer."""
    teacher_cache: str | None = None
    """A teacher cache folder (`kdsweep cache build`, or a sweep whose space enables `cache:`) read
    instead of running the teacher: its stored last hidden states times the teacher's head
    (method §4). null = the live teacher. Its key must match this run's."""
    scale: str | None = "demo-s"
    """Student size: a preset name from distill/assets/scales.yaml, or null with n_layer, n_head and
    n_embd all set (explicit sizes override the preset's values)."""
    n_layer: int | None = None
    """Student transformer blocks; null = the scale's."""
    n_head: int | None = None
    """Student attention heads; null = the scale's."""
    n_embd: int | None = None
    """Student width (a multiple of n_head); null = the scale's."""
    dropout: float = 0.1
    """The student's dropout (embeddings, attention, residual)."""
    # ---- data -----------------------------------------------------------
    data: str = "bundled"
    """Protein sequences (FASTA, parquet, a datasets folder); "bundled" = the UniProt sample shipped in
    distill/assets/data."""
    sequence_column: str = "sequence"
    """The column holding the sequences in a table (parquet, datasets)."""
    split: tuple[float, float, float] = _SPLIT.fractions
    """train / val / test fractions of the split (method §2)."""
    split_method: SplitMethod = _SPLIT.method
    """"cluster": whole MMseqs2 clusters go to one split (needs `mmseqs`, except for the bundled data
    at the default thresholds, whose clusters are shipped); "hash": per protein, so close homologs
    land on both sides (distill/data/splits.py)."""
    cluster_identity: float = _SPLIT.identity
    """MMseqs2 --min-seq-id of the cluster split."""
    cluster_coverage: float = _SPLIT.coverage
    """MMseqs2 -c of the cluster split."""
    block_size: int = 512
    """Tokens per training sequence (proteins are packed into blocks of this length)."""
    max_eval_tokens: int | None = None
    """Held-out proteins longer than this many tokens are truncated for scoring (null = the student's
    n_positions). Recorded in every metrics file."""
    val_max_proteins: int | None = 256
    """Early-stopping validation uses the first N val proteins in hash order (a fixed, deterministic
    subset); null = the whole val split."""
    # ---- loss (method §3) -------------------------------------------------
    temperature: float = 2.0
    """Softmax temperature tau of the soft (KL) term (method §3.1)."""
    alpha: float = 0.5
    """Weight of the hard (cross-entropy) term; the soft term gets 1 - alpha (method §3.7)."""
    uncertainty: bool = False
    """Weight each position's KL by the teacher's entropy (method §3.4)."""
    smoothing: float | None = None
    """Calibration smoothing factor lambda of the teacher's distribution (method §3.2); null = off."""
    weight_norm: WeightNorm = "mask"
    """Denominator of the soft term (method §3.5): "mask" = the number of scored positions (the
    study's), "weight" = the sum of the uncertainty weights."""
    loss_impl: LossImpl = "fused"
    """"fused": the loss from hidden states and LM heads, no (B, L, V) logits (method §3,
    distill/loss/fused.py); "logits": from both models' logits (distill/loss/kd.py), the reference, and
    the one for a teacher whose logits are not a linear head of its last hidden state."""
    # ---- optimisation (method §4) -----------------------------------------
    lr: float = 1e-3
    """Peak learning rate of AdamW (linear warmup, then linear decay to 0; method §4)."""
    weight_decay: float = 0.01
    """AdamW weight decay (matrices only)."""
    warmup_steps: int = 0
    """Steps of linear learning-rate warmup."""
    max_steps: int = 200
    """Optimizer steps of the run (unless max_tokens is set)."""
    max_tokens: int | None = None
    """Token budget; when set it overrides max_steps: steps = ceil(max_tokens / (batch_size *
    block_size))."""
    grad_clip: float = 1.0
    """Gradient norm clipping threshold."""
    batch_size: int = 32
    """Effective batch in sequences (blocks) per optimizer step, across all workers. Accumulation =
    batch_size / (micro_batch_size * world_size), which must be whole."""
    micro_batch_size: int = 8
    """Sequences per worker per forward pass."""
    # ---- evaluation, checkpoints, runtime -------------------------------
    eval_interval: int = 50
    """Steps between held-out validations (and checkpoints; early stopping judges these)."""
    eval_batch_size: int = 16
    """Sequences per forward pass when scoring held-out proteins."""
    keep_checkpoints: int = 2
    """Checkpoints kept in the run folder (the newest)."""
    save_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    """The dtype the final student is saved in (`<run>/student/`): fp32, or half the bytes in bf16 /
    fp16 (a copy is converted; training and the final evaluation keep the run's own precision)."""
    precision: Precision = "auto"
    """Training precision: "auto" = bf16 (else fp16) autocast on CUDA, fp32 on the CPU."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train: "auto" = CUDA when visible, else the CPU."""
    seed: int = 0
    """Seed of the student's initialisation, data order and dropout."""
    output_dir: str = "runs/train"
    """The run folder: log, checkpoints, metrics.json, student/."""
    final_eval: bool = True
    """Score the test split with every method §5 metric when training ends."""
    gen_min_residues: int = 10_000
    """aa_kl_natural at final eval (method §5): full-length samples (stopping at <|endoftext|>, at most
    gen_max_new_tokens tokens), drawn in batches of gen_batch_size until they hold this many standard
    residues."""
    gen_max_new_tokens: int | None = None
    """Most tokens per sample of aa_kl_natural; null = the student's n_positions - 1."""
    gen_batch_size: int = 32
    """Samples drawn at a time for aa_kl_natural."""
    inject_nan_at_step: int | None = None
    """Fault injection (tests): make the loss non-finite at this step, so that the divergence path
    (status "diverged") is tested end to end, also in Ray."""
    inject_inf_val_at_step: int | None = None
    """Fault injection (tests): make the held-out val ppl non-finite at the evaluation of this step (a
    model whose loss is finite but whose predictions on held-out proteins are not)."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance (written by `kdsweep sweep export`); never read by training, copied into
    the run's outputs."""

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


# What each key allows beyond its type: key -> (test of its value, what is allowed). One place for
# both the check (`_range_problems`) and the documentation (`config_reference`, `kdsweep train --help`).
_BOUNDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lr": (lambda v: v > 0 and math.isfinite(v), "a finite number > 0"),
    "alpha": (lambda v: 0.0 <= v <= 1.0, "0 <= alpha <= 1"),
    "temperature": (lambda v: 0 < v < math.inf, "a finite number > 0"),
    "smoothing": (lambda v: v is None or 0.0 <= v <= 1.0, "null (off) or 0 <= smoothing <= 1"),
    "dropout": (lambda v: 0.0 <= v < 1.0, "0 <= dropout < 1"),
    "weight_decay": (lambda v: 0 <= v < math.inf, "a finite number >= 0"),
    "warmup_steps": (lambda v: v >= 0, ">= 0"),
    "max_steps": (lambda v: v >= 1, ">= 1"),
    "max_tokens": (lambda v: v is None or v >= 1, "null or >= 1"),
    "grad_clip": (lambda v: 0 < v < math.inf, "a finite number > 0"),
    "seed": (lambda v: 0 <= v < SEED_LIMIT, "0 <= seed < 2**32 (numpy's and torch's seeds)"),
    "block_size": (lambda v: v >= 2, ">= 2"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "micro_batch_size": (lambda v: v >= 1, ">= 1"),
    "eval_interval": (lambda v: v >= 1, ">= 1"),
    "eval_batch_size": (lambda v: v >= 1, ">= 1"),
    "keep_checkpoints": (lambda v: v >= 1, ">= 1"),
    "val_max_proteins": (lambda v: v is None or v >= 1, "null or >= 1"),
    "max_eval_tokens": (lambda v: v is None or v >= 2, "null or >= 2"),
    "gen_min_residues": (lambda v: v >= 1, ">= 1"),
    "gen_max_new_tokens": (lambda v: v is None or v >= 1, "null (full length) or >= 1"),
    "gen_batch_size": (lambda v: v >= 1, ">= 1"),
    "split": (lambda fr: all(0 <= x <= 1 for x in fr) and abs(sum(fr) - 1.0) < 1e-6 and fr[0] > 0 and fr[1] > 0,
              "three fractions train/val/test in [0, 1] summing to 1, with train > 0 and val > 0"),
    "cluster_identity": (lambda v: 0.0 < v <= 1.0, "0 < cluster_identity <= 1 (MMseqs2 --min-seq-id)"),
    "cluster_coverage": (lambda v: 0.0 <= v <= 1.0, "0 <= cluster_coverage <= 1 (MMseqs2 -c)"),
    **{k: (lambda v: v is None or v >= 1, "null or >= 1") for k in ("n_layer", "n_head", "n_embd")},
}


def _range_problems(c: TrainConfig) -> list[str]:
    """Checks of each value (`_BOUNDS`), then across values; each message names the key and what is allowed."""
    p: list[str] = []

    def need(ok: bool, msg: str) -> None:
        if not ok:
            p.append(msg)

    for key, (ok, allowed) in _BOUNDS.items():
        value = getattr(c, key)
        need(ok(value), f"{key}: got {list(value) if isinstance(value, tuple) else value}, allowed: {allowed}")
    need(c.micro_batch_size <= c.batch_size and c.batch_size % max(c.micro_batch_size, 1) == 0,
         f"batch_size: {c.batch_size} is not a whole multiple of micro_batch_size {c.micro_batch_size}")
    need(not (c.final_eval and c.split[2] == 0),
         "split: the test fraction is 0 but final_eval is true (it scores the test split); "
         "give the test split a fraction > 0 or set final_eval: false")
    explicit = [c.n_layer, c.n_head, c.n_embd]
    need(c.scale is not None or all(v is not None for v in explicit),
         "scale: null requires n_layer, n_head and n_embd to be set")
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
    """Read a YAML file that must hold a mapping (distill.files.reading: size, UTF-8, each key once,
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


@functools.cache
def field_docs() -> dict[str, str]:
    """{key: its documentation}: the string literal after each TrainConfig field (an attribute
    docstring), read from the class's source."""
    body = ast.parse(textwrap.dedent(inspect.getsource(TrainConfig))).body[0].body
    return {node.target.id: " ".join(doc.value.value.split()) for node, doc in zip(body, body[1:])
            if isinstance(node, ast.AnnAssign) and isinstance(doc, ast.Expr)
            and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)}


def config_reference(width: int = 100) -> str:
    """Every key of a run's config with its default, what it allows and its documentation: the
    epilog of `kdsweep train --help`."""
    defaults, docs = TrainConfig(), field_docs()
    lines = ["config keys (in a --config YAML file, or --set KEY=VALUE; null is YAML's None):"]
    for key in FIELDS:
        allowed = _BOUNDS[key][1] if key in _BOUNDS else _allowed(_HINTS[key])
        lines.append(f"  {key} (default: {_shown_default(getattr(defaults, key))}; allowed: {allowed})")
        lines += textwrap.wrap(docs[key], width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines) + "\n"


def _shown_default(value: Any) -> str:
    """A default as it is written in YAML: null, true, [0.8, 0.1, 0.1], {}."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(list(value) if isinstance(value, tuple) else value)
