"""Tasks whose labels come from the data (sequence and token classification): the label set
learned from the splits, written into the model config, and part of the cache key."""

from __future__ import annotations

from typing import Any

from lit_ft.errors import LitFtError
from lit_ft.tasks.base import Task, TaskContext


def fit_label_map(splits, column: str, source: str) -> tuple[list[str], dict[Any, int]]:
    """The label names and the map from stored values to ids.

    A ClassLabel column (or a list of them) already stores ids: its names are used as they are.
    Otherwise the ids number the distinct values of the train split in sorted order. Labels
    that only appear in validation/test would have no output unit: refused, naming them.
    Rows labelled -1 or None (GLUE's hidden test labels) count as unlabelled.
    """
    feature = splits["train"].features[column]
    names = getattr(feature, "names", None) or getattr(
        getattr(feature, "feature", None), "names", None
    )
    if names:
        return list(names), {i: i for i in range(len(names))}
    seen = {s: _distinct(ds[column]) for s, ds in splits.items() if column in ds.column_names}
    known = seen["train"]
    for split, values in seen.items():
        unseen = sorted(values - known, key=str)
        if unseen:
            raise LitFtError(
                f"the {split} split of {source} has labels the train split never shows: "
                f"{', '.join(map(str, unseen[:10]))}; the model can only predict "
                f"{', '.join(map(str, sorted(known, key=str)[:20]))}"
            )
    values = sorted(known)
    return [str(v) for v in values], {v: i for i, v in enumerate(values)}


def _distinct(values) -> set:
    flat = set()
    for value in values:
        if isinstance(value, list):
            flat.update(value)
        elif value is not None and value != -1:
            flat.add(value)
    return flat - {-100}  # a token not scored (pre-tokenized token classification)


class LabelledTask(Task):
    """A task whose labels come from the data: it learns the label set from the splits, writes it
    into the model config, and keys its cache on it. `label_key` names the data-config column."""

    label_key: str

    def __init__(self, tokenizer, columns, max_length: int):
        super().__init__(tokenizer, columns, max_length)
        self.labels: list[str] = []
        self.label2id: dict[Any, int] = {}

    tokenized_columns = ("input_ids", "labels")

    def fit_labels(self, splits, source: str, column: str | None = None) -> None:
        column = column or self.column[self.label_key]
        self.labels, self.label2id = fit_label_map(splits, column, source)

    def _tokenized_rows(self, batch: dict[str, list]) -> dict[str, list]:
        """The labels as the label set's ids (-100, a token not scored, stays)."""
        ids = {**self.label2id, -100: -100}

        def mapped(label):
            return [ids[x] for x in label] if isinstance(label, list) else ids[label]

        return {"input_ids": batch["input_ids"], "labels": [mapped(x) for x in batch["labels"]]}

    def configure_model(self, hf_config) -> None:
        # Saved with the model, so from_pretrained + pipeline() print names, not LABEL_3.
        hf_config.num_labels = len(self.labels)
        hf_config.id2label = dict(enumerate(self.labels))
        hf_config.label2id = {name: i for i, name in enumerate(self.labels)}

    def options(self) -> dict[str, Any]:
        return {**super().options(), "labels": self.labels}

    def preprocess(self, dataset, split: str, context: TaskContext):
        return self.cached_map(
            dataset, self._encode, split, context, "Tokenizing", remove_columns=dataset.column_names
        )
