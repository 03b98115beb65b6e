"""Stop at the first non-finite training loss, before it can reach a checkpoint.

A NaN or infinite loss poisons the weights at that step's update, and every checkpoint saved
afterwards. The check runs after each micro-batch, before Lightning's checkpoint callbacks
(it orders them last), so the newest checkpoint on disk is the last good one; the error names
the step and that checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lit_ft.errors import LitFtError
from lit_ft.observe.step_end import StepEndCallback


class NonFiniteLossError(LitFtError):
    """Training diverged; the message names the step and the last good checkpoint."""


class StopOnNonFiniteLoss(StepEndCallback):
    def __init__(self, checkpoint_dir: str | Path):
        self.checkpoint_dir = Path(checkpoint_dir)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stepped = self.took_step()  # read at every batch end, so the flag never goes stale
        loss = getattr(pl_module, "last_train_loss", None)
        if loss is None:
            return
        # One host sync per micro-batch; the progress bar's loss display costs the same.
        bad = not bool(torch.isfinite(loss))
        if trainer.world_size > 1:  # all ranks stop together, or the others wait forever
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        # global_step counts finished optimizer steps, this batch's included if it stepped;
        # a batch inside an accumulation window belongs to the next step.
        step = trainer.global_step + (0 if stepped else 1)
        raise NonFiniteLossError(
            f"the training loss is {float(loss)} at optimizer step {step} (epoch "
            f"{trainer.current_epoch}, batch {batch_idx}); stopped without saving it. "
            f"{self._last_good()} Lower optimizer.lr, keep trainer.gradient_clip_val on, or "
            "use trainer.precision=32-true"
        )

    def _last_good(self) -> str:
        saved = sorted(self.checkpoint_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
        if not saved:
            return "No checkpoint was saved before it."
        return f"The last good checkpoint is {saved[-1]} (resume with ckpt_path=last)."
