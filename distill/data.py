"""From a data file to training blocks and held-out batches (method §2).

* Each protein is written the ProtGPT2 way (`protgpt2_text`) and tokenized.
* Train proteins are concatenated into one token stream and cut into fixed
  blocks of `block_size` tokens (the remainder is dropped): `train_blocks`
  is a LongTensor (n_blocks, block_size). Every position of a block is a label.
* Val/test proteins are scored one per row (`HeldOut.batches`), right-padded,
  with `attention_mask` 0 on padding so metrics never count it. Proteins longer
  than `max_tokens` are truncated; `n_residues` counts the residues kept.

Tokenized splits are cached on disk (keyed by data-file hash, tokenizer and
split) so that the many trials of a sweep do not re-tokenize the same file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from distill.errors import DataError
from distill.sequences import read_sequences
from distill.splits import SPLITS, split_items, split_sequences

ASSETS = Path(__file__).parent / "assets"
BUNDLED_DATA = ASSETS / "data" / "uniprot_sample_20k.fasta.gz"
EOS_TEXT = "<|endoftext|>"
CACHE_VERSION = 1


def protgpt2_text(seq: str, line_length: int = 60) -> str:
    """ProtGPT2's format: eos, the sequence in 60-residue lines, eos (method §2)."""
    lines = [seq[i : i + line_length] for i in range(0, len(seq), line_length)]
    return f"{EOS_TEXT}\n" + "\n".join(lines) + f"\n{EOS_TEXT}"


def resolve_data_path(data: str) -> Path:
    return BUNDLED_DATA if data == "bundled" else Path(data).expanduser()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (sorted by relative path)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), separators=(",", ":"))
    return hashlib.sha256(vocab.encode()).hexdigest()[:16]


