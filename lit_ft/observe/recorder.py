"""A callback that records what results.json reports about training itself.

Per optimizer step: the training loss. Over the whole fit: tokens seen (non-padding, from the
attention mask) and training wall time with validation excluded, giving tokens/s. Token counts
stay on the device as a tensor and are read once at the end, so recording adds no per-step
host sync on a GPU.

A resumed run describes the whole run, not only its resumed part: every checkpoint carries the
record so far (steps, the first step's loss, the last ten losses, tokens and seconds; under
DDP the tokens of all processes), and resuming from it carries on from there. So a run of 30
steps resumed at step 20 reports 30 steps and the loss of its very first step.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import torch

from lit_ft.observe.memory import how_measured, peak_bytes, reset_peak
from lit_ft.observe.step_end import StepEndCallback
from lit_ft.observe.tokens import real_tokens

RECORD_KEY = "lit_ft_training_record"  # the checkpoint's entry for the record so far


class TrainingRecorder(StepEndCallback):
    def __init__(self) -> None:
        # All results.json needs of the loss curve: its first step, its last ten, the count.
        # Kept as device tensors (no per-step host sync); read once in summary().
        self.steps = 0
        self._first_loss: torch.Tensor | None = None
        self._last_losses: deque[torch.Tensor] = deque(maxlen=10)
        self._tokens: torch.Tensor | int = 0
        self._started = self._val_started = None
        self.train_seconds = 0.0
        self._val_seconds = 0.0
        self.peak_memory: int | None = None  # bytes, lit_ft/observe/memory.py
        # The part of the run before the checkpoint this process resumed from (zero when fresh)
        self._before = {"steps": 0, "tokens": 0, "seconds": 0.0}
        self.resumed_at_step: int | None = None

    # -- timing ----------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        self._started = time.perf_counter()
        self._val_seconds = 0.0
        reset_peak()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_started = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._started is not None and self._val_started is not None:
            self._val_seconds += time.perf_counter() - self._val_started

    def on_train_end(self, trainer, pl_module) -> None:
        self.train_seconds += time.perf_counter() - self._started - self._val_seconds
        self.peak_memory = peak_bytes()  # before the final evaluation, which is not training
        self._started = None
        if trainer.world_size > 1:
            self._combine_ranks(trainer.strategy)

    def _combine_ranks(self, strategy) -> None:
        """Under DDP each rank saw its share of every batch: tokens add up. The step losses
        are already the whole step's (the module adds the ranks' token sums)."""
        device = strategy.root_device
        self._tokens = strategy.reduce(
            torch.as_tensor(self._tokens, device=device), reduce_op="sum"
        )

    # -- counting --------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._tokens = self._tokens + real_tokens(batch)
        if not self.took_step():  # inside an accumulation window
            return
        # One optimizer step: the module's token-weighted loss over all its micro-batches
        # (lit_ft/training/step_loss.py), the number the logs show too.
        loss = pl_module.step_loss.value
        self.steps += 1
        self._first_loss = loss if self._first_loss is None else self._first_loss
        self._last_losses.append(loss)

    # -- across a resume ---------------------------------------------------------------------
    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        # Every process saves together (the save is a collective), so the processes' token
        # counts can be added here. One host read per checkpoint, none per step.
        tokens = self._tokens
        if trainer.world_size > 1:
            device = trainer.strategy.root_device
            # a copy: the all-reduce works in place, and self._tokens must stay this rank's
            tokens = trainer.strategy.reduce(
                torch.as_tensor(tokens, device=device).clone(), reduce_op="sum"
            )
        seconds = self.train_seconds
        if self._started is not None:  # mid-fit: the training time so far
            seconds += time.perf_counter() - self._started - self._val_seconds
        checkpoint[RECORD_KEY] = {
            "steps": self._before["steps"] + self.steps,
            "tokens": self._before["tokens"] + int(tokens),
            "seconds": self._before["seconds"] + seconds,
            "first_loss": float(self._first_loss) if self._first_loss is not None else None,
            "last_losses": [float(x) for x in self._last_losses],
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        record = checkpoint.get(RECORD_KEY)
        # Only when training resumes: validate(ckpt_path=best) after fit loads callbacks too.
        if record is None or trainer.state.fn != "fit":
            return
        self._before = {k: record[k] for k in ("steps", "tokens", "seconds")}
        self.resumed_at_step = record["steps"]
        first = record["first_loss"]
        self._first_loss = torch.tensor(first) if first is not None else None
        self._last_losses.extend(torch.tensor(x) for x in record["last_losses"])

    # -- results ---------------------------------------------------------------------------
    @property
    def tokens(self) -> int:
        """The whole run's: before the resume (all processes) plus this process's part."""
        return self._before["tokens"] + int(self._tokens)

    def summary(self) -> dict[str, Any]:
        seconds = self._before["seconds"] + self.train_seconds
        last = [float(x) for x in self._last_losses]
        return {
            "steps": self._before["steps"] + self.steps,
            "resumed_at_step": self.resumed_at_step,  # None: the run was not resumed
            "loss_first_step": float(self._first_loss) if self._first_loss is not None else None,
            "loss_last_10_steps": sum(last) / len(last) if last else None,
            "tokens": self.tokens,
            "train_seconds": round(seconds, 3),
            "tokens_per_s": round(self.tokens / seconds, 1) if seconds > 0 else None,
            "peak_memory_mb": round(self.peak_memory / 2**20, 1) if self.peak_memory else None,
            "peak_memory_measured_by": how_measured(),
        }
