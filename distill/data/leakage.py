"""Leakage of a split: how much of each held-out protein already occurs in train (method §2, §7).

For every held-out protein, the share of its k-mers (overlapping windows, one per
position) that occur anywhere in the train proteins. A protein shorter than k residues
has no k-mer and counts as not leaked (its share is 0). Two figures, named for what they
measure:

* **near-duplicate leakage at 20-mers**: the share of held-out proteins with >= 50 % and
  >= 90 % of their 20-mers in train, and the share fully covered. A shared 20-mer is
  (nearly) never chance, so this counts near-copies; it says nothing about homologs that
  differ at every 20th residue.
* **8-mer share** (a remote-homology indicator): the share of held-out proteins with >= 10 %
  of their 8-mers in train. With 20^8 = 2.6e10 possible 8-mers, a residue-shuffled protein
  almost never hits train by chance (`shuffled_control`: 0 % on the bundled data), so a
  high share means related sequence remains across the split even when no near-duplicate
  does. It is an indicator, not a homology search.

The same measure of a teacher's training set against the held-out proteins is the
teacher's exposure (`teacher_exposure`): the split protects the student only.

Speed: the bundled train split holds ~7.4 M windows, far too many for a Python set
of strings. Each window is hashed to 64 bits by a multilinear hash (one fixed random
odd 64-bit multiplier per window position, arithmetic wrapping modulo 2^64), train
hashes are sorted once and held-out hashes looked up with `np.searchsorted`; about
0.5 s for a bundled split. A false "in train" needs a hash collision: two different
windows differ at some position by less than 2^5, so they collide with probability
<= 2^-59; ~1e6 held-out x 7e6 train windows give < 1e-4 expected false hits, far
below one protein's worth.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

K = 20
THRESHOLDS = (0.5, 0.9)
K_REMOTE, REMOTE_LEVEL = 8, 0.1  # the 8-mer share: proteins with >= 10 % of their 8-mers in train
REMOTE_KEY = "kmer8_ge10"
_CHUNK = 1 << 16


def _multipliers(k: int) -> np.ndarray:
    """k fixed (seeded) random odd 64-bit multipliers: identical on every machine and run."""
    return np.random.Generator(np.random.PCG64(0)).integers(0, 2**63, size=k, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def kmer_hashes(seqs: Sequence[str], k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every k-window of every sequence, and the index of its sequence.

    Returns (hashes (W,) uint64, owner (W,) int64), windows in sequence order.
    """
    mult = _multipliers(k)
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    codes = np.frombuffer("".join(seqs).encode("ascii"), dtype=np.uint8).astype(np.uint64)
    # Hash the window at every position of the concatenated string, then keep the windows that
    # lie inside one sequence. Chunks of 64 K positions keep the temporaries in cache (5x faster
    # than whole-array passes on the bundled data).
    n_pos = max(len(codes) - k + 1, 0)
    h = np.zeros(n_pos, dtype=np.uint64)
    term = np.empty(_CHUNK, dtype=np.uint64)
    for s in range(0, n_pos, _CHUNK):
        e = min(s + _CHUNK, n_pos)
        for t in range(k):
            np.multiply(codes[s + t : e + t], mult[t], out=term[: e - s])  # wraps modulo 2^64, on purpose
            h[s:e] += term[: e - s]
    n_windows = np.maximum(lengths - k + 1, 0)
    owner = np.repeat(np.arange(len(seqs), dtype=np.int64), n_windows)
    seq_start = np.cumsum(lengths) - lengths
    first_window = np.cumsum(n_windows) - n_windows
    return h[seq_start[owner] + np.arange(len(owner), dtype=np.int64) - first_window[owner]], owner


def covered_share(train_sorted: np.ndarray, heldout: Sequence[str], k: int = K) -> np.ndarray:
    """(len(heldout),) share of each held-out protein's k-windows whose hash is in `train_sorted`
    (the sorted k-window hashes of the train proteins; duplicates are harmless)."""
    h, owner = kmer_hashes(heldout, k)
    if len(train_sorted):
        hit = train_sorted[np.minimum(np.searchsorted(train_sorted, h), len(train_sorted) - 1)] == h
    else:
        hit = np.zeros(len(h), dtype=bool)
    n = np.bincount(owner, minlength=len(heldout))
    hits = np.bincount(owner, weights=hit, minlength=len(heldout))
    return np.divide(hits, n, out=np.zeros(len(heldout)), where=n > 0)


