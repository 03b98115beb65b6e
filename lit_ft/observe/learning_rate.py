"""The learning rate in the logs from step 0, so the warmup shows in learning_rate.png.

Lightning's LearningRateMonitor logs at the `log_every_n_steps` cadence, so with the default
of 10 a warmup of 9 steps is never seen (the first point is step 9, already at the peak).
This one also logs every optimizer step of the warmup (`FineTuneModule.warmup_steps`), then
goes on at the cadence.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import LearningRateMonitor


class WarmupAwareLearningRateMonitor(LearningRateMonitor):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._logged_step: int | None = None

    def on_train_batch_start(self, trainer, *args: Any, **kwargs: Any) -> None:
        step = trainer.global_step
        warmup = getattr(trainer.lightning_module, "warmup_steps", 0)
        if not warmup or step > warmup:  # no warmup to show: Lightning's cadence alone
            return super().on_train_batch_start(trainer, *args, **kwargs)
        if step == self._logged_step:  # the other micro-batches of an accumulation window
            return
        self._logged_step = step
        stats = self._extract_stats(trainer, "any")
        for logger in trainer.loggers:
            logger.log_metrics(stats, step=step)
