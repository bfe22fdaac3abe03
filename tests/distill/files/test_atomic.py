"""distill/files/atomic.py: whole files or none, one fsync policy, readable by others (0644) by default."""

from __future__ import annotations

import os
import stat

import pytest

from kdsweep.distill.files import atomic
from kdsweep.distill.files.atomic import put_in_place, temp_path, write_atomic, write_new


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_write_atomic_replaces_whole_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a.json"
    write_atomic(path, "old")
    write_atomic(path, b"new bytes")
    assert path.read_bytes() == b"new bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_files_are_0644_whatever_the_umask_unless_asked(tmp_path):
    old = os.umask(0o077)  # a umask that would make a plain open() 0600
    try:
        write_atomic(tmp_path / "shared", "x")
        write_atomic(tmp_path / "private", "x", mode=0o600)
        assert write_new(tmp_path / "new", "x")
    finally:
        os.umask(old)
    assert (mode(tmp_path / "shared"), mode(tmp_path / "private"), mode(tmp_path / "new")) == (0o644, 0o600, 0o644)


def test_a_failed_write_keeps_the_old_file_names_the_target_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_atomic(path, "old")

    def full_disk(fd):
        raise OSError(28, "No space left on device")  # as a real fsync on a full disk: no file name

    monkeypatch.setattr(atomic.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left") as e:
        write_atomic(path, "new")
    assert e.value.filename == str(path)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_the_file_and_its_folder_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def record(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(atomic.os, "fsync", record)
    write_atomic(tmp_path / "a", "x")
    assert synced == [str(temp_path(tmp_path / "a")), str(tmp_path)]


def test_write_new_writes_only_once(tmp_path):
    path = tmp_path / "metrics.json"
    assert write_new(path, "first")
    assert not write_new(path, "second")
    assert path.read_text() == "first" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_put_in_place_swaps_a_whole_folder(tmp_path):
    final = tmp_path / "student"
    final.mkdir()
    (final / "stale.bin").write_text("old")
    tmp = temp_path(final)
    (tmp / "sub").mkdir(parents=True)
    (tmp / "sub" / "model.safetensors").write_text("weights")
    put_in_place(tmp, final)
    assert [p.relative_to(final).as_posix() for p in sorted(final.rglob("*"))] == ["sub", "sub/model.safetensors"]
    assert not tmp.exists()
