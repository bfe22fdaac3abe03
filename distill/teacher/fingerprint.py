"""Content fingerprints of a teacher, for keys of things computed from it (the teacher cache).

* A local teacher folder: SHA-256 over its `config.json` and weight files (name and
  content). Hashing ProtGPT2's 3.1 GB takes seconds, and every trial checks the key of
  the cache it reads, so each file's digest is remembered per version of the file
  (`distill.files.digests`): a node hashes a teacher once.
* A hub id: its `config.json` and the commit of the snapshot it resolves to (a hub
  commit pins every file), read from the local Hugging Face cache or fetched; the
  weights themselves are not needed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from kdsweep.distill.errors import ModelError
from kdsweep.distill.files.digests import sha256_remembered

# Files that decide a teacher's outputs: its config and its weights.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")


def teacher_fingerprint(name: str) -> str:
    """A 16-hex-digit fingerprint of a teacher folder's config and weights, or of a hub id's
    config and resolved commit (see the module docstring)."""
    path = Path(name).expanduser()
    h = hashlib.sha256()
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.is_file() and (p.name == "config.json" or p.suffix in WEIGHT_SUFFIXES))
        if not any(p.suffix in WEIGHT_SUFFIXES for p in files):
            raise ModelError(f"teacher directory {path}: no weight file ({', '.join(WEIGHT_SUFFIXES)})")
        for p in files:
            h.update(f"{p.name}\0{sha256_remembered(p)}\0".encode())
    else:
        config = _hub_config(name)
        commit = config.parent.name  # .../models--org--name/snapshots/<commit>/config.json
        h.update(f"hub\0{name}\0{commit}\0".encode())
        h.update(config.read_bytes())
    return h.hexdigest()[:16]


def _hub_config(name: str) -> Path:
    from transformers.utils import cached_file

    try:
        return Path(cached_file(name, "config.json"))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot resolve teacher hub id {name!r} (no network? set HF_HUB_OFFLINE=1 and use a "
                         f"local directory): {str(e).splitlines()[0]}") from None
