"""token_classification: one tag per word (NER, POS), words pre-split in a `tokens` column.

A word may become several word pieces; only its first piece carries the word's tag, the rest
get -100 (ignored by the loss and the metrics), so every word is scored exactly once.
"""

from __future__ import annotations

from typing import Any

from lit_ft.errors import LitFtError
from lit_ft.tasks.base import PadCollator
from lit_ft.tasks.labelled import LabelledTask


class TokenClassificationTask(LabelledTask):
    name = "token_classification"
    auto_class = "AutoModelForTokenClassification"
    description = "one tag per word, e.g. named entities (IOB tags)"
    predicts = True
    headline, headline_label = "val/f1", "validation entity F1"
    columns = ("tokens_column", "tags_column")
    label_key = "tags_column"

    def __init__(self, tokenizer, columns, max_length: int):
        if not getattr(tokenizer, "is_fast", False):
            raise LitFtError(
                "task 'token_classification' needs a fast tokenizer (word_ids() aligns tags to "
                "word pieces); this model's tokenizer is a slow one"
            )
        super().__init__(tokenizer, columns, max_length)

    def _encode(self, batch: dict[str, list]) -> dict[str, list]:
        encoded = self.tokenizer(
            batch[self.column["tokens_column"]],
            is_split_into_words=True,
            truncation=True,
            max_length=self.max_length,
        )
        labels = []
        for row, tags in enumerate(batch[self.column["tags_column"]]):
            previous, aligned = None, []
            for word in encoded.word_ids(row):
                first_piece = word is not None and word != previous
                aligned.append(self.label2id[tags[word]] if first_piece else -100)
                previous = word
            labels.append(aligned)
        return {"input_ids": encoded["input_ids"], "labels": labels}

    def collate(self):
        return PadCollator(self.tokenizer.pad_token_id, labels="per_token")

    def evaluator(self):
        from lit_ft.tasks.metrics import EntityEvaluator

        return EntityEvaluator(dict(enumerate(self.labels)))

    def predict(self, model, batch) -> list[dict[str, Any]]:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        rows = []
        masks = batch["attention_mask"].tolist()
        for pred, gold, mask in zip(
            logits.argmax(-1).tolist(), batch["labels"].tolist(), masks, strict=True
        ):
            first = [i for i, g in enumerate(gold) if g != -100]  # one position per word
            if not first:  # tokenized rows given without labels: a tag for every token
                first = [i for i, m in enumerate(mask) if m]
            rows.append(
                {
                    "prediction": [self.labels[pred[i]] for i in first],
                    "label": [self.labels[gold[i]] if gold[i] != -100 else None for i in first],
                }
            )
        return rows

    def prediction_inputs(self, row: dict[str, Any]) -> dict[str, Any]:
        # The words as a list, one per predicted tag (words past max_length get no tag).
        return {"input": list(row[self.column["tokens_column"]])}
