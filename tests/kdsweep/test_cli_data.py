"""`kdsweep data report`: split sizes and leakage of both split methods; bad input exits 2 with the message."""

import json

import pytest

from kdsweep.cli import main
from kdsweep.distill.run.data_report import data_report, format_data_report
from tests.fixtures import requires_mmseqs


def test_bundled_report_needs_no_mmseqs(no_mmseqs, capsys):
    assert main(["data", "report", "bundled", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["records"], report["duplicates"], report["proteins"]) == (20000, 1199, 18801)
    hashed, clustered = report["methods"]["hash"], report["methods"]["cluster"]
    assert hashed["sizes"] == {"train": 16981, "val": 910, "test": 910} and hashed["clusters"] is None
    assert clustered["sizes"] == {"train": 17037, "val": 841, "test": 923} and clustered["clusters"] == 9821
    assert clustered["clustering"].startswith("shipped: ")
    # NOTES-data.md measured 28.0 % / 12.1 % / 2.2 % for the hash split's test proteins.
    assert [round(100 * hashed["leakage"]["test"][k], 1) for k in ("ge50", "ge90", "full")] == [28.0, 12.1, 2.2]
    assert clustered["leakage"]["test"]["ge50"] < 0.03 and clustered["leakage"]["val"]["ge50"] < 0.03
    # The cluster split removes near-duplicates, not remote homology: 24.2 % of its test proteins still share
    # >= 10 % of their 8-mers with train (hash split: 71.5 %); shuffled residues share none.
    assert round(100 * clustered["leakage"]["test"]["kmer8_ge10"], 1) == 24.2
    assert round(100 * hashed["leakage"]["test"]["kmer8_ge10"], 1) == 71.5
    assert clustered["shuffled_kmer8"] == {"val": 0.0, "test": 0.0} and report["teacher_train"] is None


@requires_mmseqs
def test_report_of_user_data_as_a_table(homolog_fasta, capsys):
    assert main(["data", "report", str(homolog_fasta), "--identity", "0.6"]) == 0
    out = capsys.readouterr().out
    assert "records 218, empty 0, duplicates 0 -> 218 proteins" in out
    assert "cluster (MMseqs2 0.6/0.8)" in out and "\nhash " in out and ">= 50 % / >= 90 % / all" in out
    assert "near-duplicate leakage at 20-mers" in out and "8-mer share (remote-homology indicator" in out
    report = data_report(str(homolog_fasta), identity=0.6)
    lines = out.splitlines()
    rows = {"hash": (lines[5], lines[6]), "cluster": (lines[7], lines[8])}  # val row, then test row
    for method, (val_line, test_line) in rows.items():
        m = report["methods"][method]
        assert val_line.split()[-7:-4] == [str(m["sizes"][n]) for n in ("train", "val", "test")]
        for name, line in (("val", val_line), ("test", test_line)):
            assert line.split()[-4:] == [name, "/".join(f"{100 * m['leakage'][name][k]:.1f}" for k in ("ge50", "ge90",
                                                                                                         "full")),
                                         f"{100 * m['leakage'][name]['kmer8_ge10']:.1f}",
                                         f"{100 * m['shuffled_kmer8'][name]:.1f}"]
    # homologs on both sides of the hash split share 8-mers; shuffled, they (nearly) never do
    assert report["methods"]["hash"]["leakage"]["test"]["kmer8_ge10"] > 0.3
    assert report["methods"]["hash"]["shuffled_kmer8"]["test"] < 0.05
    assert "teacher exposure: teacher's training data unknown" in out
    # The report's own clustering came from the cache the CLI run filled; the table is the same.
    assert "clusters: mmseqs: mmseqs easy-linclust" in out and report["methods"]["cluster"]["clustering"].startswith("cache: ")
    def same(text):  # all but the clusters line (where the clustering came from)
        return [ln for ln in text.splitlines() if not ln.startswith("clusters: ")]

    assert same(format_data_report(report)) == same(out)


@requires_mmseqs
def test_teacher_exposure_from_sequences_or_ids(homolog_fasta, tmp_path, capsys):
    """A teacher that trained on the hash split's train set plus 3 of its test proteins; the same
    teacher given as an ID list is matched on the FASTA headers (exact matches only)."""
    from kdsweep.distill.data.batches import read_proteins, split_proteins
    from kdsweep.distill.data.splits import SplitSpec

    seqs = read_proteins(homolog_fasta, "sequence", None).sequences
    split = split_proteins(seqs, SplitSpec("hash"))[0]
    seen = split["train"] + split["test"][:3]
    (tmp_path / "teacher.fasta").write_text("".join(f">t{i}\n{s}\n" for i, s in enumerate(seen)))
    report = data_report(str(homolog_fasta), teacher_train=str(tmp_path / "teacher.fasta"))
    hashed = report["methods"]["hash"]["teacher_exposure"]
    assert hashed["test"]["exact"] == 3 and hashed["val"]["exact"] == 0
    assert hashed["val"]["ge50"] == report["methods"]["hash"]["leakage"]["val"]["ge50"]  # the split's own train
    ids = {s: title.split()[0] for title, s in _records(homolog_fasta)}
    (tmp_path / "teacher.txt").write_text("\n".join(ids[s] for s in seen) + "\n")
    assert main(["data", "report", str(homolog_fasta), "--teacher-train", str(tmp_path / "teacher.txt")]) == 0
    out = capsys.readouterr().out
    assert "hash                       test  3 of" in out and "(ID list: exact matches only)" in out


def _records(path):
    from Bio.SeqIO.FastaIO import SimpleFastaParser

    with open(path) as fh:
        return list(SimpleFastaParser(fh))


@pytest.mark.parametrize("args, needle", [
    (["bundled", "--teacher-train", "nowhere.fasta"], "teacher_train_data: nowhere.fasta: file not found"),
    (["missing.fasta"], "missing.fasta: data file not found"),
    (["bundled", "--identity", "1.5"], "cluster_identity: got 1.5, allowed: 0 < cluster_identity <= 1"),
    (["bundled", "--coverage", "-0.1"], "cluster_coverage: got -0.1, allowed: 0 <= cluster_coverage <= 1"),
])
def test_bad_input_exits_2(args, needle, capsys):
    assert main(["data", "report", *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_user_data_without_mmseqs_exits_2(small_fasta, no_mmseqs, capsys):
    assert main(["data", "report", str(small_fasta)]) == 2
    err = capsys.readouterr().err
    assert "mmseqs not found" in err and "apt-get install mmseqs2" in err and "split_method: hash" in err
