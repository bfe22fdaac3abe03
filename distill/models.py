"""Teacher loading, student construction from scale presets, tokenizer checks (method §1).

The teacher is any causal LM `transformers` can load from a hub id or a local
directory (`trust_remote_code=False`), returned frozen and in eval mode. The
student is a fresh `GPT2LMHeadModel` with the teacher's vocabulary, positions
and bos/eos ids. Scale presets are data (`assets/scales.yaml`), not code.
"""

from __future__ import annotations

import json
import shutil
from functools import lru_cache
from pathlib import Path

import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from kdsweep.distill import ASSETS
from kdsweep.distill.errors import ConfigError, ModelError

SCALES_FILE = ASSETS / "scales.yaml"
DEMO_TEACHER_DIR = ASSETS / "demo-teacher"
PROTGPT2_TOKENIZER_DIR = ASSETS / "protgpt2-tokenizer"


@lru_cache(maxsize=1)
def load_scales(path: Path = SCALES_FILE) -> dict[str, dict]:
    """{name: {n_layer, n_head, n_embd, ...}} from the presets file."""
    raw = yaml.safe_load(path.read_text())
    for name, spec in raw.items():
        missing = {"n_layer", "n_head", "n_embd"} - set(spec)
        if missing:
            raise ConfigError(f"{path}: scale {name!r} is missing {', '.join(sorted(missing))}")
    return raw


def resolve_teacher(teacher: str) -> str:
    """'demo' -> the bundled demo teacher folder; a path or hub id is returned as is."""
    return str(DEMO_TEACHER_DIR) if teacher == "demo" else teacher


def looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists() or name.count("/") > 1


def _load(kind: str, name: str, loader):
    """Load from a local dir or hub id with an error that says which and why."""
    if looks_like_path(name):
        path = Path(name).expanduser()
        if path.exists() and not path.is_dir():
            raise ModelError(f"{kind} directory expected: {path} is a file; give the folder that holds it")
        if not path.is_dir():
            raise ModelError(f"{kind} directory not found: {path}")
        name = str(path)
    try:
        return loader(name)
    except (OSError, ValueError) as e:
        where = "directory" if looks_like_path(name) else "hub id (no network? set HF_HUB_OFFLINE=1 and use a local directory)"
        raise ModelError(f"cannot load {kind} from {where} {name!r}: {str(e).splitlines()[0]}") from None


def load_tokenizer(name: str):
    tok = _load("tokenizer", name, lambda n: AutoTokenizer.from_pretrained(n, trust_remote_code=False))
    if tok.eos_token_id is None:
        raise ModelError(f"tokenizer {name!r} has no eos token; ProtGPT2-style data needs <|endoftext|>")
    return tok


def load_frozen_model(name: str, *, role: str, device: torch.device | str = "cpu", dtype: torch.dtype | None = None):
    """A frozen, eval-mode causal LM from a directory or hub id (method §1); `role` names it in errors."""
    model = _load(
        role,
        name,
        lambda n: AutoModelForCausalLM.from_pretrained(n, trust_remote_code=False, dtype=dtype),
    )
    model.eval().requires_grad_(False)
    return model.to(device)


def load_teacher(name: str, device: torch.device | str = "cpu", dtype: torch.dtype | None = None):
    """The frozen teacher (method §1)."""
    return load_frozen_model(name, role="teacher", device=device, dtype=dtype)


def load_teacher_config(name: str):
    """The teacher's config alone (no weights): what a check before any work needs, and all a run
    needs of the teacher besides its outputs when a teacher cache stands in for the model."""
    return _load("teacher", name, lambda n: AutoConfig.from_pretrained(n, trust_remote_code=False))


def n_positions(model_config) -> int:
    return getattr(model_config, "n_positions", None) or getattr(model_config, "max_position_embeddings")


