"""Deterministic train/val/test split by a stable hash of each item (method §2).

A protein lands in the same split on every machine, run and Python version:
the split depends only on SHA-256 of its sequence (not on file order, not on
`random`, not on Python's salted `hash`). Within a split, items are ordered by
the same hash, so "the first N val proteins" is a fixed subset too.

Caveat (data/SOURCES.md): the bundled UniProt sample is a search benchmark full
of homolog families, so a hash split puts close homologs on both sides of it;
held-out perplexity is therefore optimistic compared with a cluster split.
"""

from __future__ import annotations

import hashlib
from typing import Sequence, TypeVar

T = TypeVar("T")
SPLITS = ("train", "val", "test")


def stable_unit(key: bytes) -> float:
    """Map bytes to a float in [0, 1) via the first 8 bytes of SHA-256."""
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64


def split_items(items: Sequence[T], keys: Sequence[bytes], fractions: tuple[float, float, float]) -> dict[str, list[T]]:
    """Assign each item to train/val/test by its key's stable hash; each split is hash-ordered."""
    f_train, f_val, _ = fractions
    buckets: dict[str, list[tuple[float, T]]] = {s: [] for s in SPLITS}
    for item, key in zip(items, keys, strict=True):
        u = stable_unit(key)
        name = "train" if u < f_train else "val" if u < f_train + f_val else "test"
        buckets[name].append((u, item))
    return {s: [item for _, item in sorted(b, key=lambda x: x[0])] for s, b in buckets.items()}


def split_sequences(seqs: Sequence[str], fractions: tuple[float, float, float]) -> dict[str, list[str]]:
    return split_items(seqs, [s.encode() for s in seqs], fractions)
