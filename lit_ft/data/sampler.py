"""A shuffling sampler whose order is a pure function of (seed, epoch) and that can resume.

Exact resumption needs the rest of an interrupted epoch, and every later epoch, in the order
the uninterrupted run would have used. A sampler that draws from a running generator cannot
promise that once the process restarts (its state is gone, and Lightning creates the epoch's
iterator before it announces the epoch). This one rebuilds each epoch's permutation from
`seed + epoch` alone, and `resume(epoch, samples_done)` skips what the checkpoint already saw.

Under DDP it also splits the epoch between processes itself, as `DistributedSampler` does:
the permutation is padded (by repeating its start) to a multiple of the world size and rank r
takes every world-size-th index from r. With a per-process batch b on w processes, step k
trains on permutation positions [k*b*w, (k+1)*b*w): the same examples as one process with
batch b*w. It subclasses `DistributedSampler` only so that Lightning leaves it alone:
Lightning would otherwise wrap it in a `DistributedSamplerWrapper`, which re-splits the
already-resumed order and loses the resume offset.

`repeat_windows=(A, mu)` (task=grpo's `task.num_iterations` = mu > 1) gives each optimizer
step's window of A batches mu times in a row, so the task trains mu steps on one window's
rollouts: with b = 2, A = 2, w = 1 and mu = 2 the positions run p0-p3, p0-p3, p4-p7, p4-p7.
The order is padded (by repeating its start) to whole windows of A x b x w positions, so
the windows line up with Lightning's accumulation and every epoch has mu x windows steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DistributedSampler

from lit_ft.data.grouping import length_grouped_order
from lit_ft.distributed import rank_and_world


class ResumableRandomSampler(DistributedSampler):
    # DistributedSampler.__init__ is not called: it needs the process group at construction,
    # and this sampler is built before Lightning starts it. Rank and world size are read when
    # an epoch's iterator is created.
    def __init__(
        self,
        dataset_size: int,
        seed: int,
        shuffle: bool = True,
        lengths: Sequence[int] | None = None,
        batch_size: int = 1,
        mixture=None,
        repeat_windows: tuple[int, int] | None = None,
    ):
        self.dataset_size = dataset_size
        self.seed = seed
        self.shuffle = shuffle
        self.lengths = lengths  # given: each batch's examples have similar lengths
        self.batch_size = batch_size  # per process; grouping needs it
        self.mixture = mixture  # data=mixture (lit_ft/data/mixture.py): draws by weight
        self.repeat_windows = repeat_windows  # (batches per window, times each is given)
        self.drop_last = False
        self.epoch = 0
        self._resume_at: tuple[int, int] | None = None  # (epoch, samples of all ranks to skip)

    @property
    def rank(self) -> int:
        return rank_and_world()[0]

    @property
    def num_replicas(self) -> int:
        return rank_and_world()[1]

    @property
    def num_samples(self) -> int:
        """Samples per process in a full epoch: e.g. 101 blocks on 2 processes -> 51 each."""
        return self.epoch_positions // self.num_replicas

    @property
    def epoch_positions(self) -> int:
        """Positions of all processes in a full epoch, padding and repeats included: e.g. 101
        blocks on 2 processes -> 102; with windows of 2 batches of 8 repeated 3 times ->
        ceil(101 / 32) x 32 x 3 = 384."""
        world = self.num_replicas
        if self.repeat_windows is None:
            return math.ceil(self.dataset_size / world) * world
        batches, times = self.repeat_windows
        unit = batches * self.batch_size * world
        return math.ceil(self.dataset_size / unit) * unit * times

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def resume(self, epoch: int, samples_done: int) -> None:
        """Start the next iteration of `epoch` after its first `samples_done` samples, counted
        over all processes (batches done x batch size x world size)."""
        self.epoch = epoch
        self._resume_at = (epoch, samples_done)

    def order(self, epoch: int, world: int = 1) -> list[int]:
        if not self.shuffle:
            return list(range(self.dataset_size))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.mixture is not None:  # indices into the sources laid end to end
            order = self.mixture.order(generator)
        else:
            order = torch.randperm(self.dataset_size, generator=generator).tolist()
        if self.lengths is not None:
            # One step trains on `batch_size x world` consecutive positions (see above).
            group = self.batch_size * world
            order = length_grouped_order(order, self.lengths, group, generator)
        return order

    def __iter__(self) -> Iterator[int]:
        # Built eagerly (not a generator function): the order is fixed when the iterator is
        # created, whatever set_epoch calls come between that and the first batch.
        rank, world = rank_and_world()
        order = self.order(self.epoch, world)
        if self.repeat_windows is None:
            order += order[: self.num_samples * world - len(order)]  # pad to a multiple of world
        else:
            order = _repeat_windows(order, self.batch_size * world, *self.repeat_windows)
        if self._resume_at is not None and self._resume_at[0] == self.epoch:
            order = order[self._resume_at[1] :]
        self._resume_at = None
        return iter(order[rank::world])

    def __len__(self) -> int:
        # The full epoch even when resuming: Lightning compares batches seen against it.
        return self.num_samples


def _repeat_windows(order: list[int], batch: int, batches: int, times: int) -> list[int]:
    """`order` padded (cyclically, from its start) to whole windows of `batches` x `batch`
    positions, each window given `times` times in a row."""
    unit = batches * batch
    padded = order * math.ceil(unit / len(order)) if len(order) < unit else list(order)
    padded += padded[: (-len(padded)) % unit]
    windows = [padded[start : start + unit] for start in range(0, len(padded), unit)]
    return [i for window in windows for i in window * times]
