"""distill.teacher.source's read-ahead: a teacher cache's next-step blocks are read in a background thread,
the same rows as a direct read, errors raised at the step that needs them (real tiny cache, CPU)."""

import shutil
import threading

import pytest
import torch

from kdsweep.distill.errors import DataError
from kdsweep.distill.loss.kd import KDOptions
from kdsweep.distill.models import build_student
from kdsweep.distill.run.step import LossSettings, Stepper
from kdsweep.distill.runtime import Runtime
from kdsweep.distill.teacher.cache import TeacherCache, plan_teacher_cache, read_manifest
from kdsweep.distill.teacher.source import BlockPrefetcher, CachedTeacher
from tests.distill.teacher.test_cache import BOTH_ARM, build
from tests.fixtures import tiny_config


class Reads:
    """A read function that records which thread read which blocks; block 13 is damaged."""

    def __init__(self):
        self.calls: list[tuple[tuple[int, ...], str]] = []

    def __call__(self, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append((tuple(blocks.tolist()), threading.current_thread().name))
        if 13 in blocks.tolist():
            raise DataError("teacher_cache: train-00001.hidden.npy: sha256 differs from the manifest")
        return blocks.float()[:, None] * torch.ones(1, 3), -blocks.float()


def test_queued_blocks_are_read_in_the_background_and_taken_once():
    reads = Reads()
    prefetcher = BlockPrefetcher(reads, pin=False)
    a, b = torch.tensor([3, 1]), torch.tensor([7, 0])
    prefetcher.ahead([a, b])
    hidden, entropy = prefetcher.take(b)  # in any order
    assert torch.equal(hidden, torch.tensor([[7.0] * 3, [0.0] * 3])) and torch.equal(entropy, torch.tensor([-7.0, 0.0]))
    assert torch.equal(prefetcher.take(a)[0][:, 0], torch.tensor([3.0, 1.0]))
    assert prefetcher.misses == 0
    assert [c[0] for c in reads.calls] == [(3, 1), (7, 0)]
    assert all(name.startswith("kdsweep-prefetch") for _, name in reads.calls)
    # Taken once: the same blocks again, not queued, are read in the caller's thread.
    assert torch.equal(prefetcher.take(a)[0][:, 0], torch.tensor([3.0, 1.0]))
    assert prefetcher.misses == 1 and reads.calls[-1][1] == threading.current_thread().name


def test_the_same_blocks_queued_for_two_steps_are_read_twice():
    """A step reading the blocks of the step before (the benchmarks' fixed batch) queues them again."""
    reads = Reads()
    prefetcher = BlockPrefetcher(reads, pin=False)
    blocks = torch.tensor([2, 5])
    prefetcher.ahead([blocks])
    for _ in range(3):
        prefetcher.ahead([blocks])  # the next step's, before this step's take
        prefetcher.take(blocks)
    prefetcher.take(blocks)  # the fourth queued read (waited for: it may not have run yet)
    assert prefetcher.misses == 0 and len(reads.calls) == 4


def test_a_damaged_read_is_raised_by_the_step_that_needs_it():
    reads = Reads()
    prefetcher = BlockPrefetcher(reads, pin=False)
    prefetcher.ahead([torch.tensor([12, 13]), torch.tensor([0, 1])])  # queued without raising
    assert prefetcher.take(torch.tensor([0, 1]))[1].tolist() == [0.0, -1.0]
    with pytest.raises(DataError, match="train-00001.hidden.npy: sha256 differs"):
        prefetcher.take(torch.tensor([12, 13]))


def test_the_queue_is_bounded():
    reads = Reads()
    prefetcher = BlockPrefetcher(reads, pin=False)
    prefetcher.ahead([torch.tensor([i]) for i in range(BlockPrefetcher.MAX_QUEUED + 2)])
    prefetcher.take(torch.tensor([BlockPrefetcher.MAX_QUEUED + 1]))
    assert prefetcher.misses == 0
    prefetcher.take(torch.tensor([0]))  # the oldest, dropped
    assert prefetcher.misses == 1


@pytest.fixture(scope="module")
def cache_cfg(char_teacher, small_fasta, tmp_path_factory):
    cfg = tiny_config(char_teacher, small_fasta, tmp_path_factory.mktemp("unused"), **BOTH_ARM)
    return cfg, build(cfg, "fp32", tmp_path_factory.mktemp("caches"))


def _cached_teacher(cfg, path) -> CachedTeacher:
    plan = plan_teacher_cache(cfg, "fp32", path.parent)
    return CachedTeacher(TeacherCache.open(path, plan.key), plan.teacher_config, torch.device("cpu"))


def test_steps_read_ahead_from_a_real_cache(cache_cfg):
    """Steps that name their successor's blocks read the cache once each, ahead, and train exactly as
    steps that read it when they need it."""
    cfg, path = cache_cfg
    order = [torch.tensor([23, 0, 9, 8]), torch.tensor([1, 2, 17, 16]), torch.tensor([5, 4, 3, 22])]
    rt = Runtime(torch.device("cpu"), "fp32")
    results = {}
    for ahead in (False, True):
        teacher = _cached_teacher(cfg, path)
        student = build_student(teacher.config, {"n_layer": 1, "n_head": 2, "n_embd": 16}, dropout=0.0, seed=0)
        stepper = Stepper(student, teacher, rt, LossSettings(KDOptions(2.0, 0.3, True, 0.1, "mask"), "fused"), lr=1e-2)
        ids = torch.randint(0, teacher.config.vocab_size, (4, 64), generator=torch.Generator().manual_seed(0))
        losses = []
        for i, blocks in enumerate(order):
            following = order[i + 1] if ahead and i + 1 < len(order) else None
            losses.append(float(stepper.step(blocks, ids, next_blocks=following).terms[0]))
        results[ahead] = losses
        assert teacher.reader.misses == (1 if ahead else len(order))  # ahead: only the first step waits
    assert results[True] == results[False]


def test_a_damaged_shard_read_ahead_is_named_at_its_step(cache_cfg, tmp_path):
    cfg, path = cache_cfg
    copy = tmp_path / path.name  # another real path: verified afresh on first touch
    shutil.copytree(path, copy)
    shard = copy / "train-00001.hidden.npy"
    assert "train-00001.hidden.npy" in read_manifest(copy)["files"]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    teacher = _cached_teacher(cfg, copy)
    teacher.prefetch([torch.tensor([0, 1]), torch.tensor([9, 10])])  # shard 0, then shard 1
    assert teacher.train_batch(torch.tensor([0, 1]), None).hidden.shape == (2, 64, 32)
    with pytest.raises(DataError, match=r"train-00001\.hidden\.npy.*damaged"):
        teacher.train_batch(torch.tensor([9, 10]), None)
