"""The learning rate in the logs from the first step, so the warmup shows in learning_rate.png.

Lightning's LearningRateMonitor logs at the `log_every_n_steps` cadence, so with the default
of 10 a warmup of 9 steps is never seen (the first point is already at the peak). This one
logs every optimizer step of the warmup (`FineTuneModule.warmup_steps`), then goes on at the
cadence. Each value is logged under the number of the step it is used for, in the run's one
numbering (lit_ft/observe/step_numbers.py: the steps done, from 1): the rate read before
step k is taken is the rate of step k, so it is logged at k (Lightning logs it at k - 1).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import LearningRateMonitor


class WarmupAwareLearningRateMonitor(LearningRateMonitor):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._logged_step: int | None = None

    def on_train_batch_start(self, trainer, *args: Any, **kwargs: Any) -> None:
        if not trainer.loggers or self.logging_interval == "epoch" or not trainer.log_every_n_steps:
            return
        step = trainer.global_step + 1  # the step this batch belongs to, counted from 1
        if step == self._logged_step:  # the other micro-batches of an accumulation window
            return
        warmup = getattr(trainer.lightning_module, "warmup_steps", 0) or 0
        if step > warmup and step % trainer.log_every_n_steps:
            return
        self._logged_step = step
        stats = self._rates(trainer)
        for logger in trainer.loggers:
            logger.log_metrics(stats, step=step)

    def _rates(self, trainer) -> dict[str, float]:
        """Each parameter group's rate under the name Lightning's monitor gives it.

        `self.lrs` (public, filled in `on_train_start`) holds those names, one per parameter
        group in the optimizers' order ("lr-AdamW", or "lr-AdamW/pg1", "lr-AdamW/pg2"); the
        rate is the group's `"lr"`, which the scheduler sets before each step.
        """
        names = list(self.lrs)
        groups = [group for optimizer in trainer.optimizers for group in optimizer.param_groups]
        if len(names) != len(groups):
            raise RuntimeError(
                f"LearningRateMonitor names {len(names)} learning rates but the optimizers "
                f"have {len(groups)} parameter groups: update lit_ft/observe/learning_rate.py"
            )
        return {name: group["lr"] for name, group in zip(names, groups, strict=True)}
