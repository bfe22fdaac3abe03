"""From a data file to training blocks and held-out batches (method §2).

* Each protein is written the ProtGPT2 way (`protgpt2_text`) and tokenized.
* Train proteins are concatenated into one token stream and cut into fixed
  blocks of `block_size` tokens (the remainder is dropped): `train_blocks`
  is a LongTensor (n_blocks, block_size). Every position of a block is a label.
* Val/test proteins are scored one per row (`HeldOut.batches`), right-padded,
  with `attention_mask` 0 on padding so metrics never count it. Proteins longer
  than `max_tokens` are truncated; `n_residues` counts the residues kept.

Proteins are split by `distill.data.splits` (cluster split by default: whole MMseqs2
clusters go to one side) and the split's leakage (`distill.data.leakage`) is measured
once and recorded in `ProteinData.info`, the provenance every run logs.
Pre-tokenized rows are decoded and treated as proteins: validated, deduplicated
and split exactly like sequences read from FASTA.

Tokenized splits are cached on disk (keyed by data-file hash, tokenizer, split
method, fractions and clustering thresholds) so that the many trials of a sweep do
not re-tokenize, re-cluster or re-measure the same file. The cache file
(`splits-<key>.npz`) holds data only: NumPy arrays read with `allow_pickle=False`, the
provenance as JSON text. A cache folder may be shared or copied between users, so a file
there that is not such an archive (a pickle planted under that name included) is never
executed: it reads as a damaged entry and is rebuilt over (docs/reliability.md, trusted input).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from Bio.SeqIO.FastaIO import SimpleFastaParser

from kdsweep.distill import ASSETS
from kdsweep.distill.data.homology import cluster_representatives, find_mmseqs
from kdsweep.distill.data.leakage import LEAKAGE_WORDS, REMOTE_WORDS, format_leakage, split_leakage
from kdsweep.distill.data.sequences import check_sequence, dedupe, read_sequences
from kdsweep.distill.data.splits import SPLITS, SplitSpec, split_sequences
from kdsweep.distill.errors import DataError
from kdsweep.distill.files.atomic import write_atomic
from kdsweep.distill.files.digests import cache_dir, hashing_reader, remembered, stamp
from kdsweep.distill.files.numbers import dumps

BUNDLED_DATA = ASSETS / "data" / "uniprot_sample_20k.fasta.gz"
EOS_TEXT = "<|endoftext|>"
CACHE_VERSION = 4  # 4: the split provenance holds the 8-mer share; 3: a data-only .npz (was a torch pickle)


def write_bundled_subset(path: Path, n: int, max_len: int | None = None) -> Path:
    """The first `n` bundled UniProt proteins (of at most `max_len` residues) as plain FASTA: small
    real data for tests and benchmarks."""
    with gzip.open(BUNDLED_DATA, "rt") as fh, open(path, "w") as out:
        k = 0
        for title, seq in SimpleFastaParser(fh):
            if k == n:
                break
            if max_len is None or len(seq) <= max_len:
                out.write(f">{title}\n{seq}\n")
                k += 1
    return path


def protgpt2_text(seq: str, line_length: int = 60) -> str:
    """ProtGPT2's format: eos, the sequence in 60-residue lines, eos (method §2)."""
    lines = [seq[i : i + line_length] for i in range(0, len(seq), line_length)]
    return f"{EOS_TEXT}\n" + "\n".join(lines) + f"\n{EOS_TEXT}"


def resolve_data_path(data: str) -> Path:
    return BUNDLED_DATA if data == "bundled" else Path(data).expanduser()


def existing_data_path(data: str) -> Path:
    path = resolve_data_path(data)
    if not path.exists():
        raise DataError(f"{path}: data file not found")
    if not (path.is_file() or path.is_dir()):  # a FIFO would block the first read forever
        raise DataError(f"{path}: not a regular file (a pipe, socket or device); data must be a file or a "
                        "datasets folder")
    return path


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (sorted by relative path), each file's name then
    its bytes. Computed once per version of the files (`distill.files.digests`): every trial of a sweep
    loads the same data file, which at UniRef scale is gigabytes."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    names = [str(p.relative_to(path) if path.is_dir() else p.name) for p in files]

    def compute() -> str:
        h = hashlib.sha256()
        for name, p in zip(names, files):
            h.update(name.encode())
            for chunk in hashing_reader(p):
                h.update(chunk)
        return h.hexdigest()

    return remembered(path, "data", compute, lambda: [[name, *stamp(p)] for name, p in zip(names, files)])


