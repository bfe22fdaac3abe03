"""A full disk, reported as the OSError (ENOSPC) it is, whichever library was writing.

torch's zip writer turns a failed write into `RuntimeError: [enforce fail at
inline_container.cc] unexpected pos ...` and safetensors into its own error; neither
names the cause (measured on a full tmpfs). When the file system is full at the
moment such an error is raised, `disk_full_as_oserror` raises OSError(ENOSPC)
instead, which the command line reports in one line (kdsweep/cli.py), exit 1.

Writes through memory maps cannot report ENOSPC at all: the process gets SIGBUS
(exit 135, no message, a sparse temp file left). So a writer that maps a file first
checks the free space for what it plans to write (`check_free_space`) and reserves the
file's blocks (`reserve`, posix_fallocate) before mapping it. `DiskFull` is the OSError
those raise, with a message that says what needed how much.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from contextlib import contextmanager
from pathlib import Path

from kdsweep.distill.files.numbers import human_bytes

# Free space below which a failed write is taken to be a full disk.
FULL_DISK_BYTES = 1 << 20
# What SQLite (Optuna's default storage) says instead of ENOSPC.
SQLITE_FULL = "database or disk is full"


class DiskFull(OSError):
    """ENOSPC with what needed how much: `str(e)` is a whole sentence naming the path."""

    def __init__(self, path: str | Path, detail: str):
        super().__init__(errno.ENOSPC, detail, str(path))

    def __str__(self) -> str:
        return f"no space left on the device of {self.filename}: {self.strerror}"

    def __reduce__(self):  # raised in a Ray task, unpickled in the driver
        return DiskFull, (self.filename, self.strerror)


@contextmanager
def disk_full_as_oserror(folder: Path):
    try:
        yield
    except OSError:
        raise
    except Exception as e:
        if not folder.exists() or shutil.disk_usage(folder).free >= FULL_DISK_BYTES:
            raise
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder)) from e


@contextmanager
def full_disk_named(folder: Path):
    """A full disk that surfaces without a file name (SQLite's "database or disk is full" from deep
    inside Optuna, a failed write()) is re-raised as DiskFull naming `folder`, where it happened."""
    try:
        yield
    except Exception as e:
        full = full_disk_in(e)
        if full is None or full.filename is not None:
            raise
        raise DiskFull(folder, f"{full.strerror} writing there") from e


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_free_space(path: str | Path, need: int, what: str) -> None:
    """`need` bytes must be free on the file system `path` is (or will be) on, else DiskFull."""
    free = shutil.disk_usage(_existing(Path(path).absolute())).free
    if need > free:
        raise DiskFull(path, f"{what} needs {human_bytes(need)}, {human_bytes(free)} free; free space (or write it elsewhere), "
                             "then run the same command again")


def reserve(fd: int, size: int, path: str | Path) -> None:
    """Allocate `size` bytes of the open file `fd` on disk now, so writing it through a memory map
    cannot hit a full disk later (SIGBUS). File systems without fallocate are left to the free-space
    check made before."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(path, f"reserving {human_bytes(size)} for it failed") from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise


def full_disk_in(exc: BaseException) -> OSError | None:
    """The full-disk error inside `exc` (itself, its causes and contexts, a Ray task error's cause), or
    None: ENOSPC/EDQUOT, or SQLite's "database or disk is full"."""
    seen = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return e
        if isinstance(e, sqlite3.OperationalError) and SQLITE_FULL in str(e):
            return OSError(errno.ENOSPC, SQLITE_FULL, None)
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None), getattr(e, "orig", None)]
    return None
