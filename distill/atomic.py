"""Whole files or none: every small file kdsweep writes goes through `write_atomic`.

One policy: the bytes go to a temp file beside the target (`.<name>.<pid>.tmp`, same folder,
so the rename cannot cross file systems), are flushed and fsynced, then renamed over the
target. A reader (another trial, a resumed run) sees the old file or the new one, never a
part; a crash or a full disk leaves the old file as it was and no temp file (the temp file
is removed on any failure). The folder is not fsynced: a power cut may lose the rename but
never exposes half a file, and what a run records is written again by a resume.
"""

from __future__ import annotations

import os
from pathlib import Path


def temp_path(path: Path) -> Path:
    """The temp file `write_atomic` uses for `path` (hidden, per process)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write `data` (text as UTF-8) to `path` atomically; returns `path`."""
    path = Path(path)
    tmp = temp_path(path)
    payload = data.encode() if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e  # a failed write() names no file: name it
    finally:
        tmp.unlink(missing_ok=True)  # after a failed write (disk full): no stray temp file
    return path
