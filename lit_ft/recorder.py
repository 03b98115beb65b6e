"""A callback that records what results.json reports about training itself.

Per optimizer step: the training loss. Over the whole fit: tokens seen (non-padding, from the
attention mask) and training wall time with validation excluded, giving tokens/s. Token counts
stay on the device as a tensor and are read once at the end, so recording adds no per-step
host sync on a GPU.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch


class TrainingRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []
        self._tokens: torch.Tensor | int = 0
        self._pending_losses: list[torch.Tensor] = []
        self._started = self._val_started = None
        self.train_seconds = 0.0
        self._val_seconds = 0.0

    # -- timing ----------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        self._started = time.perf_counter()
        self._val_seconds = 0.0

    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_started = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._started is not None and self._val_started is not None:
            self._val_seconds += time.perf_counter() - self._val_started

    def on_train_end(self, trainer, pl_module) -> None:
        self._flush()
        self.train_seconds += time.perf_counter() - self._started - self._val_seconds
        self._started = None

    # -- counting --------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._tokens = self._tokens + batch["attention_mask"].sum()
        # The module keeps the unscaled micro-batch loss; Lightning's `outputs` hold it divided
        # by the accumulation factor.
        self._pending_losses.append(pl_module.last_train_loss)
        if trainer.fit_loop._should_accumulate():
            return
        # One optimizer step: its loss is the mean over the accumulated micro-batches.
        self.losses.append(torch.stack(self._pending_losses).mean())
        self._pending_losses = []
        if len(self.losses) % 50 == 0:
            self._flush()

    def _flush(self) -> None:
        self.losses = [float(x) for x in self.losses]

    # -- results ---------------------------------------------------------------------------
    @property
    def tokens(self) -> int:
        return int(self._tokens)

    def summary(self) -> dict[str, Any]:
        self._flush()
        seconds = self.train_seconds
        last = self.losses[-10:]
        return {
            "steps": len(self.losses),
            "loss_first_step": self.losses[0] if self.losses else None,
            "loss_last_10_steps": sum(last) / len(last) if last else None,
            "tokens": self.tokens,
            "train_seconds": round(seconds, 3),
            "tokens_per_s": round(self.tokens / seconds, 1) if seconds > 0 else None,
        }
