"""One step numbering everywhere: the optimizer steps done, counted from 1.

After the first optimizer step it is step 1: the console's "step 10/80 loss 3.308" is the row
of step 10 in metrics.csv (and TensorBoard, W&B, MLflow), in the plots and in
`lit_ft.plots.read_metrics`; "validation (step 60)" is plotted at 60; the evaluation before
training is at step 0. That is `trainer.global_step` once the step is done.

Lightning's loggers number a row by a loop counter of its own instead, which lags one behind
(it is raised after the step's metrics and validation are logged), so its rows said 9 for the
console's step 10. A metric named `step` is Lightning's documented way to give the row its
step, and this callback logs it with every batch of metrics: after each training batch and at
the end of each validation and test.
"""

from __future__ import annotations

import lightning as L

from lit_ft.compat import align_logging_counter


class StepNumbers(L.Callback):
    def __init__(self) -> None:
        self._aligned = False

    def on_train_start(self, trainer, pl_module) -> None:
        self._aligned = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # Lightning decides which steps write a row (every `log_every_n_steps`) from a counter
        # of its own, which it saves and restores apart from global_step and which a resume
        # can leave off it (measured: resumed at 30, rows came at 31 and 36, not 35 and 40).
        # The counter is for logging only; aligned once the loop has restored it (at the first
        # batch: Lightning adjusts it after on_train_start), rows land on multiples of N
        # whether or not the run was resumed.
        if not self._aligned:
            align_logging_counter(trainer)
            self._aligned = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Runs before Lightning writes the step's metrics; after the optimizer step, so
        # global_step is the steps done (with accumulation the last micro-batch's value counts).
        pl_module.log("step", float(trainer.global_step), on_step=True, on_epoch=False)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._log_at_epoch_end(trainer, pl_module)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._log_at_epoch_end(trainer, pl_module)

    def _log_at_epoch_end(self, trainer, pl_module) -> None:
        # The same on every process: "max" only keeps Lightning's DDP check quiet.
        pl_module.log(
            "step",
            float(trainer.global_step),
            on_step=False,
            on_epoch=True,
            reduce_fx="max",
            sync_dist=trainer.world_size > 1,
        )


def without_step(metrics: dict) -> dict:
    """The metrics an evaluation returns, less the row number logged beside them."""
    return {key: value for key, value in metrics.items() if key != "step"}
