"""instruction (SFT): learn to answer prompts; the loss counts the response tokens only.

A row is a prompt and a response (two columns, or a prompt built from several columns with
`prompt_template`), or a chat (`messages_column`: a list of {role, content}, the last one the
assistant's). With the tokenizer's chat template when it has one, else a plain
"role: content" layout. Prompt tokens get label -100, so the model is not trained to
reproduce the user's text.

`packing=true` fills each block with several examples back to back. Each example restarts
its position ids; with no attention mask and no KV cache, transformers then builds a
block-diagonal mask, so examples in one block never attend to each other (tested against
the logits of each example alone in tests/test_tasks.py).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from lit_ft.errors import LitFtError
from lit_ft.tasks.base import PadCollator, Task, TaskContext, pad_rows

log = logging.getLogger(__name__)


class InstructionTask(Task):
    name = "instruction"
    auto_class = "AutoModelForCausalLM"
    description = "prompt -> response pairs or chats; loss on the responses only"
    optional_columns = ("prompt_column", "response_column", "messages_column")

    def __init__(
        self,
        tokenizer,
        columns,
        max_length: int,
        prompt_template: str | None = None,
        chat_template: bool = True,
        packing: bool = False,
        eval_generations: int = 32,
        eval_max_new_tokens: int = 64,
    ):
        super().__init__(tokenizer, columns, max_length)
        self.prompt_template = prompt_template  # e.g. "{instruction}\n\n{input}"
        self.use_chat_template = chat_template and bool(getattr(tokenizer, "chat_template", None))
        self.packing = packing
        # Not in options(): they change what is measured, not the processed rows.
        self.eval_generations, self.eval_max_new_tokens = eval_generations, eval_max_new_tokens
        if eval_generations:  # answers are generated: scored, written, and the headline
            self.predicts = True
            self.headline, self.headline_label = "val/rougeL", "validation ROUGE-L"

    def options(self) -> dict[str, Any]:
        return {
            **super().options(),
            "prompt_template": self.prompt_template,
            "chat_template": self.use_chat_template,
            "packing": self.packing,
        }

    def check_columns(self, dataset, source: str) -> None:
        pair = self.column["prompt_column"] and self.column["response_column"]
        if self.column["messages_column"] is None and self.prompt_template is None and not pair:
            raise LitFtError(
                "task 'instruction' needs data.messages_column, or data.prompt_column and "
                f"data.response_column; columns of {source}: {', '.join(dataset.column_names)}"
            )
        if self.prompt_template is not None:
            missing = _template_fields(self.prompt_template) - set(dataset.column_names)
            if missing:
                raise LitFtError(
                    f"task.prompt_template uses {', '.join(sorted(missing))}, not columns of "
                    f"{source}; columns: {', '.join(dataset.column_names)}"
                )
        if self.column["messages_column"]:  # a chat replaces the prompt/response columns
            ignored = ("prompt_column", "response_column")
        else:
            ignored = ("prompt_column",) if self.prompt_template else ()
        used = [k for k, v in self.column.items() if k not in ignored and v is not None]
        self.require_columns(dataset, source, used)

    # -- rows -> (prompt ids, response ids) -------------------------------------------------
    def preprocess(self, dataset, split: str, context: TaskContext):
        kept = self.cached_map(
            dataset, self._encode, split, context, "Tokenizing", remove_columns=dataset.column_names
        )
        if len(kept) < len(dataset):
            log.warning(
                "%s: %d of %d examples have no response token left within data.block_size=%d "
                "and are skipped",
                split,
                len(dataset) - len(kept),
                len(dataset),
                self.max_length,
            )
        if self.packing:
            kept = self.cached_map(kept, self._pack, split, context, "Packing")
        return kept

    def _encode(self, batch: dict[str, list]) -> dict[str, list]:
        rows = [
            dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)
        ]
        input_ids, labels = [], []
        for row in rows:
            prompt, response = self._prompt_and_response(row)
            if len(prompt) >= self.max_length:
                continue  # the response would be cut off entirely: nothing to learn from
            input_ids.append((prompt + response)[: self.max_length])
            labels.append(([-100] * len(prompt) + response)[: self.max_length])
        return {"input_ids": input_ids, "labels": labels}

    def _prompt_and_response(self, row: dict[str, Any]) -> tuple[list[int], list[int]]:
        messages = self._messages(row)
        if messages[-1]["role"] != "assistant":
            raise LitFtError(
                f"data.messages_column: the last message of a chat must be the assistant's "
                f"(got role '{messages[-1]['role']}')"
            )
        if self.use_chat_template:
            full = self._apply_template(messages, generation_prompt=False)
            prompt = self._apply_template(messages[:-1], generation_prompt=True)
            if full[: len(prompt)] == prompt:  # the template renders the prompt as a prefix
                return prompt, full[len(prompt) :]
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages[:-1]) + "assistant: "
        prompt = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        response = self.tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"]
        eos = self.tokenizer.eos_token_id
        return prompt, response + ([eos] if eos is not None else [])

    def _messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        if self.column["messages_column"]:
            return list(row[self.column["messages_column"]])
        prompt = (
            self.prompt_template.format(**row)
            if self.prompt_template
            else row[self.column["prompt_column"]]
        )
        return [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": row[self.column["response_column"]]},
        ]

    def _apply_template(self, messages, generation_prompt: bool) -> list[int]:
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=generation_prompt, tokenize=True, return_dict=False
        )
        return list(ids)

    # -- packing -----------------------------------------------------------------------------
    def check_model(self, model) -> None:
        from lit_ft.tasks.packing import keeps_packed_examples_apart

        if self.packing and not keeps_packed_examples_apart(model):
            raise LitFtError(
                f"task.packing=true: {type(model).__name__} does not keep packed examples "
                "apart by their position ids (they would attend to each other); set "
                "task.packing=false (data.group_by_length=true also cuts padding)"
            )

    def _pack(self, batch: dict[str, list]) -> dict[str, list]:
        """Greedy in order: start a new block when the next example does not fit."""
        blocks: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": []}
        current: dict[str, list] = {key: [] for key in blocks}
        for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
            if current["input_ids"] and len(current["input_ids"]) + len(ids) > self.max_length:
                for key in blocks:
                    blocks[key].append(current[key])
                current = {key: [] for key in blocks}
            current["input_ids"] += ids
            current["labels"] += labels
            current["position_ids"] += list(range(len(ids)))
        if current["input_ids"]:
            for key in blocks:
                blocks[key].append(current[key])
        return blocks

    def collate(self):
        pad = self.tokenizer.pad_token_id
        if not self.packing:
            return PadCollator(pad, labels="per_token")
        # No attention_mask: position ids that restart mark where examples begin, and
        # transformers masks across them. Padding positions form one more "example". The mask
        # travels as `_real_tokens`, for token counting only (lit_ft/observe/tokens.py).
        padded = PadCollator(pad, labels="per_token", attention_mask_key="_real_tokens")

        def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
            batch = padded(rows)
            batch["position_ids"] = pad_rows([r["position_ids"] for r in rows], 0)
            batch["use_cache"] = False  # ...only without a KV cache (eval mode makes one)
            return batch

        return collate

    def evaluator(self):
        from lit_ft.tasks.metrics import AnswerEvaluator, LanguageModelingEvaluator

        if not self.eval_generations:
            return LanguageModelingEvaluator(shifted=True)
        return AnswerEvaluator(self.tokenizer, self.eval_generations, self.eval_max_new_tokens)

    def predict(self, model, batch) -> list[dict[str, Any]]:
        """prompt, generated answer and reference of each example (packed rows split apart)."""
        from lit_ft.tasks.answers import decode, examples_of, generate_answers

        examples = examples_of(batch)
        prompts = [e.prompt for e in examples]
        answers = generate_answers(model, self.tokenizer, prompts, self.eval_max_new_tokens)
        references = decode(self.tokenizer, [e.reference for e in examples])
        inputs = self.tokenizer.batch_decode(prompts)  # special tokens kept: the chat layout
        return [
            {"input": p, "prediction": a, "label": r}
            for p, a, r in zip(inputs, answers, references, strict=True)
        ]


def _template_fields(template: str) -> set[str]:
    import string

    return {field for _, field, _, _ in string.Formatter().parse(template) if field}
