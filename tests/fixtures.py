"""Helpers shared by tests: real proteins from the bundled UniProt sample, tiny real GPT-2 teachers."""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
from Bio.SeqIO.FastaIO import SimpleFastaParser
from transformers import GPT2Config, GPT2LMHeadModel

from distill.config import TrainConfig
from distill.data import BUNDLED_DATA
from distill.demo_teacher import build_aa_tokenizer

# Tests that run the real MMseqs2 binary; CI installs it (`apt-get install -y mmseqs2`).
requires_mmseqs = pytest.mark.skipif(shutil.which("mmseqs") is None,
                                     reason="needs MMseqs2's `mmseqs` binary on PATH (apt-get install mmseqs2)")


def write_real_fasta(path: Path, n: int, max_len: int = 300) -> Path:
    """The first `n` bundled UniProt proteins of at most `max_len` residues, as plain FASTA."""
    with gzip.open(BUNDLED_DATA, "rt") as fh, open(path, "w") as out:
        k = 0
        for title, seq in SimpleFastaParser(fh):
            if len(seq) <= max_len:
                out.write(f">{title}\n{seq}\n")
                k += 1
                if k == n:
                    break
    return path


def homolog_families(bundled: list[str], n_families: int, min_size: int = 3, max_len: int = 400) -> list[str]:
    """The members of `n_families` shipped MMseqs2 clusters of the bundled proteins with at least
    `min_size` members of at most `max_len` residues: a small real set full of homologs. Families are
    taken in the order of their representative's sequence, which is unrelated to the split hash (the
    order of representative ids is not: an id is the same SHA-256 that decides the split)."""
    from distill.homology import BUNDLED_CLUSTERS, read_assignment, sequence_id

    by_id = {sequence_id(s): s for s in bundled if len(s) <= max_len}
    members: dict[str, list[str]] = {}
    for member, rep in sorted(read_assignment(BUNDLED_CLUSTERS)[0].items()):
        if member in by_id and rep in by_id:
            members.setdefault(by_id[rep], []).append(by_id[member])
    families = [m for _, m in sorted(members.items()) if len(m) >= min_size][:n_families]
    return [s for family in families for s in family]


def make_char_teacher(out: Path, n_positions: int = 512, seed: int = 0) -> Path:
    """A random-init GPT-2 teacher over the demo amino-acid tokenizer (vocab 27)."""
    import torch

    torch.manual_seed(seed)
    tok = build_aa_tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), n_positions=n_positions, n_layer=1, n_head=2, n_embd=32,
                     bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def tiny_config(teacher: Path, data: Path, out: Path, **overrides) -> TrainConfig:
    """A run that takes a few seconds on CPU. Its split is the hash split: these runs test training,
    not homology, and so need no `mmseqs` (the cluster split has its own tests, run where the
    binary exists: `requires_mmseqs`)."""
    base = dict(
        teacher=str(teacher), data=str(data), split_method="hash", scale=None, n_layer=1, n_head=2, n_embd=16,
        block_size=64, batch_size=4, micro_batch_size=2, max_steps=6, eval_interval=3,
        val_max_proteins=16, eval_batch_size=8, gen_min_residues=40, gen_max_new_tokens=16, gen_batch_size=4,
        output_dir=str(out), lr=1e-3,
    )
    base.update(overrides)
    return TrainConfig().replace(**base)  # replace() validates


@contextmanager
def ray_subprocess_env(**extra: str):
    """Environment for `kdsweep` subprocesses with their own embedded Ray: a fresh short RAY_TMPDIR
    (Ray's unix socket paths are length-limited), removed afterwards together with every process
    started under it (a killed driver leaves Ray agents behind: NOTES-ray.md)."""
    ray_tmp = tempfile.mkdtemp(prefix="kdr", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1",
           "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0", **extra}
    try:
        yield env
    finally:
        kill_ray_processes(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def kill_ray_processes(ray_tmp: str) -> None:
    """End, by PID, every process whose environment names this RAY_TMPDIR."""
    import psutil

    for p in psutil.process_iter(["pid"]):
        try:
            if p.pid != os.getpid() and p.environ().get("RAY_TMPDIR") == ray_tmp:
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
