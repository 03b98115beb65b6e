"""An independent count of DPO's reward accuracy: plain Hugging Face forward passes over pairs
rendered by hand with the plain chat template, without lit_ft's tokenization or evaluator."""

from __future__ import annotations

from pathlib import Path

import torch


def _answer_logp(model, tokenizer, prompt: str, answer: str, max_length: int) -> float:
    """The summed log-probability of " answer<eos>" after "user: prompt\\nassistant:"."""
    before = tokenizer(f"user: {prompt}\nassistant:")["input_ids"]
    after = tokenizer(f" {answer}")["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([(before + after)[:max_length]])
    with torch.no_grad():
        logp = model(ids).logits[0, :-1].float().log_softmax(-1)
    # logits at t predict token t+1: the answer's first token is predicted at len(before) - 1
    picked = logp.gather(1, ids[0, 1:, None])[:, 0]
    return picked[len(before) - 1 :].sum().item()


def reward_margins(policy_dir, reference_dir, rows, max_length: int = 128) -> list[float]:
    """Per row, how much more log-probability the chosen answer gained from reference to
    policy than the rejected one: (policy - reference)(chosen) - (policy - reference)(rejected).
    DPO's reward margin is beta times this; a pair is won when it is > 0 (a tie is lost)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(reference_dir)
    policy = AutoModelForCausalLM.from_pretrained(policy_dir).eval()
    reference = AutoModelForCausalLM.from_pretrained(reference_dir).eval()
    margins = []
    for row in rows:
        chosen, rejected = (
            _answer_logp(policy, tokenizer, row["prompt"], row[side], max_length)
            - _answer_logp(reference, tokenizer, row["prompt"], row[side], max_length)
            for side in ("chosen", "rejected")
        )
        margins.append(chosen - rejected)
    return margins


def held_out_rows(jsonl: Path, fraction: float, seed: int, count: int) -> list[dict]:
    """The first `count` rows of the split a run with data.validation_split_percentage and
    data.split_seed holds out (datasets' own shuffled split, as the datamodule makes it)."""
    import datasets

    rows = datasets.load_dataset("json", data_files=str(jsonl), split="train")
    held_out = rows.train_test_split(test_size=fraction, seed=seed, shuffle=True)["test"]
    return list(held_out.select(range(count)))
