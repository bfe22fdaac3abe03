"""distill.files.digests: a file is hashed once per version; any write to it (even one that sets its mtime
back) makes the next reader hash it again."""

import hashlib
import os

import pytest

from kdsweep.distill.data.batches import file_sha256
from kdsweep.distill.files import digests


@pytest.fixture(autouse=True)
def own_memo(tmp_path, monkeypatch):
    monkeypatch.setenv("KDSWEEP_CACHE", str(tmp_path / "memo"))


def _hashed(fn):
    before = digests.bytes_hashed()
    out = fn()
    return out, digests.bytes_hashed() - before


def _flip_keeping_mtime(path, offset=-3):
    st = os.stat(path)
    with open(path, "r+b") as fh:
        fh.seek(offset, os.SEEK_END)
        b = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([b[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # the mtime is back; the ctime cannot be
    assert os.stat(path).st_mtime_ns == st.st_mtime_ns and os.stat(path).st_size == st.st_size


def test_hashed_once_per_version(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(os.urandom(300_000))
    truth = hashlib.sha256(f.read_bytes()).hexdigest()
    assert _hashed(lambda: digests.sha256_remembered(f)) == (truth, 300_000)
    assert _hashed(lambda: digests.sha256_remembered(f)) == (truth, 0)
    assert _hashed(lambda: digests.has_sha256(f, truth)) == (True, 0)
    _flip_keeping_mtime(f)
    assert _hashed(lambda: digests.has_sha256(f, truth)) == (False, 300_000)
    assert _hashed(lambda: digests.has_sha256(f, truth)) == (False, 300_000)  # a mismatch is never recorded
    assert digests.unverified({str(f): truth}) == [str(f)]


def test_a_replaced_or_copied_file_is_hashed_again(tmp_path):
    f = tmp_path / "a"
    f.write_bytes(b"x" * 1000)
    digests.sha256_remembered(f)
    g = tmp_path / "b"
    g.write_bytes(f.read_bytes())
    os.replace(g, f)  # same content and path, another inode
    assert _hashed(lambda: digests.sha256_remembered(f))[1] == 1000


def test_the_data_files_digest_is_computed_once(tmp_path):
    fasta = tmp_path / "d.fasta"
    fasta.write_text(">a\nMKV\n>b\nMKVL\n")
    first, n = _hashed(lambda: file_sha256(fasta))
    assert n == fasta.stat().st_size
    assert _hashed(lambda: file_sha256(fasta)) == (first, 0)
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "1.fasta").write_text(">a\nMKV\n")
    digest, _ = _hashed(lambda: file_sha256(folder))
    assert _hashed(lambda: file_sha256(folder)) == (digest, 0)
    (folder / "2.fasta").write_text(">b\nMKVL\n")  # a new file in the folder: another version
    assert _hashed(lambda: file_sha256(folder))[1] > 0
