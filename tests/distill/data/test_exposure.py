"""Teacher exposure: what the teacher trained on, read from a sequence file, an ID list or the demo teacher's
record, and counted against held-out proteins."""

from __future__ import annotations

import json

import pytest

from kdsweep.distill.data.batches import BUNDLED_DATA, file_sha256
from kdsweep.distill.data.exposure import (DEMO_RECORD, UNKNOWN, check_teacher_train_data, demo_teacher_split, exposure,
                                             fasta_ids, format_exposure, load_teacher_data, split_of)
from kdsweep.distill.data.splits import SplitSpec
from kdsweep.distill.errors import DataError


def test_fasta_ids_answer_to_the_first_word_and_uniprot_accessions():
    assert fasta_ids("sp|P69905|HBA_HUMAN Hemoglobin subunit alpha") == {"sp|P69905|HBA_HUMAN", "P69905", "HBA_HUMAN"}
    assert fasta_ids("UniRef50_Q6GZX4 some protein") == {"UniRef50_Q6GZX4"} and fasta_ids("") == set()


def test_sequences_or_ids_counted_against_held_out_proteins(tmp_path):
    held = {"val": ["MKVLA", "GGGGS"], "test": ["MKTAYIAK", "WWWW", "PPPPPP"]}
    (tmp_path / "t.fasta").write_text(">a\nmktayiak\n>b\nGGGGS\n")
    seqs = load_teacher_data(str(tmp_path / "t.fasta"))
    assert not seqs.by_id and set(seqs.sequences) == {"MKTAYIAK", "GGGGS"}
    got = exposure(seqs, held)
    assert (got["val"]["exact"], got["test"]["exact"], got["test"]["n"]) == (1, 1, 3)
    data = tmp_path / "data.fasta"
    data.write_text(">sp|P1|A_HUMAN x\nMKVLA\n>sp|P2|B\nGGGGS\n>p3\nMKTAYIAK\n>p4\nWWWW\n>p5\nPPPPPP\n")
    (tmp_path / "ids.txt").write_text("P1\np4\n\nunrelated\n")
    ids = load_teacher_data(str(tmp_path / "ids.txt"))
    assert ids.by_id and ids.ids == {"P1", "p4", "unrelated"}
    assert exposure(ids, held, data) == {"val": {"n": 2, "exact": 1}, "test": {"n": 3, "exact": 1}}
    with pytest.raises(DataError, match="ID list; IDs can only be matched against a FASTA"):
        exposure(ids, held, None)
    line = format_exposure(got, "t.fasta")
    assert line.startswith("teacher exposure (t.fasta): test: 1 of 3 proteins in it verbatim, near-duplicate leakage")
    assert UNKNOWN in format_exposure(None)


def test_a_missing_file_is_named_before_any_work(tmp_path):
    with pytest.raises(DataError, match="teacher_train_data: .*nowhere.fasta: file not found"):
        check_teacher_train_data(str(tmp_path / "nowhere.fasta"))
    check_teacher_train_data("demo")  # the shipped teacher has its record


def test_the_demo_teacher_saw_no_held_out_protein_of_the_default_split():
    """The shipped demo teacher was trained on the train set of the bundled data's default (cluster) split, and
    its record says so (distill/teacher/demo.py writes it): counted against that split's val and test proteins,
    it saw none of them verbatim, and its near-duplicate leakage is the split's own."""
    record = json.loads(DEMO_RECORD.read_text())["data"]
    assert record["data_sha256"] == file_sha256(BUNDLED_DATA) and record["part"] == "train"
    data, split = demo_teacher_split()
    assert data == "bundled" and split == SplitSpec() and split.method == "cluster"
    held = {k: v for k, v in split_of("bundled", SplitSpec()).items() if k != "train"}
    got = exposure(load_teacher_data("demo"), held)
    assert (got["test"]["n"], got["val"]["n"]) == (923, 841)  # docs/benchmarks.md, the cluster split
    assert got["test"]["exact"] == got["val"]["exact"] == 0, got
    assert got["test"]["ge50"] < 0.05, got  # the cluster split's own near-duplicate leakage (docs/demo.md: 2.2 %)
