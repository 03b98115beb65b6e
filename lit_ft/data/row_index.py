"""Batches that know which rows they hold, so predictions can show the rows' own text.

predictions.jsonl used to decode `input_ids` back to text: lowercased by an uncased tokenizer,
cut at `max_length`, special characters normalized. The original text never goes to the model
(nor to the device as strings); each batch carries the indices of its rows in the split
instead, and the writer looks the raw rows up (`FineTuneDataModule.raw_row`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

ROW_KEY = "row_index"  # popped by the module before the task sees the batch


class IndexedRows(Dataset):
    """`dataset`'s rows, each with its index in the split under ROW_KEY."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.dataset[index], ROW_KEY: index}


def collate_with_rows(collate: Callable) -> Callable:
    """`collate`, with the rows' indices as one (batch,) tensor next to the task's inputs."""

    def collate_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
        indices = torch.tensor([row.pop(ROW_KEY) for row in rows])
        batch = collate(rows)
        batch[ROW_KEY] = indices
        return batch

    return collate_rows
