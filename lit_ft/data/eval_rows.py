"""Validation and test rows split between processes, with DDP's padding marked.

Every process must run the same number of evaluation batches (a sharded model all-gathers
in each forward), so a split of n rows over w processes is padded to a multiple of w, as
Lightning's `DistributedSampler` does: 11 rows on 2 processes are 12 positions, and position
11 repeats row 0. Counted, those repeats would weigh the first rows twice in every reported
figure. Here each position past the split's end reaches the batch marked as padding
(PADDING_KEY), and the module scores only the real rows (`FineTuneModule._evaluate`): the
figures on w processes are those of one process over the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, DistributedSampler

from lit_ft.distributed import rank_and_world

PADDING_KEY = "_padding_rows"  # (batch,) bool; '_' keeps it from the model (model_inputs)


class EvalShards(DistributedSampler):
    """Rank r takes positions r, r + w, r + 2w, ... of the padded split, in order.

    A `DistributedSampler` subclass only so that Lightning does not replace it with its own
    (which pads without saying which rows are repeats); rank and world size are read when
    the iterator is made, since the sampler exists before the process group.
    """

    def __init__(self, dataset_size: int) -> None:  # no super().__init__: no group yet
        self.dataset_size = dataset_size

    def __iter__(self) -> Iterator[int]:
        rank, world = rank_and_world()
        return iter(range(rank, math.ceil(self.dataset_size / world) * world, world))

    def __len__(self) -> int:
        return math.ceil(self.dataset_size / rank_and_world()[1])

    def set_epoch(self, epoch: int) -> None:  # the order never changes
        pass


class MarkedRows(Dataset):
    """`dataset` read by padded position: position p >= len is row p - len, marked."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, position: int) -> dict[str, Any]:
        size = len(self.dataset)
        return {**self.dataset[position % size], PADDING_KEY: position >= size}


class collate_marked:  # noqa: N801  (used like the function it wraps; a class pickles for ddp_spawn)
    """`collate`, with each row's padding mark as one (batch,) bool tensor."""

    def __init__(self, collate: Callable) -> None:
        self.collate = collate

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        marks = torch.tensor([row.pop(PADDING_KEY) for row in rows], dtype=torch.bool)
        batch = self.collate(rows)
        batch[PADDING_KEY] = marks
        return batch


def marked_for_evaluation(dataset, collate: Callable) -> tuple[EvalShards, MarkedRows, Callable]:
    """(sampler, dataset, collate) of an evaluation loader over `dataset`."""
    return EvalShards(len(dataset)), MarkedRows(dataset), collate_marked(collate)
