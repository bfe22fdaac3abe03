import gzip

import pytest

from kdsweep.distill.data.sequences import read_sequences
from kdsweep.distill.errors import DataError


def test_reads_plain_and_gzip_and_deduplicates(tmp_path):
    text = ">a\nmkv\nLL\n>b\n\n>c\nMKVLL\n>d\nACD\n"
    plain = tmp_path / "x.fasta"
    plain.write_text(text)
    gz = tmp_path / "x.fasta.gz"
    with gzip.open(gz, "wt") as fh:
        fh.write(text)
    for path in (plain, gz):
        s = read_sequences(path)
        assert s.sequences == ["MKVLL", "ACD"]  # upper-cased, multi-line joined, dup and empty dropped
        assert (s.n_records, s.n_empty, s.n_duplicates) == (4, 1, 1)


def test_bundled_sample_dedups_to_18801():
    from kdsweep.distill.data.batches import BUNDLED_DATA

    s = read_sequences(BUNDLED_DATA)
    assert s.n_records == 20000 and len(s.sequences) == 18801  # data/SOURCES.md


def test_non_iupac_letter_names_file_and_record(tmp_path):
    p = tmp_path / "bad.fasta"
    p.write_text(">ok\nMKV\n>second one\nMK1V*\n")
    with pytest.raises(DataError) as e:
        read_sequences(p)
    msg = str(e.value)
    assert "bad.fasta: record 2 (second one)" in msg and "'*1'" in msg


def test_malformed_fasta(tmp_path):
    p = tmp_path / "m.fasta"
    p.write_text("MKVLL\n>a\nMK\n")
    with pytest.raises(DataError, match="m.fasta: malformed FASTA: record 1 does not start with a '>'"):
        read_sequences(p)
    b = tmp_path / "binary.fasta.gz"
    b.write_bytes(b"\x00\x01not gzip")
    with pytest.raises(DataError, match="binary.fasta.gz: not a readable FASTA"):
        read_sequences(b)


def test_empty_and_missing(tmp_path):
    e = tmp_path / "empty.fasta"
    e.write_text(">a\n\n>b\n")
    with pytest.raises(DataError, match="empty.fasta: empty dataset"):
        read_sequences(e)
    with pytest.raises(DataError, match="data file not found"):
        read_sequences(tmp_path / "none.fasta")
    with pytest.raises(DataError, match="unknown data format"):
        (tmp_path / "x.csv").write_text("a")
        read_sequences(tmp_path / "x.csv")


def test_parquet_and_datasets_tables(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"seq": ["MKV", "mkv", "ACDE"]}), tmp_path / "t.parquet")
    assert read_sequences(tmp_path / "t.parquet", "seq").sequences == ["MKV", "ACDE"]
    with pytest.raises(DataError, match="no column 'sequence'"):
        read_sequences(tmp_path / "t.parquet")
    datasets.Dataset.from_dict({"sequence": ["MKV", "WWW"]}).save_to_disk(str(tmp_path / "ds"))
    assert read_sequences(tmp_path / "ds").sequences == ["MKV", "WWW"]
    pq.write_table(pa.table({"sequence": ["MKV", "MKZ9"]}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="bad.parquet: record 2 contains non-IUPAC"):
        read_sequences(tmp_path / "bad.parquet")


def test_a_fasta_with_a_byte_order_mark_reads_and_a_bad_byte_is_located(tmp_path):
    """Editors on Windows write a UTF-8 BOM: it used to fail with an `ascii` codec error."""
    p = tmp_path / "bom.fasta"
    p.write_bytes(b"\xef\xbb\xbf>caf\xc3\xa9 protein\nMKV\n>b\nMKL\n")
    assert read_sequences(p).sequences == ["MKV", "MKL"]
    bad = tmp_path / "bad.fasta"
    bad.write_bytes(b">a\nMKV\n>caf\xe9\nMKL\n")
    with pytest.raises(DataError, match=r"bad.fasta: not UTF-8 text: byte 0xe9 at byte offset 11 \(line 3\)"):
        read_sequences(bad)
