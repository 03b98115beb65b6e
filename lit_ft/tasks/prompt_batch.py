"""A micro-batch of prompts to sample from (GRPO): left-padded token ids, and every other
column of the rows as plain lists, which the reward functions receive."""

from __future__ import annotations

from typing import Any

from lit_ft.tasks.base import pad_rows

PROMPT_IDS = "prompt_input_ids"
COLUMNS_KEY = "_columns"  # the rows' other columns, for the reward functions


def collate_prompts(rows: list[dict[str, Any]], pad: int, prompt_column: str) -> dict[str, Any]:
    """b prompts, left-padded (generation continues every row from its last real token), and
    the rows' other columns as lists for the reward functions."""
    ids = [r[PROMPT_IDS] for r in rows]
    width = max(len(i) for i in ids)
    left = [[pad] * (width - len(i)) + list(i) for i in ids]
    mask = [[0] * (width - len(i)) + [1] * len(i) for i in ids]
    columns = {k: [r[k] for r in rows] for k in rows[0] if k not in (PROMPT_IDS, prompt_column)}
    columns["_prompt"] = [r[prompt_column] for r in rows]
    return {
        "input_ids": pad_rows(left, pad),
        "attention_mask": pad_rows(mask, 0),
        COLUMNS_KEY: columns,
    }
