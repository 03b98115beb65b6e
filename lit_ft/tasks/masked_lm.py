"""masked_lm: BERT-style denoising on text blocks: fresh masks for every training batch, and
masks fixed per row for evaluation (the same targets at every validation and batch size)."""

from __future__ import annotations

from typing import Any

from lit_ft.errors import LitFtError
from lit_ft.tasks.causal_lm import CausalLMTask


class MaskedLMTask(CausalLMTask):
    name = "masked_lm"
    auto_class = "AutoModelForMaskedLM"
    tokenized_columns = ("input_ids",)  # one example per row; labels come from the inputs
    shifted_labels = False
    description = "predict masked tokens in text split into blocks (dynamic masking)"
    special_tokens = True  # [CLS] ... [SEP] around each document, as the model was pretrained

    def __init__(self, tokenizer, columns, max_length: int, mlm_probability: float = 0.15):
        if tokenizer.mask_token is None:
            raise LitFtError(
                "task 'masked_lm' needs a tokenizer with a mask token; this one has none "
                "(use a BERT/RoBERTa-style model, or task=causal_lm)"
            )
        super().__init__(tokenizer, columns, max_length)
        self.mlm_probability = mlm_probability

    def options(self) -> dict[str, Any]:
        return {**super().options(), "special_tokens": True}

    def collate(self):
        from transformers import DataCollatorForLanguageModeling

        # No `seed`: masks then come from the global torch RNG, which lit_ft checkpoints and
        # restores, so a resumed run draws the same masks as an uninterrupted one.
        return DataCollatorForLanguageModeling(
            self.tokenizer, mlm=True, mlm_probability=self.mlm_probability, return_tensors="pt"
        )

    def eval_collate(self):
        return FixedRowMasks(self.tokenizer, self.mlm_probability)

    def evaluator(self):
        from lit_ft.tasks.metrics import LanguageModelingEvaluator

        return LanguageModelingEvaluator(shifted=False)


class FixedRowMasks:
    """Evaluation batches whose masks are a function of each row alone.

    Fresh masks per batch (training's collate) would make the validation perplexity noise:
    another draw at every validation, and another at every batch size, since a batch's masks
    come from one RNG in row order. Here row r's masks come from a generator seeded with a
    hash of its token ids, so a row is scored on the same targets at every validation, at
    any batch size, on any number of processes. BERT's recipe per chosen token, as in
    training: 80% [MASK], 10% a random token, 10% unchanged; special tokens are never chosen.
    """

    def __init__(self, tokenizer, mlm_probability: float) -> None:
        self.tokenizer, self.mlm_probability = tokenizer, mlm_probability

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        ids = [list(row["input_ids"]) for row in rows]
        width = max(len(r) for r in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        labels = torch.full((len(ids), width), -100, dtype=torch.long)
        attention = torch.zeros((len(ids), width), dtype=torch.long)
        for i, (row, raw) in enumerate(zip(ids, rows, strict=True)):
            masked, targets = self._mask(row, raw.get("special_tokens_mask"))
            input_ids[i, : len(row)], labels[i, : len(row)] = masked, targets
            attention[i, : len(row)] = 1
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}

    def _mask(self, row: list[int], special_mask: list[int] | None):
        import hashlib

        import torch

        # A stable hash (Python's hash() of a tuple changes between processes).
        digest = hashlib.blake2b(str(row).encode(), digest_size=8).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
        ids = torch.tensor(row, dtype=torch.long)
        if special_mask is None:  # the blocks carry it; a row without one is asked for it
            special_mask = self.tokenizer.get_special_tokens_mask(
                row, already_has_special_tokens=True
            )
        special = torch.tensor(list(special_mask), dtype=torch.bool)
        chosen = torch.rand(len(row), generator=generator) < self.mlm_probability
        chosen &= ~special
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        draw = torch.rand(len(row), generator=generator)
        random_ids = torch.randint(len(self.tokenizer), (len(row),), generator=generator)
        masked = ids.clone()
        masked[chosen & (draw < 0.8)] = self.tokenizer.mask_token_id
        swap = chosen & (draw >= 0.8) & (draw < 0.9)
        masked[swap] = random_ids[swap]
        return masked, labels