@dataclass
class HeldOut:
    """Held-out proteins, one token list per protein (hash order)."""

    ids: list[np.ndarray]  # each (n_tokens,) int64
    sequences: list[str]  # residues, for the held-out amino-acid composition
    residues_per_token: np.ndarray  # (V,) residue letters in each token id, 0 for special tokens

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, n: int | None) -> "HeldOut":
        return self if n is None else HeldOut(self.ids[:n], self.sequences[:n], self.residues_per_token)

    def batches(self, batch_size: int, max_tokens: int, pad_id: int) -> Iterator[dict[str, torch.Tensor]]:
        """Yield {"input_ids" (B, L), "attention_mask" (B, L), "n_residues" (B,)} batches.

        Proteins are sorted by length first so padding waste stays small;
        the order does not change any summed metric.
        """
        order = sorted(range(len(self.ids)), key=lambda i: len(self.ids[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            rows = [self.ids[i][:max_tokens] for i in idx]
            width = max(len(r) for r in rows)
            input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for j, r in enumerate(rows):
                input_ids[j, : len(r)] = torch.from_numpy(r)
                mask[j, : len(r)] = 1
            # Exact residues kept after truncation: sum the letters of the kept tokens.
            n_res = [int(self.residues_per_token[r].sum()) for r in rows]
            yield {"input_ids": input_ids, "attention_mask": mask, "n_residues": torch.tensor(n_res)}


@dataclass
class ProteinData:
    train_blocks: torch.Tensor  # (n_blocks, block_size) int64
    val: HeldOut
    test: HeldOut
    info: dict  # provenance: file, sha256, counts per split, tokenizer fingerprint


def _encode(tokenizer, texts: list[str]) -> list[np.ndarray]:
    if not texts:  # fast tokenizers fail on an empty batch
        return []
    enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [np.asarray(e, dtype=np.int64) for e in enc]


def _pack(stream_parts: list[np.ndarray], block_size: int, source: str) -> torch.Tensor:
    stream = np.concatenate(stream_parts) if stream_parts else np.zeros(0, dtype=np.int64)
    n_blocks = len(stream) // block_size
    if n_blocks == 0:
        raise DataError(f"{source}: the train split has {len(stream)} tokens, fewer than one block of {block_size}")
    return torch.from_numpy(stream[: n_blocks * block_size].reshape(n_blocks, block_size).copy())


def residues_per_token(tokenizer) -> np.ndarray:
    """(V,) number of amino-acid letters each token id decodes to (0 for special tokens)."""
    table = np.zeros(len(tokenizer), dtype=np.int64)
    special = set(tokenizer.all_special_ids)
    for i in range(len(tokenizer)):
        if i not in special:
            table[i] = sum("A" <= c <= "Z" for c in tokenizer.decode([i]))
    return table


def _from_sequences(path: Path, column: str, tokenizer, fractions) -> tuple[dict, dict]:
    seqs = read_sequences(path, column)
    split = split_sequences(seqs.sequences, fractions)
    out = {}
    for name in SPLITS:
        ids = _encode(tokenizer, [protgpt2_text(s) for s in split[name]])
        out[name] = (ids, split[name])
    counts = {"records": seqs.n_records, "empty": seqs.n_empty, "duplicates": seqs.n_duplicates}
    return out, counts


def _from_token_ids(path: Path, tokenizer, fractions) -> tuple[dict, dict]:
    """Pre-tokenized parquet (`input_ids` rows): split rows by a hash of their ids."""
    import pyarrow.parquet as pq

    rows = [np.asarray(r, dtype=np.int64) for r in pq.read_table(path, columns=["input_ids"]).column(0).to_pylist()]
    rows = [r for r in rows if len(r)]
    if not rows:
        raise DataError(f"{path}: empty dataset: no non-empty input_ids rows")
    vocab = len(tokenizer)
    for i, r in enumerate(rows, start=1):
        if r.min() < 0 or r.max() >= vocab:
            raise DataError(
                f"{path}: row {i} holds token id {int(r.max())} outside the tokenizer's vocabulary "
                f"(size {vocab}); was it tokenized with another tokenizer?"
            )
    split = split_items(rows, [r.tobytes() for r in rows], fractions)
    out = {}
    for name in SPLITS:
        seqs = [tokenizer.decode(r.tolist(), skip_special_tokens=True).replace("\n", "") for r in split[name]]
        out[name] = (split[name], seqs)
    return out, {"records": len(rows), "empty": 0, "duplicates": 0}


def _is_pretokenized(path: Path) -> bool:
    if path.suffix != ".parquet":
        return False
    import pyarrow.parquet as pq

    try:
        return "input_ids" in pq.read_schema(path).names
    except Exception:
        return False


def cache_dir() -> Path:
    return Path(os.environ.get("KDSWEEP_CACHE", Path.home() / ".cache" / "kdsweep"))


def load_splits(data: str, tokenizer, *, column: str, fractions) -> tuple[dict, dict]:
    """Tokenized splits {name: (ids, sequences)} and provenance, cached on disk."""
    path = resolve_data_path(data)
    if not path.exists():
        raise DataError(f"{path}: data file not found")
    digest = file_sha256(path)
    key = hashlib.sha256(
        json.dumps([CACHE_VERSION, digest, tokenizer_fingerprint(tokenizer), column, list(fractions)]).encode()
    ).hexdigest()[:24]
    cached = cache_dir() / f"splits-{key}.pt"
    if cached.is_file():
        try:
            blob = torch.load(cached, weights_only=False)
            return blob["splits"], blob["info"]
        except Exception:
            pass  # a corrupt cache entry is rebuilt below
    if _is_pretokenized(path):
        splits, counts = _from_token_ids(path, tokenizer, fractions)
    else:
        splits, counts = _from_sequences(path, column, tokenizer, fractions)
    info = {
        "data": str(path),
        "data_sha256": digest,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "split": list(fractions),
        **counts,
        **{f"n_{n}": len(splits[n][0]) for n in SPLITS},
    }
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"splits": splits, "info": info}, tmp)
    os.replace(tmp, cached)  # atomic: concurrent trials never read a half-written file
    return splits, info


def prepare_data(data: str, tokenizer, *, column: str = "sequence", fractions=(0.9, 0.05, 0.05), block_size: int = 512) -> ProteinData:
    splits, info = load_splits(data, tokenizer, column=column, fractions=fractions)
    for name in ("val",):
        if not splits[name][0]:
            raise DataError(f"{info['data']}: the {name} split is empty; use more data or a larger {name} fraction")
    train_blocks = _pack(splits["train"][0], block_size, info["data"])
    table = residues_per_token(tokenizer)
    held = {n: HeldOut(*splits[n], table) for n in ("val", "test")}
    return ProteinData(train_blocks, held["val"], held["test"], {**info, "train_blocks": len(train_blocks)})


def heldout_split(data: str, tokenizer, split: str = "test", *, column: str = "sequence", fractions=(0.9, 0.05, 0.05)) -> HeldOut:
    """One held-out split of a data file, without packing the train blocks."""
    splits, info = load_splits(data, tokenizer, column=column, fractions=fractions)
    if not splits[split][0]:
        raise DataError(f"{info['data']}: the {split} split is empty")
    return HeldOut(*splits[split], residues_per_token(tokenizer))


def heldout_from_file(data: str, tokenizer, column: str = "sequence") -> HeldOut:
    """Every protein of a file as one held-out set (no split): `kdsweep evaluate --data`."""
    return heldout_split(data, tokenizer, "val", column=column, fractions=(0.0, 1.0, 0.0))
