"""instruction (SFT): learn to answer prompts; the loss counts the assistant's tokens only.

A row is a prompt and a response (two columns, or a prompt built from several columns with
`prompt_template`), or a chat (`messages_column`: a list of {role, content}). Every row is
rendered with a chat template (the tokenizer's own, else `task.chat_template`, see
lit_ft/tasks/chat.py) and trains every assistant turn (`task.train_on=all_assistant`) or
the last one; system, user and tool messages get label -100. The same template is saved
with the exported tokenizer, so inference formats prompts as training did.

A row longer than the block (`data.block_size`) is cut there (`data.truncation=cut`),
dropped (`drop`), or, for chats, cut after its last whole turn that fits (`turns`: the
leading complete question-answer turns; dropped when even the first answer does not fit).
The pre-flight says how many rows were over and how many tokens that left out.

`packing=true` fills each block with several examples, best fit decreasing. Each example
restarts its position ids; with no attention mask and no KV cache, transformers then builds
a block-diagonal mask, so examples in one block never attend to each other (tested against
the logits of each example alone in tests/test_tasks.py).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from lit_ft.compat import dataset_fingerprint
from lit_ft.errors import LitFtError
from lit_ft.problems import Problems
from lit_ft.tasks.answers import REFERENCES, generation_problems
from lit_ft.tasks.base import PadCollator, Task, TaskContext, example_lengths, pad_rows
from lit_ft.tasks.chat import (
    add_end_of_turn_token,
    answer_spans,
    end_of_turn,
    marked,
    resolve_template,
    template_problem,
    tokens_and_labels,
    train_on_problem,
)
from lit_ft.tasks.packing import (
    best_fit_decreasing,
    keeps_packed_examples_apart,
    packing_efficiency,
)

TRUNCATION = ("cut", "drop", "turns")
LENGTH = "_full_length"  # a row's tokens before the block size cut it (for the report)


def truncation_problems(truncation: str, task: str) -> Problems:
    """data.truncation: one of TRUNCATION; other than `cut` only where it is implemented."""
    problems = Problems()
    problems.need(
        truncation in TRUNCATION,
        f"data.truncation='{truncation}' is unknown; use one of {', '.join(TRUNCATION)}",
    )
    problems.need(
        truncation not in TRUNCATION or truncation == "cut" or task == "instruction",
        f"data.truncation={truncation} applies to task=instruction only (task={task} cuts rows "
        "at data.block_size); drop the key or set it to cut",
    )
    return problems


class InstructionTask(Task):
    name = "instruction"
    auto_class = "AutoModelForCausalLM"
    shifted_labels = True
    description = "prompt -> response pairs or chats; loss on the responses only"
    optional_columns = ("prompt_column", "response_column", "messages_column")

    def __init__(
        self,
        tokenizer,
        columns,
        max_length: int,
        prompt_template: str | None = None,
        chat_template: str | None = None,
        train_on: str = "all_assistant",
        packing: bool = False,
        eval_generations: int = 32,
        eval_max_new_tokens: int = 64,
    ):
        super().__init__(tokenizer, columns, max_length)
        self.prompt_template = prompt_template  # e.g. "{instruction}\n\n{input}"
        # set on the tokenizer, so the exported tokenizer formats prompts the same way
        self.template_source = resolve_template(tokenizer, chat_template)
        # "<|im_end|>" in 8 pieces cannot stop generate(): one special token can
        self.added_end_of_turn = add_end_of_turn_token(tokenizer)
        self.train_on = train_on
        self.packing = packing
        self.packing_efficiency: dict[str, float] = {}  # per split, once packed
        self.over_length: dict[str, dict[str, int]] = {}  # per split: rows over the block
        # Not in options(): they change what is measured, not the processed rows.
        self.eval_generations, self.eval_max_new_tokens = eval_generations, eval_max_new_tokens
        if eval_generations:  # answers are generated: scored, written, and the headline
            self.predicts = True
            self.headline, self.headline_label = "val/rougeL", "validation ROUGE-L"

    @classmethod
    def option_problems(cls, options) -> Problems:
        problems = Problems()
        problems.add(template_problem(options.get("chat_template")))
        problems.add(train_on_problem(options.get("train_on")))
        problems += generation_problems(options)
        return problems

    def options(self) -> dict[str, Any]:
        return {
            **super().options(),
            "prompt_template": self.prompt_template,
            "chat_template": self.tokenizer.chat_template,  # the text: a changed one re-tokenizes
            "train_on": self.train_on,
            "packing": self.packing,
            "truncation": self.truncation,
            REFERENCES: 1,  # the rows carry their answers' whole text (a new cache key)
        }

    def describe(self) -> str:
        text = f"chat template: {self.template_source}; trains {self.train_on.replace('_', ' ')}"
        if self.added_end_of_turn:
            text += f"; {self.added_end_of_turn} added as one token (generation stops on it)"
        for split, counts in self.over_length.items():
            text += f"; {over_length_text(split, counts, self.max_length, self.truncation)}"
        if self.packing_efficiency:
            # e.g. 1,200 examples of ~40 tokens in 400 blocks of 128: 48,000 / 51,200 = 94%
            shares = ", ".join(f"{k} {v:.0%}" for k, v in self.packing_efficiency.items())
            text += f"; packed blocks filled: {shares}"
        return text

    def report(self) -> dict[str, Any]:
        return {
            "chat_template": self.template_source,
            "train_on": self.train_on,
            "packing_efficiency": self.packing_efficiency or None,
            "truncation": self.truncation,
            "over_length": self.over_length or None,
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
        from datasets.fingerprint import Hasher

        encoded = self.cached_map(
            dataset, self._encode, split, context, "Tokenizing", remove_columns=dataset.column_names
        )
        counts = over_length_counts(encoded, self.max_length)
        if counts["over"] or counts["dropped"]:
            self.over_length[split] = counts
        # rows left empty (dropped, or no answer token within the block) go; the fingerprint
        # follows the tokenized data's, so a second run loads this from the cache too
        kept = encoded
        if counts["dropped"]:
            kept = encoded.filter(
                _has_tokens,
                input_columns="input_ids",
                batched=True,
                new_fingerprint=Hasher.hash(f"{dataset_fingerprint(encoded)}-kept"),
                desc=f"Dropping rows {split}",
            )
        kept = kept.remove_columns(LENGTH)
        if self.packing:
            # best fit within each map batch: 10,000 examples give it plenty to choose from
            kept = self.cached_map(kept, self._pack, split, context, "Packing", batch_size=10_000)
            self.packing_efficiency[split] = packing_efficiency(
                example_lengths(kept).to_pylist(), self.max_length
            )
        return kept

    def _encode(self, batch: dict[str, list]) -> dict[str, list]:
        rows = [
            dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)
        ]
        out: dict[str, list] = {"input_ids": [], "labels": [], REFERENCES: [], LENGTH: []}
        for row in rows:
            ids, targets = self.encode_row(row)
            out[LENGTH].append(len(ids))
            end = fitting_end(targets, self.max_length, self.truncation)
            ids, targets = ids[:end], targets[:end]
            if all(t == -100 for t in targets):  # dropped, or every answer cut off: an empty
                ids, targets = [], []  # row, filtered out once the lengths are counted
            out["input_ids"].append(ids)
            out["labels"].append(targets)
            # a list: packing joins the texts of a block's examples
            out[REFERENCES].append([self._reference(row, targets)] if ids else [])
        return out

    def _reference(self, row: dict[str, Any], labels: list[int]) -> str:
        """The whole text of the answer the example's last trained span belongs to, as the
        row holds it: the block size may cut that span (or every later turn), and answers
        are scored against what the answer is, not against its first tokens. E.g. a two-turn
        chat cut inside the second answer: that answer; cut inside the second question: the
        first answer (its span is then the last one)."""
        # trained runs left after the cut, e.g. labels [-100, 5, 6, -100, 9] -> 2
        runs = sum(
            1 for i, t in enumerate(labels) if t != -100 and (i == 0 or labels[i - 1] == -100)
        )
        answers = [m for m in self._messages(row) if m["role"] == "assistant"]
        if self.train_on == "last_assistant":
            answers = answers[-1:]
        return str(answers[min(runs, len(answers)) - 1]["content"]).strip()

    def encode_row(self, row: dict[str, Any]) -> tuple[list[int], list[int]]:
        """Token ids of the rendered row and its labels (-100 outside the trained answers)."""
        text, spans = answer_spans(self.tokenizer, self._messages(row), self.train_on)
        return tokens_and_labels(self.tokenizer, text, spans)

    def preview(self, dataset) -> str | None:
        """The first training example, its trained tokens between « and » (pre-flight)."""
        if dataset is None or len(dataset) == 0:
            return None
        row = dataset[0]
        return marked(self.tokenizer, row["input_ids"], row["labels"])

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

    # -- packing -----------------------------------------------------------------------------
    def check_model(self, model) -> None:
        if self.packing and not keeps_packed_examples_apart(model):
            raise LitFtError(
                f"task.packing=true: {type(model).__name__} does not keep packed examples "
                "apart by their position ids (they would attend to each other); set "
                "task.packing=false (data.group_by_length=true also cuts padding)"
            )

    def _pack(self, batch: dict[str, list]) -> dict[str, list]:
        """Best fit decreasing over this map batch's examples (lit_ft/tasks/packing.py)."""
        blocks = best_fit_decreasing([len(ids) for ids in batch["input_ids"]], self.max_length)
        out: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": [], REFERENCES: []}
        for members in blocks:
            out["input_ids"].append([t for i in members for t in batch["input_ids"][i]])
            out["labels"].append([t for i in members for t in batch["labels"][i]])
            out[REFERENCES].append([r for i in members for r in batch[REFERENCES][i]])
            lengths = [len(batch["input_ids"][i]) for i in members]
            out["position_ids"].append([p for n in lengths for p in range(n)])
        return out

    def collate(self):
        pad = self.tokenizer.pad_token_id
        if not self.packing:
            return PadCollator(pad, labels="per_token")
        # No attention_mask: position ids that restart mark where examples begin, and
        # transformers masks across them. Padding positions form one more "example". The mask
        # travels as `_real_tokens`, for token counting only (lit_ft/observe/tokens.py).
        padded = PadCollator(pad, labels="per_token", attention_mask_key="_real_tokens")
        return partial(_collate_packed, padded=padded)  # module-level: pickles for ddp_spawn

    def eval_collate(self):
        """The training collate, plus each row's answer texts (one per example, in order) for
        scoring generated answers (`examples_of`); never sent to the model ('_' key)."""
        return WithReferences(self.collate())

    def select_rows(self, batch: dict[str, Any], keep: torch.Tensor) -> dict[str, Any]:
        selected = super().select_rows(batch, keep)
        if REFERENCES in batch:
            kept = zip(batch[REFERENCES], keep.tolist(), strict=True)
            selected[REFERENCES] = [texts for texts, k in kept if k]
        return selected

    def evaluator(self):
        from lit_ft.tasks.metrics import AnswerEvaluator, LanguageModelingEvaluator

        if not self.eval_generations:
            return LanguageModelingEvaluator(shifted=True)
        return AnswerEvaluator(
            self.tokenizer,
            self.eval_generations,
            self.eval_max_new_tokens,
            stop=end_of_turn(self.tokenizer),
        )

    def predict(self, model, batch) -> list[dict[str, Any]]:
        """prompt, generated answer and reference of each example (packed rows split apart)."""
        from lit_ft.tasks.answers import examples_of, generate_answers, reference_texts

        examples = examples_of(batch)
        prompts = [e.prompt for e in examples]
        stop = end_of_turn(self.tokenizer)
        answers = generate_answers(model, self.tokenizer, prompts, self.eval_max_new_tokens, stop)
        references = reference_texts(self.tokenizer, examples, stop)
        inputs = self.tokenizer.batch_decode(prompts)  # special tokens kept: the chat layout
        return [
            {"input": p, "prediction": a, "label": r}
            for p, a, r in zip(inputs, answers, references, strict=True)
        ]