def tokenizer_fingerprint(tokenizer) -> str:
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), separators=(",", ":"))
    return hashlib.sha256(vocab.encode()).hexdigest()[:16]


@dataclass
class HeldOut:
    """Held-out proteins, one token list per protein (hash order)."""

    ids: list[np.ndarray]  # each (n_tokens,) int64
    sequences: list[str]  # residues, for the held-out amino-acid composition
    residues_per_token: np.ndarray  # (V,) residue letters in each token id, 0 for special tokens
    # Which split of the run's data these are ("val", "test"), so a teacher cache can find their
    # hidden states by protein index; None for proteins that are no split of it (`--data FILE`).
    split: str | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, n: int | None) -> "HeldOut":
        """The first `n` proteins (their indices stay those of the full split)."""
        return self if n is None else HeldOut(self.ids[:n], self.sequences[:n], self.residues_per_token, self.split)

    def batches(self, batch_size: int, max_tokens: int, pad_id: int) -> Iterator[dict[str, torch.Tensor]]:
        """Yield {"input_ids" (B, L), "attention_mask" (B, L), "n_residues" (B,), "protein" (B,)} batches;
        "protein" holds each row's index in this split.

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
            yield {"input_ids": input_ids, "attention_mask": mask, "n_residues": torch.tensor(n_res),
                   "protein": torch.tensor(idx, dtype=torch.long)}


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


@dataclass(frozen=True)
class Proteins:
    """The unique, validated proteins of a data file; `rows` holds their token ids when the
    file is pre-tokenized (else None: sequences are tokenized after the split)."""

    sequences: list[str]
    rows: list[np.ndarray] | None
    counts: dict  # records, empty, duplicates


def _token_rows(path: Path, tokenizer) -> Proteins:
    """Pre-tokenized parquet (`input_ids` rows, one protein per row): decode, validate, deduplicate.

    Two rows that decode to the same protein are duplicates even if tokenized differently:
    either copy in train and the other held out would be leakage.
    """
    import pyarrow.parquet as pq

    rows = [np.asarray(r, dtype=np.int64) for r in pq.read_table(path, columns=["input_ids"]).column(0).to_pylist()]
    vocab = len(tokenizer)
    for i, r in enumerate(rows, start=1):
        if len(r) and (r.min() < 0 or r.max() >= vocab):
            raise DataError(
                f"{path}: row {i} holds token id {int(r.max())} outside the tokenizer's vocabulary "
                f"(size {vocab}); was it tokenized with another tokenizer?"
            )
    texts = tokenizer.batch_decode([r.tolist() for r in rows], skip_special_tokens=True)
    seqs = [check_sequence(t.replace("\n", ""), str(path), i) for i, t in enumerate(texts, start=1)]
    keep, n_empty = dedupe(seqs)
    if not keep:
        raise DataError(f"{path}: empty dataset: no non-empty input_ids rows ({len(rows)} rows read)")
    counts = {"records": len(rows), "empty": n_empty, "duplicates": len(rows) - n_empty - len(keep)}
    return Proteins([seqs[i] for i in keep], [rows[i] for i in keep], counts)


def read_proteins(path: Path, column: str, tokenizer) -> Proteins:
    """The proteins of a FASTA / table file, or of a pre-tokenized parquet (decoded with `tokenizer`)."""
    if is_pretokenized(path):
        return _token_rows(path, tokenizer)
    seqs = read_sequences(path, column)
    return Proteins(seqs.sequences, None, {"records": seqs.n_records, "empty": seqs.n_empty,
                                           "duplicates": seqs.n_duplicates})


def split_proteins(seqs: list[str], spec: SplitSpec) -> tuple[dict[str, list[str]], dict]:
    """Split unique sequences per `spec`; the provenance records the method, thresholds and leakage."""
    info: dict = {"split_method": spec.method, "split": list(spec.fractions)}
    if spec.method == "cluster":
        clustering = cluster_representatives(seqs, spec.identity, spec.coverage, cache=cache_dir())
        split = split_sequences(seqs, spec.fractions, clustering.representative_sequences(seqs))
        info.update(cluster_identity=spec.identity, cluster_coverage=spec.coverage, clusters=clustering.n_clusters,
                    clustering=f"{clustering.source}: {clustering.header['command']} "
                               f"(mmseqs {clustering.header['mmseqs_version']})")
    else:
        split = split_sequences(seqs, spec.fractions)
        info.update(cluster_identity=None, cluster_coverage=None)
    info["leakage"] = split_leakage(split)
    info["split_note"] = split_note(spec, info["leakage"])
    return split, info


def split_note(spec: SplitSpec, leakage: dict) -> str:
    """'split: cluster (MMseqs2 0.5/0.8); near-duplicate leakage at 20-mers (...) and 8-mer share (...)
    test: ..., val: ...': the line every analysis table's notes carry."""
    return (f"split: {spec.describe()}; {LEAKAGE_WORDS}, and {REMOTE_WORDS}: "
            f"test: {format_leakage(leakage['test'])}; val: {format_leakage(leakage['val'])}")


def precluster(data: str, *, column: str, split: SplitSpec) -> None:
    """Resolve a cluster split's clustering ahead of the runs (a sweep driver, before Ray starts):
    a missing mmseqs fails once, with its install hint, and the trials find the clusters cached
    instead of each running MMseqs2."""
    if split.method != "cluster":
        return
    path = existing_data_path(data)
    if is_pretokenized(path):
        find_mmseqs()  # its rows decode with the trials' tokenizer; they cluster with mmseqs in any case
        return
    cluster_representatives(read_sequences(path, column).sequences, split.identity, split.coverage, cache=cache_dir())


def _tokenized_splits(proteins: Proteins, split: dict[str, list[str]], tokenizer) -> dict:
    """{name: (token ids per protein, sequences)}, in each split's hash order."""
    if proteins.rows is None:
        return {n: (_encode(tokenizer, [protgpt2_text(s) for s in split[n]]), split[n]) for n in SPLITS}
    row_of = dict(zip(proteins.sequences, proteins.rows))  # sequences are unique
    return {n: ([row_of[s] for s in split[n]], split[n]) for n in SPLITS}


