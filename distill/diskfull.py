"""A full disk, reported as the OSError (ENOSPC) it is, whichever library was writing.

torch's zip writer turns a failed write into `RuntimeError: [enforce fail at
inline_container.cc] unexpected pos ...` and safetensors into its own error; neither
names the cause (measured on a full tmpfs). When the file system is full at the
moment such an error is raised, `disk_full_as_oserror` raises OSError(ENOSPC)
instead, which the command line reports in one line (kdsweep/cli.py).
"""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

# Free space below which a failed write is taken to be a full disk.
FULL_DISK_BYTES = 1 << 20


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
