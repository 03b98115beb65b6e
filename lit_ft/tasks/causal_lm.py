"""causal_lm: next-token prediction on text cut into blocks of `data.block_size` tokens."""

from __future__ import annotations

from itertools import chain
from typing import Any

from lit_ft.errors import LitFtError
from lit_ft.tasks.base import PadCollator, Task, TaskContext


class CausalLMTask(Task):
    name = "causal_lm"
    auto_class = "AutoModelForCausalLM"
    tokenized_columns = ("input_ids",)  # one example per row; labels come from the inputs
    shifted_labels = True
    description = "next-token prediction on text split into blocks"
    columns = ("text_column",)
    special_tokens = False  # GPT-style tokenizers add none; BOS/EOS come from add_eos

    def options(self) -> dict[str, Any]:
        return {**super().options(), "add_eos": self.add_eos}

    def preprocess(self, dataset, split: str, context: TaskContext):
        tokens = self.cached_map(
            dataset,
            self._tokenize,
            split,
            context,
            "Tokenizing",
            remove_columns=dataset.column_names,
        )
        blocks = self.cached_map(
            tokens, self._group, split, context, f"Grouping into blocks of {self.max_length}:"
        )
        if len(blocks) == 0:
            total = sum(len(ids) for ids in tokens["input_ids"])
            raise LitFtError(
                f"the {split} split has {total} tokens, fewer than one block of "
                f"data.block_size={self.max_length}; lower data.block_size or add text"
            )
        return blocks

    def _tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        # verbose=False: documents longer than the model are expected, they are cut into
        # blocks next, so the tokenizer's "sequence too long" warning would only mislead.
        encoded = self.tokenizer(
            batch[self.column["text_column"]],
            add_special_tokens=self.special_tokens,
            return_special_tokens_mask=self.special_tokens,
            verbose=False,
        )
        out = {"input_ids": encoded["input_ids"]}
        if self.special_tokens:  # MLM never masks [CLS]/[SEP]; the collator needs to know them
            out["special_tokens_mask"] = encoded["special_tokens_mask"]
        if self.add_eos:
            eos = self.tokenizer.eos_token_id
            out = {k: [row + [eos if k == "input_ids" else 1] for row in v] for k, v in out.items()}
        return out

    def _group(self, batch: dict[str, list]) -> dict[str, list]:
        """Concatenate all rows and cut them into blocks (the remainder is dropped)."""
        size = self.max_length
        grouped = {}
        for key, rows in batch.items():
            flat = list(chain.from_iterable(rows))
            usable = len(flat) // size * size
            grouped[key] = [flat[i : i + size] for i in range(0, usable, size)]
        return grouped

    def collate(self):
        return PadCollator(self.tokenizer.pad_token_id, labels="from_inputs")

    def evaluator(self):
        from lit_ft.tasks.metrics import LanguageModelingEvaluator

        return LanguageModelingEvaluator(shifted=True)
