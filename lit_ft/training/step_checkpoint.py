"""The resumable checkpoint stream: Lightning's ModelCheckpoint, safe to resume again and again.

Two things Lightning leaves to chance after a resume, fixed here:

- It forgets which step it saved last, so the resumed run saves again at its first
  micro-batch, mid accumulation window (lit_ft.compat.mark_step_as_saved says why that
  breaks exactness). The restored step counts as saved.
- Loggers buffer rows (CSVLogger writes every 100 steps): a run killed after a checkpoint but
  before the flush has steps in the checkpoint that no metrics.csv row shows, and its resumed
  life does not train them again. Every save flushes the loggers first, so each step a
  checkpoint holds has its logged row.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint

from lit_ft.compat import mark_step_as_saved


class StepCheckpoint(ModelCheckpoint):
    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        # on a fresh run global_step is 0, Lightning's own starting value: nothing changes
        mark_step_as_saved(self, trainer.global_step)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        for logger in trainer.loggers:
            logger.save()
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
