"""A shuffling sampler whose order is a pure function of (seed, epoch) and that can resume.

Exact resumption needs the rest of an interrupted epoch, and every later epoch, in the order
the uninterrupted run would have used. A sampler that draws from a running generator cannot
promise that once the process restarts (its state is gone, and Lightning creates the epoch's
iterator before it announces the epoch). This one rebuilds each epoch's permutation from
`seed + epoch` alone, and `resume(epoch, samples_done)` skips what the checkpoint already saw.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableRandomSampler(Sampler[int]):
    def __init__(self, num_samples: int, seed: int, shuffle: bool = True):
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self._resume_at: tuple[int, int] | None = None  # (epoch, samples to skip)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def resume(self, epoch: int, samples_done: int) -> None:
        """Start the next iteration of `epoch` after its first `samples_done` samples."""
        self.epoch = epoch
        self._resume_at = (epoch, samples_done)

    def order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_samples))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_samples, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        # Built eagerly (not a generator function): the order is fixed when the iterator is
        # created, whatever set_epoch calls come between that and the first batch.
        order = self.order(self.epoch)
        if self._resume_at is not None and self._resume_at[0] == self.epoch:
            order = order[self._resume_at[1] :]
        self._resume_at = None
        return iter(order)

    def __len__(self) -> int:
        # The full epoch even when resuming: Lightning compares batches seen against it.
        return self.num_samples
