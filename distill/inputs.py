"""Every input of a run, checked before any work: tokenizer, teacher, vocabularies, sizes, data, output.

`check_inputs(cfg)` is what the sweep driver runs for each scale before Ray
starts (sweeps/preflight.py), so a missing file or a size the model cannot
take is one message and exit 2 instead of a traceback in every trial. It opens
what a trial opens, short of loading weights: the teacher's config, the headers of
its safetensors weights (a missing or truncated file fails here, not in 12 trials),
the tokenizer, whose vocabulary must match the teacher's own tokenizer token by token
(a permuted vocabulary passes a size check and makes the distillation loss compare
unrelated tokens), the memory the student's training needs against the machine's,
and the data, read and split once (the tokenized split is cached on disk, so trials
reuse it). `kdsweep train` makes the same checks through `load_run_inputs`, before
it builds a model or writes anything.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from transformers import GPT2LMHeadModel

from kdsweep.distill.config import TrainConfig
from kdsweep.distill.data.batches import ProteinData, prepare_data, tokenizer_fingerprint
from kdsweep.distill.data.splits import SplitSpec
from kdsweep.distill.errors import ConfigError, DataError, ModelError, shown
from kdsweep.distill.files.numbers import human_bytes
from kdsweep.distill.models import (
    check_vocab,
    load_teacher_config,
    load_tokenizer,
    n_positions,
    resolve_teacher,
    student_config,
    student_sizes,
)

# Files a model folder keeps its tokenizer in (any one of them means the folder has one).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# A safetensors header is a few KB to a few MB; a larger length field means a damaged file.
MAX_SAFETENSORS_HEADER = 100 << 20
# Memory one training process holds per student parameter, at the least: fp32 weights, their
# gradients and AdamW's two moments (activations and the teacher come on top).
TRAINING_BYTES_PER_PARAMETER = 16


@dataclass
class RunInputs:
    """What a run reads before any model weights: the teacher's name and config, the tokenizer
    (its vocabulary checked against the teacher's) and the data, split and packed."""

    teacher_name: str
    teacher_config: object
    tokenizer: object
    data: ProteinData


def load_run_inputs(cfg: TrainConfig, *, check_memory: bool = True) -> RunInputs:
    """The teacher's name and config, the tokenizer and the data of a run, each checked
    (`_check_models`; `check_memory=False` leaves the memory check out)."""
    teacher_name = resolve_teacher(cfg.teacher)
    teacher_config, tokenizer = _check_models(cfg, teacher_name, check_memory=check_memory)
    data = prepare_data(cfg.data, tokenizer, column=cfg.sequence_column, split=SplitSpec.from_config(cfg),
                        block_size=cfg.block_size)
    return RunInputs(teacher_name, teacher_config, tokenizer, data)


def _check_models(cfg: TrainConfig, teacher_name: str, *, check_memory: bool = True):
    """(teacher config, tokenizer) of a run, with everything about them a run would trip on checked:
    the teacher's weights whole (unless a teacher cache stands in for it), the tokenizer's vocabulary
    the teacher's by size, eos and content, the student buildable and within the machine's memory."""
    tokenizer_name = cfg.tokenizer or teacher_name
    t_config = load_teacher_config(teacher_name)
    teacher_bytes = check_teacher_weights(teacher_name) if cfg.teacher_cache is None else 0
    tokenizer = load_tokenizer(tokenizer_name)
    check_vocab(tokenizer, t_config, tokenizer_name=tokenizer_name)
    check_teacher_tokenizer(tokenizer, tokenizer_name, teacher_name)
    s_config = student_config(t_config, dropout=cfg.dropout,
                              **student_sizes(cfg.scale, cfg.n_layer, cfg.n_head, cfg.n_embd))
    check_vocab(tokenizer, t_config, s_config)
    if check_memory:
        check_training_memory(cfg, s_config, teacher_bytes or 0)
    return t_config, tokenizer


# ---- the teacher's weights ------------------------------------------------------------------------


def check_teacher_weights(teacher_name: str) -> int | None:
    """A local teacher folder holds whole weights: every safetensors file (one, or the shards its index
    names) as long as its header says. Returns the bytes of the teacher's tensors (None for a hub id,
    checked when it is downloaded; pickled `.bin` weights count their file size)."""
    folder = Path(teacher_name).expanduser()
    if not folder.is_dir():
        return None
    if (folder / SAFETENSORS).is_file():
        return safetensors_bytes(folder / SAFETENSORS)
    if (folder / SAFETENSORS_INDEX).is_file():
        index = folder / SAFETENSORS_INDEX
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:
            raise ModelError(f"{index}: not a safetensors index ({str(e)[:200]})") from None
        return sum(safetensors_bytes(folder / shard) for shard in shards)
    for name in PICKLED_WEIGHTS:
        if (folder / name).is_file():
            return (folder / name).stat().st_size
    raise ModelError(f"teacher directory {folder} holds no weights ({SAFETENSORS}, {SAFETENSORS_INDEX} or "
                     f"{PICKLED_WEIGHTS[0]}); copy the teacher's weights there")


def safetensors_bytes(path: Path) -> int:
    """The bytes of the tensors in a safetensors file, read from its header (8-byte length, JSON);
    a ModelError when the file is missing, not safetensors, or shorter than its header says."""
    if not path.is_file():
        raise ModelError(f"{path}: weights file not found (named by its folder's {SAFETENSORS_INDEX})")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < n <= min(size - 8, MAX_SAFETENSORS_HEADER):
            raise ModelError(f"{path}: not a whole safetensors file ({size:,} bytes, header length "
                             f"{n if n >= 0 else 'missing'}); copy the teacher's weights again")
        try:
            header = json.loads(fh.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
            raise ModelError(f"{path}: damaged safetensors header ({str(e)[:200]})") from None
    if 8 + n + end > size:
        raise ModelError(f"{path}: truncated: its header describes {8 + n + end:,} bytes, the file holds "
                         f"{size:,}; copy the teacher's weights again")
    return end


# ---- vocabularies -------------------------------------------------------------------------------


def check_teacher_tokenizer(tokenizer, tokenizer_name: str, teacher_name: str) -> None:
    """A tokenizer other than the teacher's own must map every token to the same id as the teacher's
    own tokenizer (when the teacher's folder has one): the KD loss compares the two distributions id
    by id, so a permuted vocabulary, or one missing a letter, makes it silently meaningless."""
    folder = Path(teacher_name).expanduser()
    if tokenizer_name == teacher_name or not folder.is_dir() or \
            not any((folder / f).is_file() for f in TOKENIZER_FILES):
        return
    check_same_vocabulary(tokenizer, tokenizer_name, load_tokenizer(teacher_name),
                          f"the teacher's own tokenizer ({teacher_name})")


def check_same_vocabulary(tokenizer, name: str, reference, reference_name: str) -> None:
    """Two tokenizers map the same tokens to the same ids (compared by digest, then the first
    difference named), else a ModelError."""
    if tokenizer_fingerprint(tokenizer) == tokenizer_fingerprint(reference):
        return
    mine, theirs = tokenizer.get_vocab(), reference.get_vocab()
    token = next(t for t in sorted(set(mine) | set(theirs)) if mine.get(t) != theirs.get(t))
    ids = ", ".join(f"{'absent' if v is None else f'id {v}'} in {who}"
                    for v, who in ((mine.get(token), name), (theirs.get(token), reference_name)))
    raise ModelError(f"vocabulary mismatch: {name} and {reference_name} differ by content (token {shown(token)}: "
                     f"{ids}); the distillation loss compares the two models id by id: use the teacher's own "
                     "tokenizer")


# ---- memory -----------------------------------------------------------------------------------------


def student_parameters(s_config) -> tuple[int, int]:
    """(parameters, elements of the largest tensor) of the student, counted on the meta device:
    nothing is allocated, whatever the sizes."""
    with torch.device("meta"):
        model = GPT2LMHeadModel(s_config)
    sizes = [p.numel() for p in model.parameters()]
    return sum(sizes), max(sizes)


def device_memory(device: str) -> tuple[int, str]:
    """(bytes, what) of the memory a run on `device` ('auto', 'cpu', 'cuda') trains in: GPU 0's, or RAM."""
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if torch.cuda.is_available():
            return torch.cuda.get_device_properties(0).total_memory, "GPU 0"
    return psutil.virtual_memory().total, "this machine's RAM"


def check_training_memory(cfg: TrainConfig, s_config, teacher_bytes: int) -> None:
    """The least one training process holds (TRAINING_BYTES_PER_PARAMETER per student parameter, plus
    a live teacher's weights) must fit the memory it trains in; else a ModelError naming the sizes
    (n_embd=1048576 used to try to allocate 13 TB)."""
    params, _ = student_parameters(s_config)
    need = params * TRAINING_BYTES_PER_PARAMETER + teacher_bytes
    have, where = device_memory(cfg.device)
    if need > have:
        teacher = f" and the teacher's weights ({human_bytes(teacher_bytes)})" if teacher_bytes else ""
        raise ModelError(
            f"scale/n_layer/n_head/n_embd: the student (n_layer {s_config.n_layer}, n_head {s_config.n_head}, n_embd "
            f"{s_config.n_embd}: {params:,} parameters) needs at least {human_bytes(need)} for its weights, gradients and "
            f"AdamW moments ({TRAINING_BYTES_PER_PARAMETER} bytes per parameter){teacher}, but {where} has "
            f"{human_bytes(have)}; choose a smaller scale")


def check_positions(cfg: TrainConfig, positions: int, model: str) -> None:
    """block_size and max_eval_tokens must fit the model's position table (else an index error mid-run)."""
    for key in ("block_size", "max_eval_tokens"):
        value = getattr(cfg, key)
        if value is not None and value > positions:
            raise ConfigError(f"{key}: {value} exceeds the {model}'s n_positions {positions}; "
                              f"allowed: at most {positions}")


def check_inputs(cfg: TrainConfig, *, check_memory: bool = True) -> dict:
    """Raise a one-line error for anything of `cfg` that would fail the run; returns the data's provenance.
    `check_memory=False` leaves the memory check out (a sweep joining a cluster: its nodes, not this
    machine, hold the trials)."""
    inputs = load_run_inputs(cfg, check_memory=check_memory)
    check_positions(cfg, n_positions(inputs.teacher_config), "teacher")
    data = inputs.data
    if cfg.final_eval and not len(data.test):
        raise DataError(f"{data.info['data']}: the test split is empty but final_eval is true; "
                        "use more data, a larger test fraction, or final_eval: false")
    return data.info


def check_writable_dir(path: str | Path, what: str) -> Path:
    """`path` is, or can be made, a folder this process may write in; nothing is created."""
    path = Path(path).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what}: {path} is a file, not a folder")
    _check_ancestor(path, path, what)
    return path


def check_writable_file(path: str | Path, what: str) -> Path:
    """`path` names a file this process may create or replace; nothing is created."""
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        raise ConfigError(f"{what}: {path} is a folder; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{what}: {path} is not writable")
    _check_ancestor(path, path.parent, what)
    return path


def _check_ancestor(path: Path, folder: Path, what: str) -> None:
    """The nearest existing ancestor of `folder` (where `path` goes) must be a folder we can create a file in.

    Probed by creating (and at once removing) a file there: permission bits say nothing for
    root, nor for read-only mounts and pseudo file systems.
    """
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{what}: {path} cannot be created: {probe} is a file")
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".kdsweep-probe-"):
            pass
    except OSError as e:
        raise ConfigError(f"{what}: {path} is not writable ({probe}: {e.strerror})") from None
