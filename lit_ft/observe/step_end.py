"""Whether the micro-batch that just ended closed an optimizer step (public hooks only).

Lightning calls `on_before_optimizer_step` once per optimizer step, after the backward pass
of the window's last micro-batch and before `on_train_batch_end` of that micro-batch. With
accumulation 4, micro-batches 1-3 end without it and micro-batch 4 ends after it: a flag set
there and read (and cleared) at the batch's end says "this batch stepped" without asking the
fit loop's private `_should_accumulate()`. The hook runs even when the step is skipped (a
16-mixed overflow): the window is closed all the same.
"""

from __future__ import annotations

import lightning as L


class StepEndCallback(L.Callback):
    """A callback that can ask, in `on_train_batch_end`, whether this batch took a step."""

    _stepped = False

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._stepped = True

    def took_step(self) -> bool:
        """True once after each optimizer step: call it once per `on_train_batch_end`."""
        stepped, self._stepped = self._stepped, False
        return stepped
