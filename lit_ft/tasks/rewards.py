"""Reward functions for task=grpo: the built-in ones, and calling anyone's with checks.

The convention (TRL's, so functions written for it work here): each is called as

    fn(prompts=[...], completions=[...], **columns) -> list[float]

once per micro-batch, with one entry per completion (a prompt repeated for each of its
completions), and every other column of the rows as a keyword list of the same length (e.g.
`answer=[...]`). Prompts and completions are strings (a chat prompt: its messages). A function
may return None for a completion it does not score; it then counts as 0 in the weighted sum.

Named in the config as `task.reward_funcs=[lit_ft.tasks.rewards:numeric_match, my_file.py:fn]`
(lit_ft/tasks/user_functions.py loads them); `task.reward_weights` weighs them (default 1 each).

Built in (those that compare take the reference from a column named `answer`, `solution`, or
`chosen`, a preference pair's preferred answer):
- `exact_match`: 1.0 when the completion, stripped, equals the answer, else 0.0;
- `numeric_match`: 1.0 when the completion's last number equals the answer's (1e-6), else 0.0;
- `word_f1`: unigram F1 between the completion's first line and the answer (0 to 1), e.g.
  "Return the path." against "Return the absolute path.": precision 3/3, recall 3/4, F1 0.857;
- `contains_digit`: 1.0 when the completion holds a digit (a format reward for toy runs);
- `length_penalty`: -(characters / 100): shorter completions score higher.

And a trained reward model (`task.reward_model=<run>/hf_model`, from task=reward_model):
`RewardModelScore` scores prompt + completion (+ EOS) as that task trained it, its one logit.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Sequence
from typing import Any

from lit_ft.errors import LitFtError

NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def _references(kwargs: dict[str, Any], n: int) -> list[Any]:
    for key in ("answer", "solution", "chosen"):
        if key in kwargs:
            return list(kwargs[key])
    raise LitFtError(
        "this built-in reward compares with a reference answer: the rows need a column named "
        f"'answer', 'solution' or 'chosen'; they have: {', '.join(sorted(kwargs)) or 'none'}"
    )


def exact_match(prompts, completions, **kwargs) -> list[float]:
    answers = _references(kwargs, len(completions))
    return [float(c.strip() == str(a).strip()) for c, a in zip(completions, answers, strict=True)]


def _last_number(text: str) -> float | None:
    found = NUMBER.findall(str(text))
    return float(found[-1].replace(",", "")) if found else None


def numeric_match(prompts, completions, **kwargs) -> list[float]:
    answers = _references(kwargs, len(completions))
    scores = []
    for completion, answer in zip(completions, answers, strict=True):
        got, want = _last_number(completion), _last_number(answer)
        scores.append(float(got is not None and want is not None and abs(got - want) < 1e-6))
    return scores


WORD = re.compile(r"\w+")


def word_f1(prompts, completions, **kwargs) -> list[float]:
    answers = _references(kwargs, len(completions))
    scores = []
    for completion, answer in zip(completions, answers, strict=True):
        first_line = next((line for line in completion.splitlines() if line.strip()), "")
        got, want = WORD.findall(first_line.lower()), WORD.findall(str(answer).lower())
        common = sum(min(got.count(w), want.count(w)) for w in set(got))
        if not common:
            scores.append(0.0)
            continue
        precision, recall = common / len(got), common / len(want)
        scores.append(2 * precision * recall / (precision + recall))
    return scores


def contains_digit(prompts, completions, **kwargs) -> list[float]:
    return [float(any(ch.isdigit() for ch in c)) for c in completions]


def length_penalty(prompts, completions, **kwargs) -> list[float]:
    return [-len(c) / 100 for c in completions]


def reward_name(fn: Callable, spec: Any) -> str:
    """How logs name a reward function: its own name (train/rewards/<name>)."""
    return getattr(fn, "__name__", None) or str(spec).rpartition(":")[2]


def call_reward(
    fn: Callable, name: str, prompts: Sequence, completions: Sequence[str], columns: dict
) -> list[float]:
    """`fn`'s scores, checked: a list of numbers (or None), one per completion, none NaN.
    Anything else is one LitFtError naming the function and what it returned."""
    try:
        scores = fn(prompts=list(prompts), completions=list(completions), **columns)
    except LitFtError:
        raise
    except Exception as err:
        raise LitFtError(
            f"reward function '{name}' failed when called as {name}(prompts, completions, "
            f"**columns) with columns {', '.join(sorted(columns)) or 'none'}: {err!r}"
        ) from err
    if not isinstance(scores, list | tuple) or len(scores) != len(completions):
        got = f"{len(scores)} values" if isinstance(scores, list | tuple) else type(scores).__name__
        raise LitFtError(
            f"reward function '{name}' must return a list of {len(completions)} numbers (one "
            f"per completion), got {got}"
        )
    out = []
    for i, score in enumerate(scores):
        if score is None:
            out.append(0.0)
            continue
        if isinstance(score, bool) or not isinstance(score, numbers.Real) or math.isnan(score):
            raise LitFtError(
                f"reward function '{name}' returned {score!r} for completion {i}; rewards must "
                "be numbers (None: not scored), not NaN"
            )
        out.append(float(score))
    return out


class RewardModelScore:
    """A reward model's export as a reward function: the logit of prompt + completion (+ EOS,
    as task=reward_model reads strings; a chat prompt is rendered with the model's own chat
    template first), in batches, in eval mode, on the device of the run's first call."""

    __name__ = "reward_model"

    def __init__(self, model_dir: str, batch_size: int = 16) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
        self.model.requires_grad_(False)
        if self.model.config.num_labels != 1:
            raise LitFtError(
                f"task.reward_model='{model_dir}' has {self.model.config.num_labels} outputs; a "
                "reward model has one (train it with task=reward_model)"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if self.tokenizer.pad_token is None:  # the head reads the last token that is not pad
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size = batch_size

    def _text(self, prompt, completion: str) -> str:
        if not isinstance(prompt, str):  # messages: the reward model's template renders them
            messages = [*prompt, {"role": "assistant", "content": completion}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        text = prompt + completion
        eos = self.tokenizer.eos_token
        return text + eos if eos and not text.endswith(eos) else text

    def __call__(self, prompts, completions, **columns) -> list[float]:
        import torch

        texts = [self._text(p, c) for p, c in zip(prompts, completions, strict=True)]
        if torch.cuda.is_available() and next(self.model.parameters()).device.type == "cpu":
            self.model.to(torch.device("cuda", torch.cuda.current_device()))  # this rank's GPU
        device = next(self.model.parameters()).device
        scores: list[float] = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                encoded = self.tokenizer(
                    texts[start : start + self.batch_size], padding=True, return_tensors="pt"
                ).to(device)
                scores += self.model(**encoded).logits[:, 0].float().tolist()
        return scores
