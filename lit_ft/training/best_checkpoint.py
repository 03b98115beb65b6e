"""The best-checkpoint stream: Lightning's ModelCheckpoint, quiet until a validation has run.

A run that validates only at the end (or every N steps) reaches ModelCheckpoint's save hooks
before the monitored `val/loss` exists, and Lightning warns at each of them that it "could not
find the monitored key". Nothing is missing: there is no best yet (lit_ft decides the best
weights against a final evaluation anyway, lit_ft.steps.better_checkpoint). So the hooks are
skipped while no validation metric exists; once one does, Lightning's own checks apply, so a
monitored name that the run never logs is still reported.

The files it writes are marked (STREAM_KEY), so that resuming prefers a step-boundary file of
the resumable stream at the same step (lit_ft.training.checkpoint._newest_valid).
"""

from __future__ import annotations

from contextlib import contextmanager

from lightning.pytorch.callbacks import ModelCheckpoint

from lit_ft.training.checkpoint import STREAM_KEY


class BestCheckpoint(ModelCheckpoint):
    _saving = False  # true while one of this stream's own hooks may save

    def _nothing_to_monitor_yet(self, trainer) -> bool:
        metrics = trainer.callback_metrics
        stage = self.monitor.split("/")[0] + "/" if self.monitor and "/" in self.monitor else None
        if self.monitor is None or self.monitor in metrics:
            return False
        # e.g. monitor val/loss: no val/... metric at all means no validation has run
        return stage is not None and not any(key.startswith(stage) for key in metrics)

    @contextmanager
    def _own_saves(self):
        self._saving = True
        try:
            yield
        finally:
            self._saving = False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._saving:  # every callback sees every save: mark only this stream's
            checkpoint[STREAM_KEY] = "best"

    def on_train_batch_end(self, trainer, *args, **kwargs) -> None:
        if not self._nothing_to_monitor_yet(trainer):
            with self._own_saves():
                super().on_train_batch_end(trainer, *args, **kwargs)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self._nothing_to_monitor_yet(trainer):
            with self._own_saves():
                super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not self._nothing_to_monitor_yet(trainer):
            with self._own_saves():
                super().on_validation_end(trainer, pl_module)
