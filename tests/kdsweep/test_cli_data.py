"""`kdsweep data report`: split sizes and leakage of both split methods; bad input exits 2 with the message."""

import json

import pytest

from distill.data_report import data_report, format_data_report
from kdsweep.cli import main
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


@requires_mmseqs
def test_report_of_user_data_as_a_table(homolog_fasta, capsys):
    assert main(["data", "report", str(homolog_fasta), "--identity", "0.6"]) == 0
    out = capsys.readouterr().out
    assert "records 218, empty 0, duplicates 0 -> 218 proteins" in out
    assert "cluster (MMseqs2 0.6/0.8)" in out and "\nhash " in out and ">= 50 % / >= 90 % / all" in out
    report = data_report(str(homolog_fasta), identity=0.6)
    rows = {m: line for m, line in zip(("hash", "cluster"), out.splitlines()[5:7])}
    for method, line in rows.items():
        sizes = report["methods"][method]["sizes"]
        assert line.split()[-5:-2] == [str(sizes[n]) for n in ("train", "val", "test")]
    # The report's own clustering came from the cache the CLI run filled; the table is the same.
    assert "clusters: mmseqs: mmseqs easy-linclust" in out and report["methods"]["cluster"]["clustering"].startswith("cache: ")
    assert format_data_report(report).splitlines()[:-1] == out.splitlines()[:-1]


@pytest.mark.parametrize("args, needle", [
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
