"""Rows handed over as Python objects (`lit_ft.FineTuner(train_dataset=...)`) instead of files:
a `datasets.Dataset` or `DatasetDict`, a pandas DataFrame, a list of dicts, or a map-style
torch Dataset whose items are dicts (tensors and numpy arrays become lists), with the raw
columns a file would give (the `data.*_column` keys name them). A torch IterableDataset is
refused: rows without an index cannot be resumed exactly (data.streaming streams files).

Each becomes a `datasets.Dataset` and from there goes through the datamodule like a loaded
file: the same split, the same task preprocessing, the same cache keys. What a resumed run
compares (the processed data's fingerprint) is as telling as for files: a `Dataset` keeps the
fingerprint `datasets` gave it, a list or DataFrame gets a hash of its content, so the same
rows give the same fingerprint in any process and any other rows a different one (a torch
Dataset is read into its list of rows first, so it is hashed the same way).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from lit_ft.errors import LitFtError

KINDS = (
    "a datasets.Dataset or DatasetDict, a pandas DataFrame, a list of dicts, or a torch "
    "Dataset (__len__ and __getitem__ returning dicts)"
)


def content_hash(rows: list[dict[str, Any]]) -> str:
    """A hash of the rows' keys and values, in order (JSON with sorted keys; str() for what
    JSON does not know, e.g. numpy numbers)."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def as_dataset(obj, what: str) -> tuple[Any, dict[str, Any]]:
    """(a `datasets.Dataset`, what came in: kind, rows, fingerprint) for one split's object."""
    import datasets

    from lit_ft.compat import dataset_fingerprint

    if isinstance(obj, datasets.Dataset):
        return obj, _record("datasets.Dataset", obj, dataset_fingerprint(obj))
    if isinstance(obj, list):
        rows, kind = obj, "list"
    elif callable(getattr(obj, "to_dict", None)) and hasattr(obj, "columns"):  # a DataFrame
        rows, kind = obj.to_dict("records"), type(obj).__name__
    elif _is_iterable_dataset(obj):
        raise LitFtError(
            f"{what} is a {type(obj).__name__}, a stream without a length: lit_ft's exact "
            "resumption needs rows it can index; give a Dataset with __len__ and __getitem__, "
            "or stream files or a Hub dataset with data.streaming=true"
        )
    elif not isinstance(obj, (str, bytes, Mapping)) and hasattr(obj, "__getitem__"):  # torch
        rows, kind = [_plain(obj[i]) for i in range(len(obj))], type(obj).__name__
    else:
        raise LitFtError(f"{what} is a {type(obj).__name__}; give {KINDS}")
    if not rows:
        raise LitFtError(f"{what} has no rows")
    if not all(isinstance(row, Mapping) for row in rows):
        raise LitFtError(f"{what}: every row must be a dict of column -> value")
    fingerprint = content_hash(rows)
    try:
        loaded = datasets.Dataset.from_list([dict(row) for row in rows])
    except (TypeError, ValueError) as err:  # e.g. a column mixing strings and numbers
        raise LitFtError(f"{what} cannot become a datasets.Dataset: {err}") from err
    # The content hash as the dataset's own fingerprint: the task's cache keys and a
    # checkpoint's data fingerprint start from it (lit_ft/tasks/base.py cached_map).
    dataset = datasets.Dataset(loaded.data, info=loaded.info, fingerprint=fingerprint)
    return dataset, _record(kind, dataset, fingerprint)


def _is_iterable_dataset(obj) -> bool:
    import torch

    return isinstance(obj, torch.utils.data.IterableDataset)


def _plain(row):
    """A row with tensors and numpy arrays as lists and numbers: what a file would give, and
    what the content hash reads faithfully (a tensor's repr elides long ones)."""
    if not isinstance(row, Mapping):
        return row  # refused below, with the other rows' check
    return {key: _plain_value(value) for key, value in row.items()}


def _plain_value(value):
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else value


def _record(kind: str, dataset, fingerprint: str) -> dict[str, Any]:
    return {"kind": kind, "rows": len(dataset), "fingerprint": fingerprint}


def given_splits(train, evaluation=None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The raw splits for the datamodule and their record for config.yaml and results.json.

    `train` may be a `DatasetDict` (its splits as they are, `train` among them); an
    `evaluation` object is the validation split. Without one, validation is held out of train
    as for a file (data.validation_split_percentage).
    """
    import datasets

    if isinstance(train, datasets.DatasetDict):
        if "train" not in train:
            raise LitFtError(f"train_dataset (a DatasetDict) has no 'train' split: {list(train)}")
        parts = {f"train_dataset['{name}']": (name, split) for name, split in train.items()}
    else:
        parts = {"train_dataset": ("train", train)}
    if evaluation is not None:
        if isinstance(evaluation, datasets.DatasetDict):
            raise LitFtError("eval_dataset is a DatasetDict: give one split, e.g. ds['validation']")
        parts["eval_dataset"] = ("validation", evaluation)
    splits, record = {}, {}
    for what, (name, obj) in parts.items():
        splits[name], record[name] = as_dataset(obj, what)
    return splits, record
