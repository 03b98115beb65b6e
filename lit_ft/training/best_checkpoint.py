"""The best-checkpoint stream: Lightning's ModelCheckpoint, quiet until a validation has run.

A run that validates only at the end (or every N steps) reaches ModelCheckpoint's save hooks
before the monitored `val/loss` exists, and Lightning warns at each of them that it "could not
find the monitored key". Nothing is missing: there is no best yet (lit_ft decides the best
weights against a final evaluation anyway: training/evaluation.py). So the hooks are
skipped while no validation metric exists; once one does, Lightning's own checks apply, so a
monitored name that the run never logs is still reported.

The files it writes are marked (STREAM_KEY), so that resuming prefers a step-boundary file of
the resumable stream at the same step (lit_ft.training.checkpoint._newest_valid).

A best checkpoint of a step the resumable stream has just saved is not written again: it
becomes a hard link to that file (same weights, same optimizer state, one copy on disk).
A MiniLM run used to keep best, last and a step file of its final step: 3 x 270 MB for one
state (last.ckpt is a symbolic link now too: `save_last: link`). When the step file rotates
out, the best name still holds the data; when it is saved again (a resumed life trains that
step again), the atomic save writes a new file and the best keeps the old one.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint

from lit_ft.compat import record_checkpoint_saved
from lit_ft.training.checkpoint import STREAM_KEY, link_atomically


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

    def _save_checkpoint(self, trainer, filepath: str) -> None:  # lit_ft.compat.SAVE_METHOD
        source = self._same_step_file(trainer)
        linked = trainer.is_global_zero and source is not None and link_atomically(source, filepath)
        # one choice on every rank: a save is collective (a barrier; shards under fsdp2)
        if not trainer.strategy.broadcast(linked):
            super()._save_checkpoint(trainer, filepath)
            return
        record_checkpoint_saved(self, trainer, filepath)

    def _same_step_file(self, trainer) -> str | None:
        """The resumable stream's file of this very step (its newest: it monitors `step`),
        holding what this save would write; None when there is none."""
        for callback in trainer.checkpoint_callbacks:
            if callback is self or callback.monitor != "step":
                continue
            path, step = callback.best_model_path, callback.best_model_score
            same_content = callback.save_weights_only == self.save_weights_only
            if path and step is not None and int(step) == trainer.global_step and same_content:
                return path if Path(path).is_file() else None  # fsdp2 saves directories
        return None

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