def is_pretokenized(path: Path) -> bool:
    if path.suffix != ".parquet":
        return False
    import pyarrow.parquet as pq

    try:
        return "input_ids" in pq.read_schema(path).names
    except Exception:
        return False


def load_splits(data: str, tokenizer, *, column: str, split: SplitSpec) -> tuple[dict, dict]:
    """Tokenized splits {name: (ids, sequences)} and provenance, cached on disk."""
    path = existing_data_path(data)
    digest = file_sha256(path)
    key = hashlib.sha256(
        json.dumps([CACHE_VERSION, digest, tokenizer_fingerprint(tokenizer), column, dataclasses.astuple(split)]).encode()
    ).hexdigest()[:24]
    cached = cache_dir() / f"splits-{key}.npz"
    if cached.is_file():
        try:
            return _read_split_cache(cached)
        except DamagedCache:
            pass  # a damaged (or planted) entry is rebuilt below and replaced
    proteins = read_proteins(path, column, tokenizer)
    by_name, split_info = split_proteins(proteins.sequences, split)
    splits = _tokenized_splits(proteins, by_name, tokenizer)
    info = {
        "data": str(path),
        "data_sha256": digest,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        **split_info,
        **proteins.counts,
        **{f"n_{n}": len(splits[n][0]) for n in SPLITS},
    }
    cached.parent.mkdir(parents=True, exist_ok=True)
    _write_split_cache(cached, splits, info)
    return splits, info


class DamagedCache(Exception):
    """A split-cache file that is not the data-only archive `_write_split_cache` writes."""