def fitting_end(labels: list[int], block: int, truncation: str) -> int:
    """How many of a row's tokens it keeps within `block` tokens (0: the row is dropped).

    cut: min(length, block). drop: the row if it fits, else nothing. turns: up to the end of
    the last trained span that ends within the block (a whole answer with its end of turn),
    e.g. labels [-100, 5, 6, -100, -100, 9, 10] in 6: the first answer ends at 3 -> 3."""
    if len(labels) <= block:
        return len(labels)
    if truncation == "cut":
        return block
    if truncation == "drop":
        return 0
    ends = [i + 1 for i in range(block) if labels[i] != -100 and labels[i + 1] == -100]
    return ends[-1] if ends else 0


def over_length_counts(encoded, block: int) -> dict[str, int]:
    """Rows over the block and what that cost, from the tokenized rows' lengths before and
    after: e.g. lengths [300, 200, 412] in 256 and cut: 2 over, longest 412, 44 + 156 = 200
    of 912 tokens left out."""
    import pyarrow.compute as pc

    arrow = encoded.with_format("arrow")
    full = arrow[LENGTH]
    kept = pc.list_value_length(arrow["input_ids"])
    total, left = pc.sum(full).as_py() or 0, pc.sum(kept).as_py() or 0
    return {
        "rows": len(encoded),
        "over": pc.sum(pc.greater(full, block)).as_py() or 0,
        "longest": pc.max(full).as_py() or 0,
        "dropped": pc.sum(pc.equal(kept, 0)).as_py() or 0,
        "tokens": total,
        "tokens_left_out": total - left,
    }