def figure(share: np.ndarray) -> dict:
    """{"n", "ge50", "ge90", "full"}: how many held-out proteins, and the share at each coverage level."""
    out = {"n": len(share)}
    for level in (*THRESHOLDS, 1.0):
        key = "full" if level == 1.0 else f"ge{round(level * 100)}"
        out[key] = float((share >= level).mean()) if len(share) else 0.0
    return out


class Reference:
    """The sorted k-mer hashes of a reference set (a split's train proteins, a teacher's training
    set) at both k, and its exact sequences: built once, looked up by many held-out sets."""

    def __init__(self, sequences: Sequence[str]):
        self.sequences = frozenset(sequences)
        self.sorted = {k: np.sort(kmer_hashes(list(sequences), k)[0]) for k in (K, K_REMOTE)}

    def leakage(self, heldout: Sequence[str]) -> dict:
        """`figure` of the 20-mer shares, plus the 8-mer share (REMOTE_KEY)."""
        out = figure(covered_share(self.sorted[K], heldout, K))
        out[REMOTE_KEY] = float((covered_share(self.sorted[K_REMOTE], heldout, K_REMOTE) >= REMOTE_LEVEL).mean()) \
            if len(heldout) else 0.0
        return out

    def exposure(self, heldout: Sequence[str]) -> dict:
        """`leakage` plus "exact": how many held-out proteins are in the reference verbatim."""
        return {**self.leakage(heldout), "exact": sum(s in self.sequences for s in heldout)}


def split_leakage(split: Mapping[str, Sequence[str]]) -> dict[str, dict]:
    """{"val": figure, "test": figure} against the train proteins of a {"train", "val", "test"} split:
    near-duplicate leakage at 20-mers and the 8-mer share."""
    ref = Reference(split["train"])
    return {name: ref.leakage(split[name]) for name in ("val", "test")}


def teacher_exposure(teacher_train: Sequence[str], heldout: Mapping[str, Sequence[str]]) -> dict[str, dict]:
    """{split: exposure} of each held-out split to a teacher's training sequences: exact matches,
    near-duplicate leakage at 20-mers and the 8-mer share, as for a split's train set."""
    ref = Reference(teacher_train)
    return {name: ref.exposure(seqs) for name, seqs in heldout.items()}


def shuffled_control(split: Mapping[str, Sequence[str]], seed: int = 0) -> dict[str, float]:
    """The 8-mer share of the held-out proteins with their residues shuffled (each protein its own
    composition, no order): what chance alone gives, so the 8-mer share can be read against it."""
    rng = np.random.default_rng(seed)
    ref = Reference(split["train"])
    shuffled = {n: ["".join(rng.permutation(list(s))) for s in split[n]] for n in ("val", "test")}
    return {n: ref.leakage(seqs)[REMOTE_KEY] for n, seqs in shuffled.items()}


LEAKAGE_WORDS = ("near-duplicate leakage at 20-mers (held-out proteins with >= 50 % / >= 90 % / all of their 20-mers "
                 "in train)")
REMOTE_WORDS = "8-mer share (remote-homology indicator: held-out proteins with >= 10 % of their 8-mers in train)"


def format_leakage(fig: Mapping) -> str:
    """'28.0 % >=50 %, 12.1 % >=90 %, 2.2 % full; 8-mer share 24.0 %' (shares of the held-out proteins;
    the 8-mer part only when the figure has it: provenance recorded before it existed has not)."""
    out = f"{100 * fig['ge50']:.1f} % >=50 %, {100 * fig['ge90']:.1f} % >=90 %, {100 * fig['full']:.1f} % full"
    return out + (f"; 8-mer share {100 * fig[REMOTE_KEY]:.1f} %" if REMOTE_KEY in fig else "")
