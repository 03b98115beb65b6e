"""<run dir>/completions.jsonl: what a sampling task (GRPO) generated in training, one JSON
line per completion: the optimizer step it trained in, the prompt, the completion, its
weighted reward, each function's reward and its advantage. And `train/generation_share`: the
share of each micro-batch's time (from its start to its end, backward and any optimizer step
included) spent generating, e.g. 0.25 s of sampling in a 0.34 s micro-batch = 0.74.

Written by rank zero, for the completions it sampled (under DDP each rank samples its own
prompts; rank zero's are a random share of them). A resumed run rewrites the lines from its
checkpoint's step on, so the file reads as one uninterrupted run's."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L


class CompletionsLog(L.Callback):
    def __init__(self, output_dir: str | Path) -> None:
        self.path = Path(output_dir) / "completions.jsonl"
        self._step: int | None = None
        self._opened = False
        self._started = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step = trainer.global_step + 1  # the optimizer step this micro-batch is part of
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        rows = getattr(pl_module.task, "last_rollout", None)
        if not rows:
            return
        pl_module.task.last_rollout = None
        seconds = time.perf_counter() - self._started
        generation = getattr(pl_module.task, "last_generation_s", None)
        if generation is not None and seconds > 0:
            pl_module.log("train/generation_share", min(generation / seconds, 1.0))
        if not trainer.is_global_zero:
            return
        if not self._opened:
            self._keep_earlier_steps()
        with open(self.path, "a", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps({"step": self._step, **row}, ensure_ascii=False) + "\n")

    def _keep_earlier_steps(self) -> None:
        """Lines of steps before this process's first (a resume's checkpoint) stay."""
        self._opened = True
        if not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if line and json.loads(line)["step"] < self._step]
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
