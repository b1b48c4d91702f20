"""The resumable, rank-sharded example order."""

from __future__ import annotations

import pytest

from vsr_train.data_order import ShardedOrder


def test_ranks_partition_each_epoch_and_epochs_differ():
    orders = [ShardedOrder(20, per_rank=3, rank=r, world_size=2, seed=5) for r in range(2)]
    assert orders[0].batches_per_epoch == 3 and orders[0].dropped_per_epoch == 2
    epoch0 = [orders[r].next_batch() for _ in range(3) for r in range(2)]
    seen = [i for batch in epoch0 for i in batch]
    assert len(seen) == len(set(seen)) == 18
    epoch1 = [orders[r].next_batch() for _ in range(3) for r in range(2)]
    assert epoch1 != epoch0 and orders[0].state.epoch == 1


def test_resume_replays_the_same_order():
    full = ShardedOrder(17, per_rank=2, rank=1, world_size=2, seed=3)
    expected = [full.next_batch() for _ in range(12)]
    first = ShardedOrder(17, per_rank=2, rank=1, world_size=2, seed=3)
    got = [first.next_batch() for _ in range(5)]
    resumed = ShardedOrder(17, per_rank=2, rank=1, world_size=2, seed=3)
    resumed.load_state_dict(first.state_dict())
    got += [resumed.next_batch() for _ in range(7)]
    assert got == expected


def test_mismatched_state_and_tiny_datasets_are_errors():
    order = ShardedOrder(10, per_rank=2, rank=0, world_size=1, seed=0)
    with pytest.raises(ValueError, match="dataset or batch size changed"):
        ShardedOrder(12, per_rank=2, rank=0, world_size=1, seed=0).load_state_dict(order.state_dict())
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        ShardedOrder(3, per_rank=2, rank=0, world_size=2, seed=0)