def over_length_text(split: str, counts: dict[str, int], block: int, truncation: str) -> str:
    """E.g. "train: 28 of 4,999 rows exceed 256 tokens (longest 412); data.truncation=cut
    left out 1,210 of 1.3M tokens" (", dropping 3 rows" where rows kept no answer)."""
    total = counts["tokens"]
    total_text = f"{total / 1e6:.1f}M" if total >= 1e6 else f"{total:,}"
    text = (
        f"{split}: {counts['over']:,} of {counts['rows']:,} rows exceed {block} tokens "
        f"(longest {counts['longest']:,}); data.truncation={truncation} left out "
        f"{counts['tokens_left_out']:,} of {total_text} tokens"
    )
    if counts["dropped"]:
        text += f", dropping {counts['dropped']:,} rows"
    return text


def _has_tokens(batch: list[list[int]]) -> list[bool]:
    return [len(ids) > 0 for ids in batch]


def _template_fields(template: str) -> set[str]:
    import string

    return {field for _, field, _, _ in string.Formatter().parse(template) if field}


class WithReferences:
    """`collate`, plus each row's answer texts. A class, not a closure: a DataLoader's collate
    is pickled into the processes of `ddp_spawn` and of worker processes."""

    def __init__(self, collate) -> None:
        self.collate = collate

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(rows)
        batch[REFERENCES] = [list(row.get(REFERENCES) or []) for row in rows]
        return batch


def _collate_packed(rows: list[dict[str, Any]], padded: PadCollator) -> dict[str, torch.Tensor]:
    batch = padded(rows)
    batch["position_ids"] = pad_rows([r["position_ids"] for r in rows], 0)
    batch["use_cache"] = False  # ...only without a KV cache (eval mode makes one)
    return batch
