"""The best-checkpoint stream: Lightning's ModelCheckpoint, quiet until a validation has run.

A run that validates only at the end (or every N steps) reaches ModelCheckpoint's save hooks
before the monitored `val/loss` exists, and Lightning warns at each of them that it "could not
find the monitored key". Nothing is missing: there is no best yet (lit_ft decides the best
weights against a final evaluation anyway, lit_ft.steps.better_checkpoint). So the hooks are
skipped while no validation metric exists; once one does, Lightning's own checks apply, so a
monitored name that the run never logs is still reported.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint


class BestCheckpoint(ModelCheckpoint):
    def _nothing_to_monitor_yet(self, trainer) -> bool:
        metrics = trainer.callback_metrics
        stage = self.monitor.split("/")[0] + "/" if self.monitor and "/" in self.monitor else None
        if self.monitor is None or self.monitor in metrics:
            return False
        # e.g. monitor val/loss: no val/... metric at all means no validation has run
        return stage is not None and not any(key.startswith(stage) for key in metrics)

    def on_train_batch_end(self, trainer, *args, **kwargs) -> None:
        if not self._nothing_to_monitor_yet(trainer):
            super().on_train_batch_end(trainer, *args, **kwargs)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self._nothing_to_monitor_yet(trainer):
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not self._nothing_to_monitor_yet(trainer):
            super().on_validation_end(trainer, pl_module)
