"""Every input of a run, checked before any work: tokenizer, teacher, vocabularies, sizes, data, output.

`check_inputs(cfg)` is what the sweep driver runs for each scale before Ray
starts (sweeps/preflight.py), so a missing file or a size the model cannot
take is one message and exit 2 instead of a traceback in every trial. It loads
the teacher's *config*, not its weights, and reads and splits the data once
(the tokenized split is cached on disk, so trials reuse it). `kdsweep train`
makes the same checks with the loaded models, through the same functions,
before it writes anything.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from distill.config import TrainConfig
from distill.data import prepare_data
from distill.errors import ConfigError, DataError
from distill.models import (
    check_vocab,
    load_teacher_config,
    load_tokenizer,
    n_positions,
    resolve_teacher,
    student_config,
    student_sizes,
)
from distill.splits import SplitSpec


def check_positions(cfg: TrainConfig, positions: int, model: str) -> None:
    """block_size and max_eval_tokens must fit the model's position table (else an index error mid-run)."""
    for key in ("block_size", "max_eval_tokens"):
        value = getattr(cfg, key)
        if value is not None and value > positions:
            raise ConfigError(f"{key}: {value} exceeds the {model}'s n_positions {positions}; "
                              f"allowed: at most {positions}")


def check_inputs(cfg: TrainConfig) -> dict:
    """Raise a one-line error for anything of `cfg` that would fail the run; returns the data's provenance."""
    teacher = resolve_teacher(cfg.teacher)
    tokenizer_name = cfg.tokenizer or teacher
    t_config = load_teacher_config(teacher)
    tokenizer = load_tokenizer(tokenizer_name)
    check_vocab(tokenizer, t_config, tokenizer_name=tokenizer_name)
    s_config = student_config(t_config, dropout=cfg.dropout,
                              **student_sizes(cfg.scale, cfg.n_layer, cfg.n_head, cfg.n_embd))
    check_vocab(tokenizer, t_config, s_config)
    check_positions(cfg, n_positions(t_config), "teacher")
    data = prepare_data(cfg.data, tokenizer, column=cfg.sequence_column, split=SplitSpec.from_config(cfg),
                        block_size=cfg.block_size)
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
