"""vision_instruction: image + text chats -> answers; the loss on the assistant's tokens only.

A row is a chat (`data.messages_column`) whose user turns hold content parts,
`{"type": "image"}` and `{"type": "text", "text": ...}`, and its images
(`data.images_column`: paths, relative to the data file or absolute, or a datasets `Image`
feature / PIL images), one per image part, in order. The model comes through
`AutoModelForImageTextToText` and its inputs through the model's `AutoProcessor`:

- Rendering: the processor's chat template, prefix by prefix as for task=instruction
  (lit_ft/tasks/chat.py), gives the character spans of the assistant answers. The chat is then
  tokenized piece by piece between those spans, each piece with its images through the
  processor, which expands an image's placeholder into the tokens the model reads the image
  into (LLaVA: a fixed 16 here; Idefics3: 4 per crop, crops by the image's size). So the
  prompt before an answer is tokenized exactly as the processor tokenizes the same prompt at
  inference, and labels are -100 on everything but the answers: never on image tokens,
  padding or the prompt (tests/test_vision.py checks by hand).
- Caching: token ids and labels are computed once (datasets cache); pixels are not stored.
  The collator loads each batch's images and runs the image processor on them.
- A row longer than `data.block_size` is left out (an image's tokens cannot be cut) and
  counted in the pre-flight; `task.packing` is refused (images of packed rows would need a
  block-diagonal attention over image tokens, which the processors do not build).

Validation generates the answers of the first `task.eval_generations` chats from their images
and prompts (greedy) and scores them: exact match, ROUGE-L and chrF, as for instruction.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any

import torch

from lit_ft.errors import LitFtError
from lit_ft.problems import Problems
from lit_ft.tasks.answers import REFERENCES, generation_problems
from lit_ft.tasks.base import PadCollator, Task, TaskContext
from lit_ft.tasks.chat import answer_spans, end_of_turn, marked, train_on_problem

IMAGES = "_images"  # a batch's image references per row (the model never sees this key)


class VisionInstructionTask(Task):
    name = "vision_instruction"
    auto_class = "AutoModelForImageTextToText"
    description = "image + text chats -> answers; loss on the assistant's tokens only"
    columns = ("messages_column", "images_column")
    shifted_labels = True
    row_name = "chats"
    needs_processor = True

    def __init__(
        self,
        tokenizer,
        columns,
        max_length: int,
        train_on: str = "all_assistant",
        packing: bool = False,
        eval_generations: int = 32,
        eval_max_new_tokens: int = 16,
    ):
        super().__init__(tokenizer, columns, max_length)
        self.train_on, self.packing = train_on, packing
        self.eval_generations, self.eval_max_new_tokens = eval_generations, eval_max_new_tokens
        self.processor = None  # set by lit_ft/data/prepare.py before any row is processed
        self.over_length: dict[str, int] = {}  # per split: rows left out
        if eval_generations:  # answers are generated: scored, written, and the headline
            self.predicts = True
            self.headline, self.headline_label = "val/exact_match", "validation exact match"

    @classmethod
    def option_problems(cls, options) -> Problems:
        problems = Problems()
        problems.add(train_on_problem(options.get("train_on")))
        problems.need(
            not options.get("packing"),
            "task.packing=true: vision_instruction does not pack chats (the processors build "
            "no attention that keeps packed images apart); set task.packing=false "
            "(data.group_by_length=true also cuts padding)",
        )
        problems += generation_problems(options)
        return problems

    def use_processor(self, processor) -> None:
        """The model's processor; its chat template renders the chats (and is exported)."""
        template = getattr(processor, "chat_template", None) or self.tokenizer.chat_template
        if not template:
            raise LitFtError(
                "the model's processor has no chat template, so image + text chats cannot be "
                "rendered; use a model whose processor has one (its chat_template.jinja)"
            )
        self.tokenizer.chat_template = template
        self.processor = processor

    @property
    def image_token(self) -> str:
        return self.processor.image_token

    def options(self) -> dict[str, Any]:
        return {
            **super().options(),
            "chat_template": self.tokenizer.chat_template,
            "image_processor": self.processor.image_processor.to_json_string(),
            "train_on": self.train_on,
            REFERENCES: 1,
        }

    def describe(self) -> str:
        text = (
            f"{type(self.processor).__name__} with {type(self.processor.image_processor).__name__}"
            f"; trains {self.train_on.replace('_', ' ')}"
        )
        for split, count in self.over_length.items():
            text += (
                f"; {split}: {count:,} chats longer than data.block_size={self.max_length} "
                "tokens are left out"
            )
        return text

    def report(self) -> dict[str, Any]:
        return {"train_on": self.train_on, "over_length": self.over_length or None}

    # -- rows -> (ids, labels, image references) ---------------------------------------------
    def preprocess(self, dataset, split: str, context: TaskContext):
        self._data_dirs = context.data_dirs
        self._split = split
        from datasets.fingerprint import Hasher

        from lit_ft.compat import dataset_fingerprint

        encoded = self.cached_map(
            dataset, self._encode, split, context, "Tokenizing",
            remove_columns=dataset.column_names, with_indices=True,
        )  # fmt: skip
        kept = encoded.filter(
            _has_tokens,
            input_columns="input_ids",
            batched=True,
            new_fingerprint=Hasher.hash(f"{dataset_fingerprint(encoded)}-kept"),
            desc=f"Dropping long chats {split}",
        )
        if len(kept) < len(encoded):
            self.over_length[split] = len(encoded) - len(kept)
        return kept

    def _encode(self, batch: dict[str, list], indices: list[int]):
        messages_key, images_key = self.column["messages_column"], self.column["images_column"]
        out: dict[str, list] = {"input_ids": [], "labels": [], IMAGES: [], REFERENCES: []}
        for i, (messages, refs) in enumerate(
            zip(batch[messages_key], batch[images_key], strict=True)
        ):
            where = f"row {indices[i]} of the {self._split} split"
            refs = self._image_refs(refs, where)
            ids, labels = self.encode_chat(messages, [load_image(r, where) for r in refs], where)
            if len(ids) > self.max_length:
                ids, labels = [], []
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out[IMAGES].append(refs)
            answers = [m for m in messages if m["role"] == "assistant"]
            out[REFERENCES].append([answer_text(answers[-1])] if answers else [])
        return out

    def encode_chat(self, messages, images, where: str = "the chat"):
        """Token ids and labels of one chat with its images (PIL), as described above."""
        parts = sum(_image_parts(m) for m in messages)
        if parts != len(images):
            raise LitFtError(
                f'{where}: its messages hold {parts} image part(s) ({{"type": "image"}}) '
                f"but data.images_column='{self.column['images_column']}' gives "
                f"{len(images)} image(s); give one image per image part, in order"
            )
        text, spans = answer_spans(self.tokenizer, messages, self.train_on)
        cuts = sorted({0, len(text), *(edge for span in spans for edge in span)})
        ids: list[int] = []
        labels: list[int] = []
        left = list(images)
        for begin, stop in zip(cuts, cuts[1:], strict=False):
            piece = text[begin:stop]
            trained = any(begin >= a and stop <= b for a, b in spans)
            count = piece.count(self.image_token)
            if count and trained:
                raise LitFtError(f"{where}: an assistant answer holds an image; images go in "
                                 "user turns")  # fmt: skip
            if count:
                taken, left = left[:count], left[count:]
                encoded = self.processor(text=[piece], images=[taken], add_special_tokens=False)
                piece_ids = list(encoded["input_ids"][0])
            else:
                piece_ids = self.tokenizer(piece, add_special_tokens=False)["input_ids"]
            ids += piece_ids
            labels += piece_ids if trained else [-100] * len(piece_ids)
        return ids, labels

    def _image_refs(self, refs, where: str) -> list:
        """The row's images as stored for the collator: a path (resolved against the data
        files' folders) or an image of a datasets Image feature, one per image part."""
        if refs is None:
            return []
        refs = refs if isinstance(refs, list | tuple) else [refs]
        return [self._resolve(r, where) if isinstance(r, str) else r for r in refs]

    def _resolve(self, path: str, where: str) -> str:
        candidate = Path(path).expanduser()
        if candidate.is_absolute():
            found = candidate if candidate.is_file() else None
        else:
            folders = [*self._data_dirs, Path.cwd()]
            found = next((Path(d) / path for d in folders if (Path(d) / path).is_file()), None)
        if found is None:
            folders = ", ".join(str(d) for d in [*self._data_dirs, Path.cwd()])
            searched = "" if candidate.is_absolute() else f" (looked in {folders})"
            raise LitFtError(
                f"{where}: image '{path}' of data.images_column="
                f"'{self.column['images_column']}' does not exist{searched}"
            )
        return str(found.resolve())

    def preview(self, dataset) -> str | None:
        if dataset is None or len(dataset) == 0:
            return None
        row = dataset[0]
        text = marked(self.tokenizer, row["input_ids"], row["labels"])
        token = re.escape(self.image_token)  # a run of image tokens shown once, with its length
        return re.sub(f"(?:{token})+", lambda m: self.readable_run(m.group(0)), text)

    def readable_run(self, run: str) -> str:
        return f"{self.image_token}x{len(run) // len(self.image_token)}"

    # -- batches ---------------------------------------------------------------------------
    def collate(self):
        return VisionCollator(self.tokenizer.pad_token_id, self.processor.image_processor)

    def eval_collate(self):
        return partial(_with_references, collate=self.collate())

    def pixel_inputs(self, images_per_row: list[list]) -> dict[str, torch.Tensor]:
        return self.collate().pixels(images_per_row)

    def select_rows(self, batch: dict[str, Any], keep: torch.Tensor) -> dict[str, Any]:
        flags = keep.tolist()
        images = [refs for refs, k in zip(batch[IMAGES], flags, strict=True) if k]
        kept = self.collate().pixels(images)
        selected = {
            k: v[keep] for k, v in batch.items() if isinstance(v, torch.Tensor) and k not in kept
        }
        selected.update(kept)
        selected[IMAGES] = images
        if REFERENCES in batch:
            selected[REFERENCES] = [r for r, k in zip(batch[REFERENCES], flags, strict=True) if k]
        return selected

    # -- evaluation ------------------------------------------------------------------------
    def evaluator(self):
        from lit_ft.tasks.metrics import LanguageModelingEvaluator, VisionAnswerEvaluator

        if not self.eval_generations:
            return LanguageModelingEvaluator(shifted=True)
        return VisionAnswerEvaluator(self, self.eval_generations, self.eval_max_new_tokens)

    def predict(self, model, batch) -> list[dict[str, Any]]:
        """The images, prompt, generated answer and reference of each chat."""
        prompts, rows = self.prompts_of(batch)
        answers = self.generate_answers(model, batch, prompts, rows, self.eval_max_new_tokens)
        references = [batch[REFERENCES][r][0] if batch[REFERENCES][r] else "" for r in rows]
        return [
            {
                "image": [_ref_text(x) for x in batch[IMAGES][r]],
                "input": self.readable(p),
                "prediction": a,
                "label": ref,
            }
            for p, r, a, ref in zip(prompts, rows, answers, references, strict=True)
        ]

    def sample_generations(self, model, rows, max_new_tokens: int) -> list[dict[str, str]]:
        """Greedy answers of validation chats from their images, for the samples printed at
        each validation (lit_ft/observe/generations.py): image, prompt, answer."""
        batch = self.collate()(rows)
        prompts, kept = self.prompts_of(batch)
        answers = self.generate_answers(model, batch, prompts, kept, max_new_tokens)
        return [
            {
                "image": ", ".join(Path(_ref_text(x)).name for x in batch[IMAGES][r]),
                "prompt": self.readable(p),
                "completion": a,
            }
            for p, r, a in zip(prompts, kept, answers, strict=True)
        ]

    def readable(self, ids: list[int]) -> str:
        """Token ids as text, each run of image tokens shown once with its length."""
        image = self.tokenizer.convert_tokens_to_ids(self.image_token)
        pieces, run = [], 0
        for token in [*ids, None]:
            if token == image:
                run += 1
                continue
            if run:
                pieces.append(self.readable_run(self.image_token * run))
                run = 0
            if token is not None:
                pieces.append(self.tokenizer.decode([token]))
        return "".join(pieces)

    def prompts_of(self, batch) -> tuple[list[list[int]], list[int]]:
        """Each row's prompt (every token before its last answer) and the rows that have one."""
        from lit_ft.tasks.answers import split_example

        prompts, rows = [], []
        for row in range(batch["input_ids"].shape[0]):
            keep = batch["attention_mask"][row].bool()
            example = split_example(
                batch["input_ids"][row][keep].tolist(), batch["labels"][row][keep].tolist()
            )
            if example is not None:
                prompts.append(example.prompt)
                rows.append(row)
        return prompts, rows

    def generate_answers(self, model, batch, prompts, rows, max_new_tokens: int) -> list[str]:
        from lit_ft.tasks.answers import generate_answers

        if not prompts:
            return []
        pixels = self.pixel_inputs([batch[IMAGES][r] for r in rows])
        stop = end_of_turn(self.tokenizer)
        return generate_answers(model, self.tokenizer, prompts, max_new_tokens, stop, pixels)


