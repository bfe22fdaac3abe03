"""distill.data.block_order: a fixed pool of blocks, read in a seeded order that is a pure function of the step."""

import torch

from kdsweep.distill.config import TrainConfig
from kdsweep.distill.data.block_order import BlockOrder, pool_size, total_steps


def _read(order: BlockOrder, steps: range, batch: int, world: int = 1, micro_size: int | None = None) -> list[int]:
    """Every block index read over `steps`, in order, by every rank and micro-batch."""
    micro_size = micro_size or batch // world
    out = []
    for step in steps:
        for rank in range(world):
            for micro in range(batch // world // micro_size):
                out += order.indices(step, batch, rank, world, micro, micro_size).tolist()
    return out


def test_pool_is_the_budget_capped_by_the_data():
    cfg = TrainConfig(max_steps=40, batch_size=8)
    assert total_steps(cfg) == 40 and pool_size(cfg, 31_273) == 320
    assert pool_size(cfg, 100) == 100  # fewer blocks than the budget: all of them, in several passes
    tokens = TrainConfig(max_tokens=50_000_000, batch_size=32, block_size=512)
    assert pool_size(tokens, 10**6) == total_steps(tokens) * 32 == 97_664


def test_two_seeds_read_the_same_pool_in_different_orders():
    pool, batch, steps = 40, 8, 5  # exactly one pass
    a = _read(BlockOrder(pool, seed=0), range(steps), batch)
    b = _read(BlockOrder(pool, seed=1), range(steps), batch)
    assert sorted(a) == sorted(b) == list(range(pool))  # the same K blocks, each once
    assert a != b


def test_each_pass_is_a_fresh_permutation_of_the_pool():
    pool, batch = 12, 4
    read = _read(BlockOrder(pool, seed=3), range(9), batch)  # three passes
    passes = [read[i:i + pool] for i in range(0, len(read), pool)]
    assert all(sorted(p) == list(range(pool)) for p in passes)
    assert passes[0] != passes[1] != passes[2]


def test_order_is_a_pure_function_of_seed_and_step():
    """What makes resume exact: a fresh BlockOrder (a resumed run) reads step k like the original."""
    original = BlockOrder(50, seed=7)
    whole = [original.indices(s, 8, 0, 1, 0, 8) for s in range(20)]
    resumed = BlockOrder(50, seed=7)
    for s in (13, 5, 19):  # any order of asking, any starting step
        assert torch.equal(resumed.indices(s, 8, 0, 1, 0, 8), whole[s])


def test_ranks_and_micro_batches_split_the_same_global_batch():
    """DDP ranks and accumulation read the global batch a single process would."""
    single = _read(BlockOrder(30, seed=2), range(6), batch=8)
    split = _read(BlockOrder(30, seed=2), range(6), batch=8, world=2, micro_size=2)
    assert split == single
