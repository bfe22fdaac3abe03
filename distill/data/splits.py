"""Deterministic train/val/test split by a stable hash (method §2): per protein, or per cluster.

A protein lands in the same split on every machine, run and Python version: the
split depends only on SHA-256 of a sequence (not on file order, not on `random`,
not on Python's salted `hash`). Within a split, proteins are ordered by the hash
of their own sequence, so "the first N val proteins" is a fixed subset too.

Two methods (`split_method` in the config):

* ``hash``: each protein goes where the hash of its own sequence sends it. Close
  homologs land on both sides: on the bundled UniProt sample (a search benchmark
  full of homolog families) 28 % of test proteins share >= 50 % of their 20-mers
  with train, so held-out perplexity rewards memorization.
* ``cluster`` (default): proteins are clustered with MMseqs2 (`distill.data.homology`)
  and each whole cluster goes where the hash of its representative's sequence
  sends it, so no cluster is split across train/val/test. A singleton cluster
  lands exactly where the hash split puts its protein. `distill.data.leakage` measures
  what remains: 2.2 % of the bundled test proteins (docs/benchmarks.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence, TypeVar

T = TypeVar("T")
SPLITS = ("train", "val", "test")
SplitMethod = Literal["cluster", "hash"]


@dataclass(frozen=True)
class SplitSpec:
    """How to split a protein set: the method, the fractions and the clustering thresholds."""

    method: SplitMethod = "cluster"
    fractions: tuple[float, float, float] = (0.90, 0.05, 0.05)
    identity: float = 0.5  # MMseqs2 --min-seq-id (cluster method only)
    coverage: float = 0.8  # MMseqs2 -c (cluster method only)

    @classmethod
    def from_config(cls, cfg) -> "SplitSpec":
        return cls(cfg.split_method, tuple(cfg.split), cfg.cluster_identity, cfg.cluster_coverage)

    def describe(self) -> str:
        """'cluster (MMseqs2 0.5/0.8)' or 'hash': the split kind as tables print it."""
        return f"cluster (MMseqs2 {self.identity:g}/{self.coverage:g})" if self.method == "cluster" else "hash"


def stable_unit(key: bytes) -> float:
    """Map bytes to a float in [0, 1) via the first 8 bytes of SHA-256."""
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64


def split_items(items: Sequence[T], keys: Sequence[bytes], fractions: tuple[float, float, float],
                groups: Sequence[bytes] | None = None) -> dict[str, list[T]]:
    """Assign items to train/val/test by the stable hash of their group key; each split is ordered by
    the hash of the item's own key. Without `groups` every item is its own group."""
    f_train, f_val, _ = fractions
    buckets: dict[str, list[tuple[float, T]]] = {s: [] for s in SPLITS}
    for item, key, group in zip(items, keys, keys if groups is None else groups, strict=True):
        g = stable_unit(group)
        name = "train" if g < f_train else "val" if g < f_train + f_val else "test"
        buckets[name].append((stable_unit(key), item))
    return {s: [item for _, item in sorted(b, key=lambda x: x[0])] for s, b in buckets.items()}


def split_sequences(seqs: Sequence[str], fractions: tuple[float, float, float],
                    representative: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """Hash split of unique sequences, or cluster split when `representative` maps each
    sequence to its cluster representative's sequence."""
    keys = [s.encode() for s in seqs]
    groups = None if representative is None else [representative[s].encode() for s in seqs]
    return split_items(seqs, keys, fractions, groups)
