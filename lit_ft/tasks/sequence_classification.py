"""sequence-classification: one label per text (or text pair), e.g. sentiment or topic."""

from __future__ import annotations

from typing import Any

import torch

from lit_ft.errors import LitFtError
from lit_ft.tasks.base import Task, TaskContext, attention_mask, pad_rows


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
    return flat


class LabelledTask(Task):
    """A task whose labels come from the data: it learns the label set from the splits, writes it
    into the model config, and keys its cache on it. `label_key` names the data-config column."""

    label_key: str

    def __init__(self, tokenizer, columns, max_length: int):
        super().__init__(tokenizer, columns, max_length)
        self.labels: list[str] = []
        self.label2id: dict[Any, int] = {}

    def fit_labels(self, splits, source: str) -> None:
        self.labels, self.label2id = fit_label_map(splits, self.column[self.label_key], source)

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


class SequenceClassificationTask(LabelledTask):
    name = "sequence-classification"
    auto_class = "AutoModelForSequenceClassification"
    description = "one label per text or text pair"
    predicts = True
    headline = "val/accuracy"
    columns = ("text_column", "label_column")
    optional_columns = ("text_pair_column",)
    label_key = "label_column"

    def _encode(self, batch: dict[str, list]) -> dict[str, list]:
        pair = self.column["text_pair_column"]
        encoded = self.tokenizer(
            batch[self.column["text_column"]],
            batch[pair] if pair else None,
            truncation=True,
            max_length=self.max_length,
        )
        labels = [self.label2id.get(v, -1) for v in batch[self.column["label_column"]]]
        return {"input_ids": encoded["input_ids"], "labels": labels}

    def collate(self):
        pad = self.tokenizer.pad_token_id

        def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
            ids = [r["input_ids"] for r in rows]
            return {
                "input_ids": pad_rows(ids, pad),
                "attention_mask": attention_mask(ids),
                "labels": torch.tensor([r["labels"] for r in rows], dtype=torch.long),
            }

        return collate

    def evaluator(self):
        from lit_ft.metrics import ClassificationEvaluator

        return ClassificationEvaluator(len(self.labels))

    def predict(self, model, batch) -> list[dict[str, Any]]:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        probabilities = logits.float().softmax(-1)
        texts = self.tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
        return [
            {
                "input": text,
                "prediction": self.labels[int(p.argmax())],
                "probability": round(float(p.max()), 4),
                "label": self.labels[int(label)] if label >= 0 else None,
            }
            for text, p, label in zip(texts, probabilities, batch["labels"].tolist(), strict=True)
        ]
