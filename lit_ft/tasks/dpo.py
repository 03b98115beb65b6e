"""dpo: preference tuning on (prompt, chosen, rejected) rows; losses in lit_ft/tasks/preference.py.

Each answer is rendered after its prompt with the chat template and masked as the
instruction task masks a chat (lit_ft/tasks/chat.py): only the answer's tokens (and its end
of turn) count. `prompt` may be a string or a list of messages; `chosen` / `rejected` a
string or a list of messages ending with the assistant's.

A batch of b pairs is one forward of 2b rows, the chosen answers first, then the rejected.

The reference the policy is measured against, without a second copy where possible:
- `peft=lora`: the same network with its adapters switched off;
- `task.precompute_reference=true`: its log-probabilities computed once before training and
  stored with the tokenized data (the cache keys on the starting weights too);
- otherwise a frozen copy of the starting model;
- `task.loss=simpo` needs none.
Every choice gives the starting model's log-probabilities, also after a resume: the copy is
made before the checkpoint's weights are loaded, the adapters are off, the cache is fixed.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from lit_ft.compat import dataset_fingerprint
from lit_ft.errors import LitFtError
from lit_ft.problems import Problems
from lit_ft.tasks.base import Task, TaskContext, disable_dropout, model_inputs, pad_rows
from lit_ft.tasks.chat import answer_spans, resolve_template, template_problem, tokens_and_labels
from lit_ft.tasks.preference import (
    LOSSES,
    NEEDS_REFERENCE,
    answer_logps,
    pair_metrics,
    preference_loss,
    split_pairs,
)

SIDES = ("chosen", "rejected")


class PreferenceTask(Task):
    name = "dpo"
    auto_class = "AutoModelForCausalLM"
    shifted_labels = True
    description = "prompt, chosen, rejected -> prefer the chosen answer (DPO, IPO, hinge, SimPO)"
    columns = ("prompt_column", "chosen_column", "rejected_column")
    headline = "val/reward_accuracy"
    token_loss = False  # a loss over pairs, from log-probabilities (lit_ft/tasks/preference.py)
    row_name, sequences_per_row = "pairs", 2  # a pair is its chosen and its rejected answer
    headline_label = "validation reward accuracy"

    def __init__(
        self,
        tokenizer,
        columns,
        max_length: int,
        beta: float = 0.1,
        loss: str = "sigmoid",
        simpo_gamma: float = 0.5,
        chat_template: str | None = None,
        precompute_reference: bool = False,
        disable_dropout: bool = True,
    ):
        super().__init__(tokenizer, columns, max_length)
        self.beta, self.loss, self.simpo_gamma = beta, loss, simpo_gamma
        self.template_source = resolve_template(tokenizer, chat_template)
        self.precompute = precompute_reference and NEEDS_REFERENCE[loss]
        self.dropout_off = disable_dropout
        self.reference_kind = "none (SimPO)"
        self._reference = None  # the frozen copy, when that is the reference

    @classmethod
    def option_problems(cls, options) -> Problems:
        problems = Problems()
        loss = options.get("loss")
        problems.need(
            loss in LOSSES, f"task.loss='{loss}' is unknown; use one of {', '.join(LOSSES)}"
        )
        beta = options.get("beta")
        problems.need(
            isinstance(beta, int | float) and not isinstance(beta, bool) and beta > 0,
            f"task.beta must be a positive number, got {beta!r}",
        )
        problems.add(template_problem(options.get("chat_template")))
        return problems

    def options(self) -> dict[str, Any]:
        return {**super().options(), "chat_template": self.tokenizer.chat_template}

    def describe(self) -> str:
        return (
            f"loss {self.loss}, beta {self.beta}; reference: {self.reference_kind}; "
            f"chat template: {self.template_source}; a batch of b pairs is 2b sequences"
        )

    def report(self) -> dict[str, Any]:
        return {"loss": self.loss, "beta": self.beta, "reference": self.reference_kind}

    # -- rows -> token ids and answer masks for both answers ----------------------------------
    def preprocess(self, dataset, split: str, context: TaskContext):
        why = f"have no answer token left within data.block_size={self.max_length} and are skipped"
        return self.encode_dropping(dataset, split, context, "pairs", why)

    def _encode(self, batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {f"{s}_{k}": [] for s in SIDES for k in ("input_ids", "labels")}
        for values in zip(*batch.values(), strict=True):
            row = dict(zip(batch, values, strict=True))
            encoded = {side: self._encode_answer(row, side) for side in SIDES}
            if any(all(t == -100 for t in labels) for _, labels in encoded.values()):
                continue  # an answer cut off entirely: the pair compares nothing
            for side, (ids, labels) in encoded.items():
                out[f"{side}_input_ids"].append(ids)
                out[f"{side}_labels"].append(labels)
        return out

    def _encode_answer(self, row: dict[str, Any], side: str) -> tuple[list[int], list[int]]:
        prompt, answer = row[self.column["prompt_column"]], row[self.column[f"{side}_column"]]
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        answer = [{"role": "assistant", "content": answer}] if isinstance(answer, str) else answer
        text, spans = answer_spans(self.tokenizer, [*messages, *answer], "last_assistant")
        ids, labels = tokens_and_labels(self.tokenizer, text, spans)
        return ids[: self.max_length], labels[: self.max_length]

    def preview(self, dataset) -> str | None:
        from lit_ft.tasks.chat import marked

        if dataset is None or len(dataset) == 0:
            return None
        row = dataset[0]
        return "\n".join(
            f"{side}: {marked(self.tokenizer, row[f'{side}_input_ids'], row[f'{side}_labels'])}"
            for side in SIDES
        )

    def collate(self):
        from functools import partial

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return partial(collate_pairs, pad=pad)  # module-level: pickles for ddp_spawn, workers

    def select_rows(self, batch, keep: torch.Tensor):
        # a pair is two rows, all chosen first, then all rejected: keep both of each pair
        return super().select_rows(batch, torch.cat([keep, keep]))

    def count_targets(self, batch) -> torch.Tensor:
        """The loss is a mean over pairs: a step weighs every pair the same."""
        return torch.tensor(batch["input_ids"].shape[0] // 2, device=batch["input_ids"].device)

    # -- the reference ---------------------------------------------------------------------
    def held_models(self) -> list[torch.nn.Module]:
        return [self._reference] if self._reference is not None else []

    def check_model(self, model) -> None:
        """Choose the reference for this network (called once it is built, before any
        checkpoint's weights are loaded into it)."""
        if self.dropout_off:
            # As TRL does by default: with dropout, the policy's log-probabilities are noisy
            # against the reference's (which runs in eval mode), so even the starting model
            # would not score ln 2.
            disable_dropout(model)
        if not NEEDS_REFERENCE[self.loss]:
            return
        if self.precompute:
            self.reference_kind = "precomputed once, stored with the tokenized data"
        elif hasattr(model, "disable_adapter"):  # a PeftModel
            self.reference_kind = "the same network with its LoRA adapters off"
        else:
            self.reference_kind = "a frozen copy of the starting model"
            self._reference = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def reference_logps(self, model, batch) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not NEEDS_REFERENCE[self.loss]:
            return None
        if "_reference_logps" in batch:
            return batch["_reference_logps"], None
        if self._reference is not None:
            device = batch["input_ids"].device
            if next(self._reference.parameters()).device != device:
                self._reference.to(device)  # once: it follows the policy to its device
            return self.logps(self._reference, batch)
        if hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                return self.logps(model, batch)
        raise LitFtError(
            "task=dpo: no reference model (set task.precompute_reference=true, use "
            "peft=lora, or task.loss=simpo)"
        )

    def logps(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's summed answer log-probability and answer length: chunk by chunk when
        the loss choice says so (the full [2b, tokens, vocab] logits never exist), else from
        the model's logits. The same numbers either way (tests/test_chunked_loss.py)."""
        if self.loss_choice is not None and self.loss_choice.chunked:
            from lit_ft.model.chunked_loss import causal_logps

            return causal_logps(model, model_inputs(batch), self.loss_choice.chunk_tokens)
        return answer_logps(model(**_without_labels(batch)).logits, batch["labels"])

    def prepare_with_model(self, model, datamodule) -> None:
        """task.precompute_reference=true: the reference log-probabilities of every pair,
        computed once with the starting weights and stored as two columns of the tokenized
        splits (cached: the key holds the weights' fingerprint, so new weights recompute)."""
        if not self.precompute:
            return
        from datasets.fingerprint import Hasher

        weights = Hasher.hash([float(p.detach().float().sum()) for p in model.parameters()])
        collate, device = self.collate(), "cuda" if torch.cuda.is_available() else "cpu"
        original = next(model.parameters()).device
        model.to(device)
        was_training = model.training
        model.eval()

        def add_reference(batch: dict[str, list]) -> dict[str, list]:
            rows = [dict(zip(batch, v, strict=True)) for v in zip(*batch.values(), strict=True)]
            tensors = {k: v.to(device) for k, v in collate(rows).items()}
            with torch.no_grad():
                sums = self.logps(model, tensors)[0].cpu().tolist()
            half = len(rows)
            return {**batch, "reference_chosen": sums[:half], "reference_rejected": sums[half:]}

        try:
            for split, dataset in datamodule.datasets.items():
                if dataset is None or split not in ("train", "validation"):
                    continue
                key = [
                    dataset_fingerprint(dataset),
                    "reference",
                    weights,
                ]  # the data already keys the tokenizer
                datamodule.datasets[split] = dataset.map(
                    add_reference,
                    batched=True,
                    batch_size=16,
                    new_fingerprint=Hasher.hash(repr(key)),
                    desc=f"Reference log-probabilities {split}",
                )
        finally:
            model.to(original)
            model.train(was_training)

    # -- training and evaluation -----------------------------------------------------------
    def scores(self, model, batch, logits: torch.Tensor | None = None):
        """(loss per pair, chosen reward, rejected reward, the policy's pair scores); from
        `logits` when given (evaluation, which has them), else through `logps`."""
        sums = answer_logps(logits, batch["labels"]) if logits is not None else None
        policy = split_pairs(*(sums or self.logps(model, batch)))
        reference = self.reference_logps(model, batch)
        if reference is not None:
            sums, counts = reference
            reference = split_pairs(sums, counts if counts is not None else sums)
        loss, chosen, rejected = preference_loss(
            self.loss, self.beta, policy, reference, gamma=self.simpo_gamma
        )
        return loss, chosen, rejected, policy

    def training_loss(self, model, batch):
        loss, chosen, rejected, policy = self.scores(model, batch)
        return loss.mean(), self.count_targets(batch), pair_metrics(loss, chosen, rejected, policy)

    def evaluator(self):
        from lit_ft.tasks.metrics import PreferenceEvaluator

        return PreferenceEvaluator(self)


def collate_pairs(rows: list[dict[str, Any]], pad: int) -> dict[str, torch.Tensor]:
    """b pairs -> 2b padded rows, all chosen answers first, then all rejected ones."""
    ids = [r[f"{s}_input_ids"] for s in SIDES for r in rows]
    labels = [r[f"{s}_labels"] for s in SIDES for r in rows]
    batch = {
        "input_ids": pad_rows(ids, pad),
        "attention_mask": pad_rows([[1] * len(i) for i in ids], 0),
        "labels": pad_rows(labels, -100),
    }
    if "reference_chosen" in rows[0]:  # precomputed: no reference forward in training
        batch["_reference_logps"] = torch.tensor(
            [r[f"reference_{s}"] for s in SIDES for r in rows], dtype=torch.float32
        )
    return batch


def _without_labels(batch) -> dict[str, torch.Tensor]:
    """The model's inputs; the labels only mark the answers (the model's own loss is unused)."""
    return {k: v for k, v in model_inputs(batch).items() if k != "labels"}