def _write_split_cache(path: Path, splits: dict, info: dict) -> None:
    """Per split: its proteins' token ids end to end (`<split>.ids`, int64), where each protein
    starts and ends (`<split>.offsets`, n + 1), its sequences one per line (`<split>.sequences`,
    ASCII bytes); the provenance as JSON (`info`). Written whole or not at all (atomic)."""
    arrays = {"info": np.frombuffer(dumps(info).encode(), dtype=np.uint8)}
    for name, (ids, seqs) in splits.items():
        arrays[f"{name}.ids"] = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        arrays[f"{name}.offsets"] = np.cumsum([0] + [len(i) for i in ids], dtype=np.int64)
        arrays[f"{name}.sequences"] = np.frombuffer("\n".join(seqs).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_atomic(path, buf.getvalue())  # concurrent trials never read a half-written file


def _read_split_cache(path: Path) -> tuple[dict, dict]:
    """What `_write_split_cache` wrote; DamagedCache for anything else. Nothing in the file is
    executed: `allow_pickle=False` refuses pickles and object arrays alike."""
    try:
        with np.load(path, allow_pickle=False) as z:
            info = json.loads(z["info"].tobytes())
            splits = {}
            for name in SPLITS:
                ids, offsets = z[f"{name}.ids"], z[f"{name}.offsets"]
                text = z[f"{name}.sequences"].tobytes().decode("ascii")
                seqs = text.split("\n") if len(offsets) > 1 else []
                if ids.dtype != np.int64 or len(seqs) != len(offsets) - 1 or offsets[-1] != len(ids):
                    raise DamagedCache(f"{path}: {name} split inconsistent")
                splits[name] = ([ids[a:b] for a, b in zip(offsets[:-1], offsets[1:])], seqs)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise DamagedCache(f"{path}: {e}") from None
    if not isinstance(info, dict):
        raise DamagedCache(f"{path}: info is not a mapping")
    return splits, info


def prepare_data(data: str, tokenizer, *, column: str = "sequence", split: SplitSpec = SplitSpec(),
                 block_size: int = 512) -> ProteinData:
    splits, info = load_splits(data, tokenizer, column=column, split=split)
    for name in ("val",):
        if not splits[name][0]:
            raise DataError(f"{info['data']}: the {name} split is empty; use more data or a larger {name} fraction")
    train_blocks = _pack(splits["train"][0], block_size, info["data"])
    table = residues_per_token(tokenizer)
    held = {n: HeldOut(*splits[n], table, n) for n in ("val", "test")}
    return ProteinData(train_blocks, held["val"], held["test"], {**info, "train_blocks": len(train_blocks)})


def heldout_split(data: str, tokenizer, name: str = "test", *, column: str = "sequence",
                  split: SplitSpec = SplitSpec()) -> HeldOut:
    """One held-out split of a data file, without packing the train blocks."""
    splits, info = load_splits(data, tokenizer, column=column, split=split)
    if not splits[name][0]:
        raise DataError(f"{info['data']}: the {name} split is empty")
    return HeldOut(*splits[name], residues_per_token(tokenizer), name)


def unigram_log_probs(token_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(V,) float64 log-probabilities of a context-free token-frequency model fitted on `token_ids`
    (any shape: the train split's tokens), with add-1/2 (Krichevsky-Trofimov) smoothing so a token
    never seen in train costs a finite log(2 (N + V/2)) nats instead of infinity.

    Scored on the held-out tokens, it is the floor a student must beat: a model that knows the
    composition and nothing else (method §5)."""
    counts = torch.bincount(token_ids.reshape(-1).long().cpu(), minlength=vocab_size).double() + 0.5  # (V,)
    return (counts / counts.sum()).log()


def train_unigram(data: str, tokenizer, *, column: str = "sequence", split: SplitSpec = SplitSpec()) -> torch.Tensor:
    """(V,) log-probabilities of the unigram floor fitted on every token of the train split (method §5)."""
    splits, _ = load_splits(data, tokenizer, column=column, split=split)
    ids = splits["train"][0]
    return unigram_log_probs(torch.from_numpy(np.concatenate(ids)) if ids else torch.zeros(0, dtype=torch.long),
                             len(tokenizer))


def heldout_from_file(data: str, tokenizer, column: str = "sequence") -> HeldOut:
    """Every protein of a file as one held-out set (no split): `kdsweep evaluate --data`."""
    # Everything lands in val, so clustering would change nothing: the hash method needs no MMseqs2.
    heldout = heldout_split(data, tokenizer, "val", column=column, split=SplitSpec("hash", (0.0, 1.0, 0.0)))
    return dataclasses.replace(heldout, split=None)  # no split of a run's data: no cache holds it
