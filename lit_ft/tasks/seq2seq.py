"""seq2seq: text in, text out (summarization, translation) with an encoder-decoder model."""

from __future__ import annotations

from typing import Any

from lit_ft.tasks.base import Task, TaskContext


class Seq2SeqTask(Task):
    name = "seq2seq"
    auto_class = "AutoModelForSeq2SeqLM"
    description = "generate a target text from a source text (encoder-decoder)"
    predicts = True
    headline, headline_label = "val/rougeL", "validation ROUGE-L"
    columns = ("source_column", "target_column")

    def __init__(
        self,
        tokenizer,
        columns,
        max_length: int,
        source_prefix: str = "",
        max_target_length: int = 128,
        generate_max_new_tokens: int = 64,
        num_beams: int = 1,
    ):
        super().__init__(tokenizer, columns, max_length)
        self.source_prefix = source_prefix  # T5 expects e.g. "summarize: "
        self.max_target_length = max_target_length
        self.generate_max_new_tokens = generate_max_new_tokens
        self.num_beams = num_beams

    def options(self) -> dict[str, Any]:
        return {
            **super().options(),
            "source_prefix": self.source_prefix,
            "max_target_length": self.max_target_length,
        }

    def preprocess(self, dataset, split: str, context: TaskContext):
        return self.cached_map(
            dataset, self._encode, split, context, "Tokenizing", remove_columns=dataset.column_names
        )

    def _encode(self, batch: dict[str, list]) -> dict[str, list]:
        sources = [self.source_prefix + s for s in batch[self.column["source_column"]]]
        encoded = self.tokenizer(sources, truncation=True, max_length=self.max_length)
        targets = self.tokenizer(
            text_target=batch[self.column["target_column"]],
            truncation=True,
            max_length=self.max_target_length,
        )["input_ids"]
        eos = self.tokenizer.eos_token_id
        # Tokenizers that add no EOS (byte-level BPE) would teach a model that never stops.
        targets = [t if not t or t[-1] == eos or eos is None else [*t, eos] for t in targets]
        return {"input_ids": encoded["input_ids"], "labels": targets}

    def collate(self):
        from transformers import DataCollatorForSeq2Seq

        # Labels padded with -100. No decoder_input_ids here: encoder-decoder models shift the
        # labels right themselves when given only labels.
        return DataCollatorForSeq2Seq(self.tokenizer, label_pad_token_id=-100, return_tensors="pt")

    def evaluator(self):
        from lit_ft.tasks.metrics import Seq2SeqEvaluator

        return Seq2SeqEvaluator(self.tokenizer, self.generate_max_new_tokens, self.num_beams)

    def predict(self, model, batch) -> list[dict[str, Any]]:
        from lit_ft.tasks.metrics import decode_labels, generate_text

        predictions = generate_text(
            model,
            self.tokenizer,
            batch,
            max_new_tokens=self.generate_max_new_tokens,
            num_beams=self.num_beams,
        )
        references = decode_labels(self.tokenizer, batch["labels"])
        return [{"prediction": p, "label": r} for p, r in zip(predictions, references, strict=True)]

    def prediction_inputs(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"input": row[self.column["source_column"]]}
