"""Read protein sequences from FASTA (plain/gzip) or tables, validate and deduplicate (method §2).

Three input kinds are recognised:

* FASTA, plain or gzip (`.fa/.fasta/.faa/.fas` optionally `.gz`), parsed with
  Biopython's `SimpleFastaParser`;
* a table with a sequence column: parquet file, or a directory saved with
  Hugging Face `datasets` (`save_to_disk`);
* a pre-tokenized parquet with an `input_ids` column (the format of ProtGPT2's
  UR50 shards): rows of token ids, handled by `distill.data.batches`.

Every record is upper-cased and checked against the 25 IUPAC amino-acid
letters; the first bad record raises a `DataError` naming the file, the record
number (1-based) and the offending characters. Empty records are dropped and
identical sequences deduplicated (first occurrence kept, order preserved).
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path

from Bio.SeqIO.FastaIO import SimpleFastaParser

from kdsweep.distill.errors import ConfigError, DataError
from kdsweep.distill.files.reading import decode_utf8

# 20 standard amino acids + B (D/N), Z (E/Q), X (any), U (selenocysteine), O (pyrrolysine).
IUPAC_AA = frozenset("ACDEFGHIKLMNPQRSTVWYBZXUO")
FASTA_SUFFIXES = (".fa", ".fasta", ".faa", ".fas", ".fa.gz", ".fasta.gz", ".faa.gz", ".fas.gz")


@dataclass(frozen=True)
class SequenceSet:
    """Clean, unique protein sequences read from one source."""

    source: str
    sequences: list[str]
    n_records: int  # records read, before dropping empties and duplicates
    n_empty: int
    n_duplicates: int


def read_text(path: Path) -> str:
    """The file's text: UTF-8 (a BOM, as some editors write, dropped; ASCII is UTF-8), or a DataError
    naming the first bad byte's offset (in the decompressed stream for .gz)."""
    with gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb") as fh:
        data = fh.read()
    try:
        return decode_utf8(data, str(path))
    except ConfigError as e:
        raise DataError(str(e)) from None


def check_sequence(seq: str, source: str, record: int, name: str = "") -> str:
    """Upper-case `seq` and reject letters outside the 25 IUPAC amino-acid codes."""
    seq = seq.strip().upper()
    bad = sorted(set(seq) - IUPAC_AA)
    if bad:
        label = f" ({name[:60]})" if name else ""
        raise DataError(
            f"{source}: record {record}{label} contains non-IUPAC characters {''.join(bad)!r}; "
            f"allowed: the 25 IUPAC amino-acid letters {''.join(sorted(IUPAC_AA))}"
        )
    return seq


def read_fasta(path: Path) -> list[str]:
    """All records of a FASTA file, validated, in file order (empties kept as '')."""
    try:
        text = read_text(path)
    except (gzip.BadGzipFile, EOFError, OSError) as e:
        raise DataError(f"{path}: not a readable FASTA file ({e})") from None
    first = next((ln for ln in text.splitlines() if ln.strip()), None)
    if first is None:
        return []
    if not first.startswith(">"):
        raise DataError(f"{path}: malformed FASTA: record 1 does not start with a '>' header line (got {first[:40]!r})")
    out = []
    for i, (title, seq) in enumerate(SimpleFastaParser(io.StringIO(text)), start=1):
        out.append(check_sequence(seq, str(path), i, title))
    return out


def read_table(path: Path, column: str) -> list[str]:
    """Sequences from a parquet file or a `datasets.save_to_disk` directory."""
    if path.is_dir():
        try:
            import datasets
        except ImportError:
            raise DataError(f"{path}: reading a Hugging Face datasets directory needs `pip install kdsweep[hf]`") from None
        try:
            table = datasets.load_from_disk(str(path))
        except Exception as e:  # datasets raises many types for a wrong folder
            raise DataError(f"{path}: not a Hugging Face datasets directory ({e})") from None
        if isinstance(table, datasets.DatasetDict):
            raise DataError(f"{path}: holds several splits ({', '.join(table)}); point data at one split's folder")
        names = table.column_names
        values = table[column] if column in names else None
    else:
        import pyarrow.parquet as pq

        try:
            pt = pq.read_table(path)
        except Exception as e:
            raise DataError(f"{path}: not a readable parquet file ({e})") from None
        names = pt.column_names
        values = pt.column(column).to_pylist() if column in names else None
    if values is None:
        raise DataError(f"{path}: no column {column!r} (columns: {', '.join(names)}); set sequence_column")
    out = []
    for i, v in enumerate(values, start=1):
        if v is not None and not isinstance(v, str):
            raise DataError(f"{path}: record {i} in column {column!r} is {type(v).__name__}, expected a string")
        out.append(check_sequence(v or "", str(path), i))
    return out


def is_fasta(path: Path) -> bool:
    return path.name.lower().endswith(FASTA_SUFFIXES)


def dedupe(seqs: list[str]) -> tuple[list[int], int]:
    """Indices of the first occurrence of each non-empty sequence (in order), and the number of empties."""
    first: dict[str, int] = {}
    n_empty = 0
    for i, s in enumerate(seqs):
        if not s:
            n_empty += 1
        else:
            first.setdefault(s, i)
    return list(first.values()), n_empty


def read_sequences(path: str | Path, column: str = "sequence") -> SequenceSet:
    """Read, validate, drop empties and deduplicate the proteins of one file or folder."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: data file not found")
    if is_fasta(path):
        raw = read_fasta(path)
    elif path.is_dir() or path.suffix == ".parquet":
        raw = read_table(path, column)
    else:
        raise DataError(
            f"{path}: unknown data format; allowed: FASTA ({', '.join(FASTA_SUFFIXES)}), "
            "a .parquet table, or a Hugging Face datasets directory"
        )
    keep, n_empty = dedupe(raw)
    unique = [raw[i] for i in keep]
    if not unique:
        raise DataError(f"{path}: empty dataset: no non-empty protein sequences ({len(raw)} records read)")
    return SequenceSet(str(path), unique, len(raw), n_empty, len(raw) - n_empty - len(unique))
