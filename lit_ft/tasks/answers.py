"""Answers a causal LM writes for instruction prompts: which prompts, and batched greedy decoding.

A batch row of instruction data is a prompt followed by the trained response (labels != -100
on the response only), or several such examples packed back to back, each restarting its
position ids. `examples_of` cuts a batch back into examples and each example into its prompt
(every token before the last trained span, so nothing of the answer leaks into it) and its
reference (that span). `generate_answers` left-pads the prompts, so every prompt ends where
generation starts, and decodes greedily up to a bounded number of new tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

# A batch's answer texts, one list per row (packed rows hold several examples), in order
REFERENCES = "_references"


@dataclass(frozen=True)
class Example:
    prompt: list[int]  # what the model sees
    reference: list[int]  # the answer it was trained to give (its end-of-text included)
    text: str | None = None  # that answer's whole text, as the data holds it (uncut)


def examples_of(batch: Mapping[str, torch.Tensor]) -> list[Example]:
    """Every example of a batch, in row order; examples with no prompt or no answer are left out."""
    real = batch.get("attention_mask", batch.get("_real_tokens"))
    positions = batch.get("position_ids")
    texts = batch.get(REFERENCES)
    examples = []
    for row in range(batch["input_ids"].shape[0]):
        keep = real[row].bool() if real is not None else slice(None)
        ids, labels = batch["input_ids"][row][keep].tolist(), batch["labels"][row][keep].tolist()
        starts = [0]
        if positions is not None:  # packed: an example starts where the position ids restart
            starts = [i for i, p in enumerate(positions[row][keep].tolist()) if p == 0] or [0]
        for k, (start, end) in enumerate(zip(starts, [*starts[1:], len(ids)], strict=True)):
            example = split_example(ids[start:end], labels[start:end])
            if example is not None and texts is not None and k < len(texts[row]):
                example = Example(example.prompt, example.reference, texts[row][k])
            if example is not None:
                examples.append(example)
    return examples


def split_example(ids: list[int], labels: list[int]) -> Example | None:
    """Prompt and reference of one example: the reference is the last run of trained tokens
    (the final assistant turn of a chat), the prompt everything before it. E.g. labels
    [-100, -100, 7, 8, -100, 9, 10] -> prompt ids[:5], reference [9, 10]."""
    trained = [i for i, label in enumerate(labels) if label != -100]
    if not trained:
        return None
    end = trained[-1] + 1
    start = end
    while start > 0 and labels[start - 1] != -100:
        start -= 1
    if start == 0:
        return None  # nothing to prompt with
    return Example(prompt=ids[:start], reference=ids[start:end])


def generation_problems(options) -> list[str]:
    """task.eval_generations: 0 or more answers; task.eval_max_new_tokens: at least 1 token."""
    from lit_ft.problems import Problems

    problems = Problems()
    count = options.get("eval_generations", 0)
    problems.need(
        isinstance(count, int) and not isinstance(count, bool) and count >= 0,
        f"task.eval_generations must be 0 (off) or a positive integer, got {count!r}",
    )
    if count:
        problems.positive_int("task.eval_max_new_tokens", options.get("eval_max_new_tokens"))
    return problems


def fit_positions(prompt_ids: list[int], new_tokens: int, config) -> tuple[list[int], int]:
    """Prompt and answer length within the model's positions: a whole instruction prompt can
    fill them (e.g. 64 positions, a 60-token prompt, 32 new tokens), so the answer gets at most
    half of them and the prompt keeps its end, the part nearest the answer."""
    from lit_ft.model.build import max_positions

    limit = max_positions(config)
    if not limit:
        return prompt_ids, new_tokens
    new_tokens = max(1, min(new_tokens, limit // 2))
    return prompt_ids[-(limit - new_tokens) :], new_tokens


@torch.no_grad()
def generate_answers(
    model,
    tokenizer,
    prompts: list[list[int]],
    max_new_tokens: int,
    stop: str | None = None,
    inputs: Mapping[str, torch.Tensor] | None = None,
) -> list[str]:
    """Greedy answers to the prompts, one batch: left padding, so each prompt's last token is
    the one the next is predicted from (GPT-2 pads with EOS; the attention mask hides it, and
    generate() derives position ids from the mask, so a padded prompt gets the positions it
    would have alone). Each answer stops at EOS, at `stop` (the chat template's end of turn,
    e.g. "<|im_end|>", which need not be a token of its own) or after `max_new_tokens`.
    `inputs`: more model inputs for the same rows, e.g. a vision model's pixel_values."""
    if not prompts:
        return []
    fitted = [fit_positions(p, max_new_tokens, model.config) for p in prompts]
    prompts, new_tokens = [p for p, _ in fitted], fitted[0][1]  # the same bound for every one
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    longest = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), longest), pad, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, prompt in enumerate(prompts):
        input_ids[i, longest - len(prompt) :] = torch.as_tensor(prompt)
        attention_mask[i, longest - len(prompt) :] = 1
    was_training = model.training
    model.eval()  # no dropout while decoding, whoever calls
    try:
        output = model.generate(
            input_ids=input_ids.to(model.device),
            attention_mask=attention_mask.to(model.device),
            max_new_tokens=new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad,
            **({"stop_strings": [stop], "tokenizer": tokenizer} if stop else {}),
            **{k: v.to(model.device) for k, v in (inputs or {}).items()},
        )
    finally:
        model.train(was_training)
    return decode(tokenizer, output[:, longest:], stop)


def reference_texts(tokenizer, examples: list[Example], stop: str | None = None) -> list[str]:
    """What answers are scored against: each answer's whole text from the data, or, where a
    batch has none, its trained tokens decoded (cut where the block size cut them)."""
    decoded = decode(tokenizer, [e.reference for e in examples], stop)
    return [e.text if e.text is not None else d for e, d in zip(examples, decoded, strict=True)]


def decode(tokenizer, ids, stop: str | None = None) -> list[str]:
    """Readable text, special tokens (EOS, padding, end-of-turn) dropped, cut at `stop`, outer
    space trimmed."""
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    return [(t.split(stop)[0] if stop else t).strip() for t in texts]
