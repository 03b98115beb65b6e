"""sequence_classification: one label per text (or text pair), e.g. sentiment or topic."""

from __future__ import annotations

from typing import Any

from lit_ft.tasks.base import PadCollator
from lit_ft.tasks.labelled import LabelledTask


class SequenceClassificationTask(LabelledTask):
    name = "sequence_classification"
    auto_class = "AutoModelForSequenceClassification"
    description = "one label per text or text pair"
    predicts = True
    headline, headline_label = "val/accuracy", "validation accuracy"
    columns = ("text_column", "label_column")
    optional_columns = ("text_pair_column",)
    label_key = "label_column"
    pad_note: str | None = None  # set by configure_model when the model had no pad token

    def configure_model(self, hf_config) -> None:
        super().configure_model(hf_config)
        self.pad_note = pad_token_for_classification(hf_config, self.tokenizer)

    def describe(self) -> str | None:
        return self.pad_note

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
        return PadCollator(self.tokenizer.pad_token_id, labels="per_row")

    def evaluator(self):
        from lit_ft.tasks.metrics import ClassificationEvaluator

        return ClassificationEvaluator(len(self.labels))

    def predict(self, model, batch) -> list[dict[str, Any]]:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        probabilities = logits.float().softmax(-1)
        return [
            {
                "prediction": self.labels[int(p.argmax())],
                "probability": round(float(p.max()), 4),
                "label": self.labels[int(label)] if label >= 0 else None,
            }
            for p, label in zip(probabilities, batch["labels"].tolist(), strict=True)
        ]

    def prediction_inputs(self, row: dict[str, Any]) -> dict[str, Any]:
        pair = self.column["text_pair_column"]
        inputs = {"input": row[self.column["text_column"]]}
        return {**inputs, "input_pair": row[pair]} if pair else inputs


def pad_token_for_classification(hf_config, tokenizer) -> str | None:
    """Give a model without a pad token the tokenizer's, and say so (None: it had one).

    The classification heads of causal LMs (GPT2ForSequenceClassification, Llama's, ...) read
    the logits at each row's last token that is not pad_token_id; with none set they refuse
    batches of more than one row. GPT-2 has no pad token: reuse the one the tokenizer pads with
    (EOS, lit_ft.model.build.load_tokenizer), as the HF docs do for GPT-2 classification.
    Written into the config, it is saved with the exported model."""
    if getattr(hf_config, "pad_token_id", None) is not None or tokenizer.pad_token_id is None:
        return None
    hf_config.pad_token_id = tokenizer.pad_token_id
    return (
        f"the model has no pad token; pad_token_id={tokenizer.pad_token_id} "
        f"({tokenizer.pad_token}) set in its config, so each row is classified at its last "
        "real token"
    )