def save_protgpt2_shaped(out: Path, *, n_layer: int, n_head: int, n_embd: int, seed: int = 0) -> Path:
    """A GPT-2 with ProtGPT2's real config (vocabulary 50,257, 1024 positions, special ids) resized to
    `n_layer` x `n_embd`, random init (seeded), saved with ProtGPT2's tokenizer files: a stand-in of
    ProtGPT2's shape for tests and benchmarks (nothing is downloaded)."""
    raw = json.loads((PROTGPT2_TOKENIZER_DIR / "config.json").read_text())
    raw.update(n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    torch.manual_seed(seed)
    GPT2LMHeadModel(GPT2Config(**raw)).save_pretrained(out)
    for f in PROTGPT2_TOKENIZER_DIR.iterdir():
        if f.name != "config.json":
            shutil.copy(f, out / f.name)
    return out


def load_saved_student(path: str, device: torch.device | str = "cpu"):
    """A student saved by `kdsweep train` (its `student/` folder), frozen for evaluation."""
    return load_frozen_model(path, role="student", device=device)


def student_config(teacher_config, *, n_layer: int, n_head: int, n_embd: int, dropout: float = 0.1) -> GPT2Config:
    """GPT-2 config with the teacher's vocab, positions and special ids (method §1)."""
    if n_embd % n_head:
        raise ConfigError(f"n_embd: {n_embd} is not divisible by n_head {n_head}")
    return GPT2Config(
        vocab_size=teacher_config.vocab_size,
        n_positions=n_positions(teacher_config),
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        bos_token_id=teacher_config.bos_token_id,
        eos_token_id=teacher_config.eos_token_id,
        activation_function="gelu_new",
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
    )


def student_sizes(scale: str | None, n_layer: int | None, n_head: int | None, n_embd: int | None) -> dict[str, int]:
    """Preset values with any explicit size overriding them."""
    base = dict(load_scales()[scale]) if scale else {}
    for k, v in (("n_layer", n_layer), ("n_head", n_head), ("n_embd", n_embd)):
        if v is not None:
            base[k] = v
    return {k: int(base[k]) for k in ("n_layer", "n_head", "n_embd")}


def build_student(teacher_config, sizes: dict[str, int], dropout: float = 0.1, seed: int | None = None) -> GPT2LMHeadModel:
    if seed is not None:
        torch.manual_seed(seed)  # initial weights depend only on the seed
    return GPT2LMHeadModel(student_config(teacher_config, dropout=dropout, **sizes))


# Checkpoints often pad the embedding past the tokenizer (e.g. 50,257 -> 50,304, a multiple of 64
# or 128); a larger gap means the tokenizer belongs to another model.
VOCAB_PADDING_TOLERANCE = 128


def check_vocab(tokenizer, teacher_config, student_config=None, *, tokenizer_name: str = "tokenizer") -> None:
    """Refuse a tokenizer/teacher/student vocabulary mismatch with a message naming both sizes.

    The tokenizer must fit the teacher's embedding (len(tokenizer) <= vocab_size, with at most
    VOCAB_PADDING_TOLERANCE padded rows) and agree on the eos id; the student must share the
    teacher's vocab_size exactly.
    """
    n_tok, v_teacher = len(tokenizer), teacher_config.vocab_size
    if n_tok > v_teacher or v_teacher - n_tok >= VOCAB_PADDING_TOLERANCE:
        raise ModelError(
            f"vocabulary mismatch: {tokenizer_name} has {n_tok} tokens but the teacher's vocab_size is "
            f"{v_teacher}; use the teacher's own tokenizer"
        )
    eos = teacher_config.eos_token_id
    if eos is not None and tokenizer.eos_token_id != eos:
        raise ModelError(
            f"vocabulary mismatch: {tokenizer_name} has eos id {tokenizer.eos_token_id} but the teacher's is {eos}"
        )
    if student_config is not None and student_config.vocab_size != v_teacher:
        raise ModelError(
            f"vocabulary mismatch: student vocab_size {student_config.vocab_size} != teacher vocab_size {v_teacher}"
        )


def teacher_logits(teacher, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The live teacher's (B, L) ids -> (B, L, V) logits, no grad.

    Training and metrics reach the teacher through `distill.teacher.source` (this model,
    or a teacher cache); its live implementation comes here for logits.
    """
    with torch.no_grad():
        return teacher(input_ids=input_ids, attention_mask=attention_mask).logits