class VisionCollator:
    """Pads ids and labels (PadCollator), loads the rows' images and runs the image processor
    on them: pixel_values (and e.g. Idefics3's pixel_attention_mask) for this batch only. A
    class, not a closure: ddp_spawn and DataLoader workers pickle it."""

    def __init__(self, pad_token_id: int, image_processor) -> None:
        self.padded = PadCollator(pad_token_id, labels="per_token")
        self.image_processor = image_processor

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.padded(rows)
        refs = [list(r[IMAGES] or []) for r in rows]
        batch.update(self.pixels(refs))
        batch[IMAGES] = refs
        return batch

    def pixels(self, refs: list[list]) -> dict[str, torch.Tensor]:
        images = [[load_image(r, "a batch row") for r in row] for row in refs]
        if not any(images):
            return {}
        out = self.image_processor(images=images, return_tensors="pt")
        return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}


def _has_tokens(batch: list[list[int]]) -> list[bool]:
    return [len(ids) > 0 for ids in batch]


def _with_references(rows: list[dict[str, Any]], collate) -> dict[str, Any]:
    batch = collate(rows)
    batch[REFERENCES] = [list(row.get(REFERENCES) or []) for row in rows]
    return batch


def load_image(ref, where: str):
    """A PIL image in RGB from a path or an image object (datasets decodes Image features)."""
    from PIL import Image

    if isinstance(ref, dict):  # an undecoded datasets Image: {"bytes": ..., "path": ...}
        import io

        ref = Image.open(io.BytesIO(ref["bytes"])) if ref.get("bytes") else ref.get("path")
    if isinstance(ref, str | Path):
        try:
            with Image.open(ref) as opened:
                return opened.convert("RGB")
        except (OSError, ValueError) as err:
            raise LitFtError(f"{where}: image '{ref}' cannot be read: {err}") from err
    return ref.convert("RGB")


def _image_parts(message: dict[str, Any]) -> int:
    content = message.get("content")
    if not isinstance(content, list):
        return 0
    return sum(1 for part in content if isinstance(part, dict) and part.get("type") == "image")


def answer_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text") or "" for p in content if p.get("type") == "text")
    return str(content).strip()


def _ref_text(ref) -> str:
    return ref if isinstance(ref, str) else getattr(ref, "filename", "") or "(image)"
