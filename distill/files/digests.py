"""File digests computed once per version of a file, and the bytes this process has hashed.

A sweep's trials each start in a fresh process, and each used to SHA-256 every input it
trusts: the data file, the teacher's weights (its fingerprint) and every file of the
teacher cache (~128 GB at ProtGPT2's scale: about 90 s of CPU per trial at SHA-NI speed,
far more on a network file system). Here a file is hashed once and its digest recorded
under a *stamp* of the version hashed:

    (real path, size, mtime_ns, ctime_ns, inode, device)

in `<cache_dir>/file-sha256.json`, the node's kdsweep cache. A later process whose stat of
the file gives the same stamp trusts the recorded digest and reads nothing. Any write to a
file changes its ctime (which, unlike mtime, no user call can set back), a replaced file has
another inode, and a copy on another mount another device, so each of those is hashed again,
before the first read of its content. What a stamp cannot see is damage that bypasses the
file system (bit rot under an unchanged inode): checking for that means reading every byte
again, which is what this module exists to avoid in every trial (`verify_file` with
`trust_stamp=False` does it on request).

`bytes_hashed()` counts the bytes this process has hashed, so a trial can report what it
paid (0 once its node has verified its inputs).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from kdsweep.distill.files.atomic import write_atomic

MEMO_NAME = "file-sha256.json"
_HASHED = [0]  # bytes hashed by this process (a list: mutable module state without `global`)


def cache_dir() -> Path:
    """kdsweep's cache folder on this node: $KDSWEEP_CACHE, else ~/.cache/kdsweep."""
    return Path(os.environ.get("KDSWEEP_CACHE", Path.home() / ".cache" / "kdsweep"))


def bytes_hashed() -> int:
    """Bytes this process has read to hash them, since it started."""
    return _HASHED[0]


def stamp(path: str | Path) -> list[int]:
    """[size, mtime_ns, ctime_ns, inode, device] of a file (its real path): the version a digest belongs to."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in full (counted in `bytes_hashed`)."""
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
        _HASHED[0] += fh.tell()
    return digest


def hashing_reader(path: str | Path) -> Iterator[bytes]:
    """A file's bytes in 1 MiB chunks, counted in `bytes_hashed` (for digests built from several files)."""
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            _HASHED[0] += len(chunk)
            yield chunk


def remembered(path: str | Path, kind: str, compute: Callable[[], str],
               version: Callable[[], list] | None = None) -> str:
    """The digest `kind` of `path`: the recorded one if `path`'s stamp (or `version()`, for a digest
    of several files) is the one it was recorded under, else `compute()`, recorded if the version
    did not change while it ran."""
    real = os.path.realpath(path)
    version = version or (lambda: stamp(real))
    before = version()
    entry = _entry(_read_memo(), real)
    if entry.get("stamp") == before and kind in entry.get("digests", {}):
        return entry["digests"][kind]
    digest = compute()
    if version() == before:
        record(real, kind, digest, before)
    return digest


def record(path: str | Path, kind: str, digest: str, version: list | None = None) -> None:
    """Record `digest` as `path`'s digest `kind` for its current stamp (or `version`): a caller that
    has just hashed the file (a cache build) spares the next process from hashing it again."""
    real = os.path.realpath(path)
    version = stamp(real) if version is None else version
    with _memo_lock():
        memo = _read_memo()  # read under the lock: entries other processes added meanwhile survive
        entry = _entry(memo, real)
        digests = entry.get("digests", {}) if entry.get("stamp") == version else {}
        memo[real] = {"stamp": version, "digests": {**digests, kind: digest}}
        path_ = _memo_path()
        write_atomic(path_, json.dumps(memo))


def unverified(files: dict[str, str]) -> list[str]:
    """Of `files` ({path: expected SHA-256}), those whose current version is not recorded with that
    digest (the memo is read once; nothing but a stat of each file)."""
    memo = _read_memo()
    out = []
    for path, sha256 in files.items():
        real = os.path.realpath(path)
        entry = _entry(memo, real)
        try:
            ok = entry.get("stamp") == stamp(real) and entry.get("digests", {}).get("sha256") == sha256
        except OSError:
            ok = False
        if not ok:
            out.append(path)
    return out


def has_sha256(path: str | Path, expected: str) -> bool:
    """Whether `path`'s bytes have SHA-256 `expected`: from the record of its version if there is
    one, else hashed (and recorded when they match; a mismatch is not recorded)."""
    real = os.path.realpath(path)
    if not unverified({real: expected}):
        return True
    before = stamp(real)
    digest = sha256_file(real)
    if digest == expected and stamp(real) == before:  # unchanged while it was read
        record(real, "sha256", digest, before)
    return digest == expected


def sha256_remembered(path: str | Path) -> str:
    """SHA-256 of a file's bytes, hashed once per version of the file (see the module docstring)."""
    return remembered(path, "sha256", lambda: sha256_file(path))


def _memo_path() -> Path:
    return cache_dir() / MEMO_NAME


def _read_memo() -> dict:
    try:
        memo = json.loads(_memo_path().read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def _entry(memo: dict, real: str) -> dict:
    """{"stamp": [...], "digests": {kind: digest}} of a real path; {} if absent or of an older layout."""
    entry = memo.get(real)
    return entry if isinstance(entry, dict) else {}


@contextmanager
def _memo_lock():
    """An exclusive lock on the memo while it is rewritten (concurrent trials of one node)."""
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{MEMO_NAME}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
