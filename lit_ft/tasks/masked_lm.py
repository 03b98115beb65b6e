"""masked_lm: BERT-style denoising on text blocks, with fresh masks drawn for every batch."""

from __future__ import annotations

from typing import Any

from lit_ft.errors import LitFtError
from lit_ft.tasks.causal_lm import CausalLMTask


class MaskedLMTask(CausalLMTask):
    name = "masked_lm"
    previous_name = "masked-lm"  # before names matched conf/task/<name>.yaml
    auto_class = "AutoModelForMaskedLM"
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

    def evaluator(self):
        from lit_ft.tasks.metrics import LanguageModelingEvaluator

        return LanguageModelingEvaluator(shifted=False)
