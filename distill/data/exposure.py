"""Teacher exposure: how many val/test proteins the teacher saw in its own training (method §7).

The split keeps the student's train set apart from val and test; nothing keeps the
teacher's. A teacher trained on the held-out proteins (ProtGPT2 on UniRef50, the old demo
teacher on another split's train set) scores them too well, which flatters every
ppl_ratio and kl_teacher alike. Given the teacher's training data, its exposure is
measured like a split's leakage (`distill.data.leakage.Reference.exposure`): exact matches,
near-duplicate leakage at 20-mers and the 8-mer share.

`teacher_train_data` (a search-space key, `kdsweep data report --teacher-train`) is one of

* `demo`: the bundled demo teacher's own record (`train_record.json` names the data and the
  split whose train set it was trained on);
* a sequence file (FASTA, parquet, datasets folder: `distill.data.sequences.read_sequences`);
* an ID list (`.txt`, `.ids`, `.list`: one ID per line), matched against the FASTA headers of
  the run's data (the first word, and the accession of a `db|ACCESSION|NAME` word); exact
  matches only, since IDs carry no sequence to compare.

Without it, tables say "teacher's training data unknown".
"""

from __future__ import annotations

import functools
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from Bio.SeqIO.FastaIO import SimpleFastaParser

from kdsweep.distill import ASSETS
from kdsweep.distill.data.batches import existing_data_path, read_proteins, split_proteins
from kdsweep.distill.data.leakage import REMOTE_KEY, teacher_exposure
from kdsweep.distill.data.sequences import is_fasta, read_sequences, read_text
from kdsweep.distill.data.splits import SplitSpec
from kdsweep.distill.errors import DataError

DEMO = "demo"
ID_SUFFIXES = (".txt", ".ids", ".list")
UNKNOWN = "teacher's training data unknown"
DEMO_RECORD = ASSETS / "demo-teacher" / "train_record.json"


@dataclass(frozen=True)
class TeacherData:
    """What the teacher trained on: sequences, or IDs (exact matching only)."""

    source: str  # as the user gave it, for the tables
    sequences: tuple[str, ...] = ()
    ids: frozenset[str] = frozenset()

    @property
    def by_id(self) -> bool:
        return bool(self.ids)


def demo_teacher_split() -> tuple[str, SplitSpec]:
    """(data, split) whose train set the shipped demo teacher was trained on, from its record."""
    record = json.loads(DEMO_RECORD.read_text()).get("data")
    if not record:
        raise DataError(f"{DEMO_RECORD}: no `data` record: the demo teacher's training data is unknown")
    return record["data"], SplitSpec(record["split_method"], tuple(record["split"]),
                                     record["cluster_identity"] or SplitSpec.identity,
                                     record["cluster_coverage"] or SplitSpec.coverage)


def fasta_ids(title: str) -> set[str]:
    """IDs a FASTA title answers to: its first word and, for 'sp|P12345|NAME_HUMAN', P12345 and NAME_HUMAN."""
    word = title.split(maxsplit=1)[0] if title.strip() else ""
    return {word, *word.split("|")[1:]} - {""}


def ids_by_sequence(path: Path) -> dict[str, set[str]]:
    """{sequence (upper-case): IDs of every FASTA record holding it} (duplicates merge their IDs)."""
    out: dict[str, set[str]] = {}
    for title, seq in SimpleFastaParser(io.StringIO(read_text(path))):
        out.setdefault(seq.upper().replace(" ", ""), set()).update(fasta_ids(title))
    return out


@functools.lru_cache(maxsize=4)  # the demo's teacher record and its space name the same split: read it once
def split_of(data: str, split: SplitSpec, column: str = "sequence", tokenizer=None) -> dict[str, list[str]]:
    """{"train", "val", "test": sequences} of a data file under a split, read as a run reads it (do not
    modify the result: it is cached)."""
    proteins = read_proteins(existing_data_path(data), column, tokenizer)
    return split_proteins(proteins.sequences, split)[0]


def check_teacher_train_data(spec: str) -> None:
    """Before any work: `spec` names something that exists (the demo record, or a file)."""
    if spec == DEMO:
        demo_teacher_split()
    elif not Path(spec).expanduser().exists():
        raise DataError(f"teacher_train_data: {spec}: file not found (allowed: {DEMO!r}, a sequence file, or an ID "
                        f"list {'/'.join(ID_SUFFIXES)})")


def load_teacher_data(spec: str) -> TeacherData:
    """`spec` (see the module docstring) -> TeacherData."""
    if spec == DEMO:
        data, split = demo_teacher_split()
        return TeacherData(f"demo teacher: the train set of {data} under the {split.describe()} split",
                           tuple(split_of(data, split)["train"]))
    check_teacher_train_data(spec)
    path = Path(spec).expanduser()
    if path.suffix in ID_SUFFIXES:
        ids = frozenset(w for line in read_text(path).splitlines() if (w := line.strip()))
        return TeacherData(str(path), ids=ids)
    return TeacherData(str(path), tuple(read_sequences(path).sequences))


def exposure(teacher: TeacherData, heldout: Mapping[str, Sequence[str]], data_path: Path | None = None) -> dict:
    """{split: {"n", "exact", and with sequences "ge50", "ge90", "full", REMOTE_KEY}} of the held-out
    proteins against the teacher's training data. An ID list needs `data_path`, a FASTA file."""
    if not teacher.by_id:
        return teacher_exposure(teacher.sequences, heldout)
    if data_path is None or not is_fasta(data_path):
        raise DataError(f"teacher_train_data: {teacher.source} is an ID list; IDs can only be matched against a "
                        "FASTA data file's headers")
    ids = ids_by_sequence(data_path)
    return {name: {"n": len(seqs), "exact": sum(bool(ids.get(s, set()) & teacher.ids) for s in seqs)}
            for name, seqs in heldout.items()}


def format_exposure(result: Mapping | None, source: str | None = None) -> str:
    """One line for every table's notes: the teacher's exposure, or that it is unknown."""
    if result is None:
        return f"teacher exposure: {UNKNOWN} (give teacher_train_data; the split protects the student only)"
    parts = []
    for name in ("test", "val"):
        fig = result[name]
        line = f"{name}: {fig['exact']} of {fig['n']} proteins in it verbatim"
        if "ge50" in fig:
            line += (f", near-duplicate leakage at 20-mers {100 * fig['ge50']:.1f} % >=50 % / {100 * fig['ge90']:.1f} % "
                     f">=90 %, 8-mer share {100 * fig[REMOTE_KEY]:.1f} %")
        parts.append(line)
    return f"teacher exposure ({source}): " + "; ".join(parts)
