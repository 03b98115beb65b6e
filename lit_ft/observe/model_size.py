"""The model's size as the pre-flight prints it: parameters (total, trainable) and what one
training checkpoint will take on disk.

Lightning's own model summary is off (conf/trainer/default.yaml: enable_model_summary): it
prints "Total FLOPs: 0" and, on every bf16-mixed run, that its size estimate is not accurate.
These figures are counted from the model itself instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ModelSize:
    total: int  # parameters, each shared (tied) weight once
    trainable: int
    checkpoint_bytes: int

    def text(self) -> str:
        """e.g. '124,439,808 parameters (all trainable); checkpoint ~1.4 GB'"""
        if self.trainable == self.total:
            share = "all trainable"
        else:
            share = f"{self.trainable:,} trainable, {self.trainable / self.total:.2%}"
        checkpoint = size_text(self.checkpoint_bytes)
        return f"{self.total:,} parameters ({share}); checkpoint ~{checkpoint}"


def model_size(model: torch.nn.Module, adapters_only: bool = False) -> ModelSize:
    """Parameter counts, and a checkpoint's bytes: the saved weights in their own dtype (all of
    them, or only the trainable ones where the checkpoint holds adapters only: peft=lora) plus
    AdamW's two moments per trainable weight, in the weight's dtype.

    e.g. 1,000,000 fp32 weights, all trainable: 4 MB of weights + 2 x 4 MB of moments = 12 MB
    (the small loop and scheduler state on top is left out)."""
    params = list(model.parameters())  # each shared tensor once, as torch.save stores it
    trainable = [p for p in params if p.requires_grad]
    saved = trainable if adapters_only else params
    weight_bytes = sum(p.numel() * p.element_size() for p in saved)
    moment_bytes = 2 * sum(p.numel() * p.element_size() for p in trainable)
    return ModelSize(
        total=sum(p.numel() for p in params),
        trainable=sum(p.numel() for p in trainable),
        checkpoint_bytes=weight_bytes + moment_bytes,
    )


def size_text(n: int) -> str:
    """In the unit that fits, never rounded to 0: 512 -> '512 B', 123,456 -> '121 KB',
    1,468,006 -> '1.4 MB'."""
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:,.0f} {unit}"
    return f"{n} B"
