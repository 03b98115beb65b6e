"""The one token counter: how many real (non-padding) tokens a training batch holds.

Padded batches mark real tokens in `attention_mask`; packed batches (task.packing=true)
have no attention mask and carry `_real_tokens` instead, and so do batches a task grows in
training (GRPO's b prompts become b x G prompt + completion rows: its count is of those, set
in the batch by the task's training_loss, which runs before the counters read it);
fixed-length LM blocks have neither and are all real. The count stays a device tensor, so
counting adds no host sync on a GPU; the recorder, the throughput logger and the progress
line read it when they report.
"""

from __future__ import annotations

from typing import Any

import torch


def real_tokens(batch: dict[str, Any]) -> torch.Tensor | int:
    mask = batch.get("_real_tokens", batch.get("attention_mask"))
    return mask.sum() if mask is not None else batch["input_ids"].numel()
