"""reward_model: a Bradley-Terry reward model on the preference pairs task=dpo reads.

A sequence classifier with one output scores a whole conversation; trained so that the chosen
answer outscores the rejected one:

    loss = -log sigmoid(r_chosen - r_rejected - margin)      (mean over pairs)

e.g. r_chosen 1.2, r_rejected 0.2, no margin: -log sigmoid(1.0) = 0.313; a model that cannot
tell the answers apart (equal rewards) starts at ln 2 = 0.693. `data.margin_column` (optional)
names a per-pair margin the chosen answer must win by; `task.center_rewards_coefficient` adds
c x mean((r_chosen + r_rejected)^2), which keeps rewards centred on 0 (Eisenstein et al. 2023),
as TRL's RewardTrainer does.

Rows as TRL's RewardTrainer reads them, so a model trained there or here sees the same tokens:
- strings: prompt + answer (the prompt is optional: chosen/rejected may hold the whole text),
  ending in EOS when the tokenizer has one (the head of a causal LM reads the last token);
- chats (lists of messages): prompt messages + answer messages, rendered with the chat template
  (the tokenizer's own, else task.chat_template).
A pair longer than data.block_size on either side is left out, not cut: a cut answer would be
scored on its first part only (TRL filters them out too); the warning counts them.

A batch of b pairs is one forward of 2b rows, the chosen texts first, then the rejected.
The export is an AutoModelForSequenceClassification with one label, "reward": its logit is the
reward (lit_ft's GRPO takes it as a reward function, task.reward_model=<dir>).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from lit_ft.errors import LitFtError
from lit_ft.problems import Problems
from lit_ft.tasks.base import Task, TaskContext, attention_mask, disable_dropout, pad_rows
from lit_ft.tasks.chat import render, resolve_template, template_problem
from lit_ft.tasks.metrics import Evaluator
from lit_ft.tasks.sequence_classification import pad_token_for_classification
from lit_ft.tasks.weighted_mean import WeightedMean

SIDES = ("chosen", "rejected")
MARGIN_KEY = "_margin"  # one per pair, not per row: bookkeeping the model must not see


class RewardModelTask(Task):
    name = "reward_model"
    auto_class = "AutoModelForSequenceClassification"
    description = "prompt, chosen, rejected -> a scalar reward that ranks chosen above rejected"
    columns = ("chosen_column", "rejected_column")
    optional_columns = ("prompt_column", "margin_column")
    headline, headline_label = "val/accuracy", "validation pair accuracy"
    predicts = True
    token_loss = False  # a loss over pairs, from one score per sequence
    row_name, sequences_per_row = "pairs", 2

    def __init__(
        self,
        tokenizer,
        columns,
        max_length: int,
        chat_template: str | None = None,
        center_rewards_coefficient: float | None = None,
        disable_dropout: bool = True,
    ):
        super().__init__(tokenizer, columns, max_length)
        self.template_setting = chat_template
        self.template_source: str | None = None  # set when the first chat row is rendered
        self.center = center_rewards_coefficient
        self.pad_note: str | None = None
        self.dropout_off = disable_dropout

    def check_model(self, model) -> None:
        if self.dropout_off:
            disable_dropout(model)

    @classmethod
    def option_problems(cls, options) -> Problems:
        problems = Problems()
        problems.add(template_problem(options.get("chat_template")))
        c = options.get("center_rewards_coefficient")
        problems.need(
            c is None or (isinstance(c, int | float) and not isinstance(c, bool) and c >= 0),
            f"task.center_rewards_coefficient must be null or a number >= 0, got {c!r}",
        )
        return problems

    def options(self) -> dict[str, Any]:
        return {**super().options(), "chat_template": self.template_setting}

    def configure_model(self, hf_config) -> None:
        hf_config.num_labels = 1
        hf_config.id2label, hf_config.label2id = {0: "reward"}, {"reward": 0}
        self.pad_note = pad_token_for_classification(hf_config, self.tokenizer)

    def describe(self) -> str:
        margin = self.column["margin_column"]
        parts = [
            "Bradley-Terry loss -log sigmoid(r_chosen - r_rejected"
            + (f" - {margin})" if margin else ")"),
            "a batch of b pairs is 2b sequences",
        ]
        if self.center:
            parts.append(f"reward centring {self.center}")
        if self.template_source:
            parts.append(f"chat template: {self.template_source}")
        if self.pad_note:
            parts.append(self.pad_note)
        return "; ".join(parts)

    def report(self) -> dict[str, Any]:
        return {"loss": "bradley_terry", "center_rewards_coefficient": self.center}

    # -- rows -> token ids of both texts ---------------------------------------------------
    def preprocess(self, dataset, split: str, context: TaskContext):
        why = (
            f"are longer than data.block_size={self.max_length} tokens on one side and are left "
            "out (cut, they would be scored on part of the answer)"
        )
        return self.encode_dropping(dataset, split, context, "pairs", why)

    def _encode(self, batch: dict[str, list]) -> dict[str, list]:
        margin = self.column["margin_column"]
        out: dict[str, list] = {f"{side}_input_ids": [] for side in SIDES}
        if margin:
            out["margin"] = []
        for values in zip(*batch.values(), strict=True):
            row = dict(zip(batch, values, strict=True))
            ids = {side: self._encode_text(row, side) for side in SIDES}
            if any(len(i) > self.max_length for i in ids.values()):
                continue
            for side in SIDES:
                out[f"{side}_input_ids"].append(ids[side])
            if margin:
                out["margin"].append(_margin(row[margin], margin))
        return out

    def _encode_text(self, row: dict[str, Any], side: str) -> list[int]:
        prompt_key = self.column["prompt_column"]
        prompt = row[prompt_key] if prompt_key else None
        answer = row[self.column[f"{side}_column"]]
        if isinstance(answer, str) and not isinstance(prompt, list):
            text = (prompt or "") + answer
            eos = self.tokenizer.eos_token
            if eos and not text.endswith(eos):  # as TRL: the classifier reads the last token
                text += eos
            return self.tokenizer(text)["input_ids"]
        if self.template_source is None:
            self.template_source = resolve_template(self.tokenizer, self.template_setting)
        messages = [*_as_messages(prompt, "user"), *_as_messages(answer, "assistant")]
        text = render(self.tokenizer, messages, generation_prompt=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def preview(self, dataset) -> str | None:
        if dataset is None or len(dataset) == 0:
            return None
        row = dataset[0]
        return "\n".join(
            f"{side}: {self.tokenizer.decode(row[f'{side}_input_ids'])!r}" for side in SIDES
        )

    def collate(self):
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return partial(collate_scored_pairs, pad=pad)  # module-level: pickles for ddp_spawn

    def select_rows(self, batch, keep: torch.Tensor):
        """Keep whole pairs: the rows of both texts, and the pair's margin."""
        margin = batch.get(MARGIN_KEY)
        kept = super().select_rows(
            {k: v for k, v in batch.items() if k != MARGIN_KEY}, torch.cat([keep, keep])
        )
        return kept if margin is None else {**kept, MARGIN_KEY: margin[keep]}

    def count_targets(self, batch) -> torch.Tensor:
        """The loss is a mean over pairs: a step weighs every pair the same."""
        return torch.tensor(batch["input_ids"].shape[0] // 2, device=batch["input_ids"].device)

    # -- training and evaluation -----------------------------------------------------------
    def rewards(self, model, batch, logits: torch.Tensor | None = None):
        """(chosen rewards, rejected rewards), one per pair, in fp32."""
        if logits is None:
            inputs = {k: v for k, v in batch.items() if not k.startswith("_")}
            logits = model(**inputs).logits
        return logits.float().squeeze(-1).chunk(2)

    def pair_loss(self, chosen, rejected, batch) -> torch.Tensor:
        """Per pair: -log sigmoid(r_c - r_r - margin) (+ the centring term)."""
        margin = batch.get(MARGIN_KEY)
        delta = chosen - rejected - (margin.to(chosen) if margin is not None else 0.0)
        loss = -F.logsigmoid(delta)
        if self.center:
            loss = loss + self.center * (chosen + rejected) ** 2
        return loss

    def training_loss(self, model, batch):
        chosen, rejected = self.rewards(model, batch)
        loss = self.pair_loss(chosen, rejected, batch)
        return loss.mean(), self.count_targets(batch), pair_metrics(chosen, rejected)

    def evaluator(self):
        return RewardEvaluator(self)

    def predict(self, model, batch) -> list[dict[str, Any]]:
        chosen, rejected = self.rewards(model, batch)
        return [
            {
                "prediction": "chosen" if c > r else "rejected",
                "chosen_reward": round(c, 4),
                "rejected_reward": round(r, 4),
            }
            for c, r in zip(chosen.tolist(), rejected.tolist(), strict=True)
        ]

    def prediction_inputs(self, row: dict[str, Any]) -> dict[str, Any]:
        keys = ("prompt_column", "chosen_column", "rejected_column")
        named = [key for key in keys if self.column[key]]
        return {key.removesuffix("_column"): row[self.column[key]] for key in named}


def _margin(value, column: str) -> float:
    number = None if isinstance(value, bool) else value
    try:
        number = float(number)
    except (TypeError, ValueError):
        number = None
    if number is None or number != number:  # NaN too: it would make the loss NaN
        raise LitFtError(
            f"data.margin_column='{column}' holds {value!r}, which is not a number; each pair "
            "needs the margin its chosen answer must win by (0 for none)"
        )
    return number


def _as_messages(value, role: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    return [{"role": role, "content": value}] if isinstance(value, str) else list(value)


def pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, torch.Tensor]:
    """Means over the pairs, as lit_ft logs them (train/..., val/...); accuracy counts a tie as
    wrong (the model did not rank the chosen answer higher)."""
    chosen, rejected = chosen.detach(), rejected.detach()
    return {
        "accuracy": (chosen > rejected).float().mean(),
        "margin": (chosen - rejected).mean(),
        "chosen_reward": chosen.mean(),
        "rejected_reward": rejected.mean(),
    }


class RewardEvaluator(Evaluator):
    """Held-out pairs: the loss, pair accuracy, margin and mean rewards, each a mean over pairs
    kept as sums across batches and processes (lit_ft/tasks/weighted_mean.py)."""

    NAMES = ("accuracy", "margin", "chosen_reward", "rejected_reward")

    def __init__(self, task: RewardModelTask) -> None:
        super().__init__()
        self.task = task
        self.means = torch.nn.ModuleDict({name: WeightedMean() for name in self.NAMES})

    def update(self, batch, outputs, model) -> None:
        chosen, rejected = self.task.rewards(model, batch, outputs.logits)
        pairs = chosen.shape[0]
        self.loss.update(self.task.pair_loss(chosen, rejected, batch).mean(), weight=pairs)
        for name, value in pair_metrics(chosen, rejected).items():
            self.means[name].update(value, weight=pairs)

    def compute(self) -> dict[str, torch.Tensor]:
        return {"loss": self.loss.compute(), **{k: m.compute() for k, m in self.means.items()}}


def collate_scored_pairs(rows: list[dict[str, Any]], pad: int) -> dict[str, torch.Tensor]:
    """b pairs -> 2b padded rows, all chosen texts first, then all rejected ones."""
    ids = [r[f"{side}_input_ids"] for side in SIDES for r in rows]
    batch = {"input_ids": pad_rows(ids, pad), "attention_mask": attention_mask(ids)}
    if "margin" in rows[0]:
        batch[MARGIN_KEY] = torch.tensor([r["margin"] for r in rows], dtype=torch.float32)
    return batch
