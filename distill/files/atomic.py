"""Whole files or none: every file and folder kdsweep puts in place goes through this module.

One policy, for all of them: the bytes go to a temp beside the target (`.<name>.<pid>.tmp`, same
folder, so the rename cannot cross file systems), are flushed and fsynced, then renamed over the
target (`os.replace`), and the folder holding it is fsynced so that the rename itself survives a
power cut. A reader (another trial, a resumed run) sees the old file or the new one, never a part;
a crash or a full disk leaves the old file as it was and no temp (removed on any failure).

* `write_atomic`: a file from bytes or text, mode 0644 (readable by group and others: shared
  storage) unless the caller asks otherwise.
* `write_new`: the same, but only when the target does not exist yet (create-if-absent, by a
  hard link: two writers racing, one wins).
* `put_in_place`: a temp file or folder the caller wrote itself beside the target (a memmap, a
  checkpoint, a saved model): every file in it is fsynced, then the rename and the folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def temp_path(path: Path) -> Path:
    """The temp file or folder beside `path` that becomes `path` (hidden, per process)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomic(path: str | Path, data: str | bytes, *, mode: int = 0o644) -> Path:
    """Write `data` (text as UTF-8) to `path` atomically, with permissions `mode`; returns `path`."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        _write_synced(tmp, data, mode, path)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # after a failed write (disk full): no stray temp file
    fsync_folder(path.parent)
    return path


def write_new(path: str | Path, data: str | bytes, *, mode: int = 0o644) -> bool:
    """Write `data` to `path` atomically unless `path` exists (also when it appears meanwhile: the
    hard link fails then); returns whether it wrote."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        _write_synced(tmp, data, mode, path)
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_folder(path.parent)
    return True


def put_in_place(tmp: Path, path: Path) -> Path:
    """Rename `tmp`, a file or a folder written beside `path` (usually at `temp_path(path)`), over
    `path` (a folder there is removed first), after fsyncing every file in it; then fsync the folder
    that holds `path`."""
    for file in [tmp] if tmp.is_file() else sorted(f for f in tmp.rglob("*") if f.is_file()):
        with open(file, "rb+") as fh:
            os.fsync(fh.fileno())
    if tmp.is_dir():
        fsync_folder(tmp)  # its entries
        shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    fsync_folder(path.parent)
    return path


def fsync_folder(folder: Path) -> None:
    """Make the renames and new entries in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (and Windows) do not fsync folders; the rename itself is done
    finally:
        os.close(fd)


def _write_synced(tmp: Path, data: str | bytes, mode: int, path: Path) -> None:
    payload = data.encode() if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as e:
        if e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e  # a failed write() names no file: name it
