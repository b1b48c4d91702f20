"""Deterministic, resumable, rank-sharded order of training examples.

Epoch ``e`` visits a permutation drawn from ``seed`` and ``e`` alone, so the order depends on nothing but
(seed, epoch, position): resuming from a saved (epoch, cursor) replays exactly the batches an
uninterrupted run would have seen. Each global batch holds ``per_rank * world_size`` consecutive indices
of the permutation, rank r taking its slice; an incomplete final global batch of an epoch is dropped
(and counted in ``dropped_per_epoch``) so every rank does the same number of steps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass
class DataOrderState:
    epoch: int = 0
    cursor: int = 0  # global batches already consumed in this epoch


class ShardedOrder:
    def __init__(self, num_examples: int, per_rank: int, rank: int, world_size: int, seed: int) -> None:
        if per_rank <= 0:
            raise ValueError("per_rank must be > 0")
        self.num_examples = num_examples
        self.per_rank = per_rank
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.global_batch = per_rank * world_size
        self.batches_per_epoch = num_examples // self.global_batch
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{num_examples} examples cannot fill one global batch of {self.global_batch} "
                f"({per_rank} per rank x {world_size} ranks)"
            )
        self.dropped_per_epoch = num_examples - self.batches_per_epoch * self.global_batch
        self.state = DataOrderState()
        self._perm_epoch = -1
        self._perm = torch.empty(0, dtype=torch.int64)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.num_examples, generator=gen)
            self._perm_epoch = epoch
        return self._perm

    def next_batch(self) -> list[int]:
        """This rank's indices of the next global batch; advances the position."""
        if self.state.cursor >= self.batches_per_epoch:
            self.state = DataOrderState(epoch=self.state.epoch + 1, cursor=0)
        perm = self._permutation(self.state.epoch)
        start = self.state.cursor * self.global_batch + self.rank * self.per_rank
        self.state.cursor += 1
        return perm[start : start + self.per_rank].tolist()

    def state_dict(self) -> dict[str, int]:
        return asdict(self.state) | {"num_examples": self.num_examples, "global_batch": self.global_batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["num_examples"] != self.num_examples or state["global_batch"] != self.global_batch:
            raise ValueError(
                f"saved data order is for {state['num_examples']} examples / global batch {state['global_batch']}, "
                f"this run has {self.num_examples} / {self.global_batch}: the dataset or batch size changed"
            )
        self.state = DataOrderState(epoch=int(state["epoch"]), cursor=int(state["cursor"]))
