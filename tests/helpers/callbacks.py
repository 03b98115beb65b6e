"""Callbacks that the resumption tests inject into CLI runs (`+callbacks.x={_target_: ...}`)."""

from __future__ import annotations

import json
import os
import signal

from lightning.pytorch import Callback


class LossLog(Callback):
    """Appends (global step, batch index, micro-batch loss) to a JSONL file as training goes.

    `weights=True` adds a digest of the exact bytes of every parameter the micro-batch's
    forward used, so a comparison of two runs tells a loss that moved alone (its own
    arithmetic) from one whose weights had already moved (an earlier update)."""

    def __init__(self, path: str, weights: bool = False):
        self.path, self.weights = path, weights
        self._digest: str | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.weights:
            import hashlib

            digest = hashlib.sha1()
            for param in pl_module.parameters():
                digest.update(param.detach().cpu().contiguous().numpy().tobytes())
            self._digest = digest.hexdigest()[:16]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        record = {
            "epoch": trainer.current_epoch,
            "batch": batch_idx,
            "step": trainer.global_step,
            "loss": float(pl_module.last_train_loss),
            "first_ids": batch["input_ids"][:, 0].tolist(),
            "rank": trainer.global_rank,
        }
        if self.weights:
            record["weights"] = self._digest
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


class KillAt(Callback):
    """SIGKILLs its own process at the first micro-batch where the optimizer has stepped
    `step` times and `micro_batch` batches of the next window are done (no clean-up runs)."""

    def __init__(self, step: int, micro_batch: int = 0, sig: str = "SIGKILL", rank: int = 0):
        self.step, self.micro_batch, self.sig = step, micro_batch, getattr(signal, sig)
        self.rank = rank  # under DDP, only this rank signals itself
        self._count = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step < self.step or trainer.global_rank != self.rank:
            return
        if self._count == self.micro_batch:
            os.kill(os.getpid(), self.sig)
        self._count += 1


class PoisonAt(Callback):
    """Makes the weights NaN before the micro-batch that completes optimizer step `step`
    (1-based), so that step's loss is the first non-finite one."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step + 1 == self.step:
            import torch

            with torch.no_grad():
                next(pl_module.model.parameters()).fill_(float("nan"))


class FailAt(Callback):
    """Raises on one rank once the optimizer has stepped `step` times: the other ranks are
    left waiting in the next collective, as when one rank of a real job crashes."""

    def __init__(self, step: int, rank: int = 0):
        self.step, self.rank = step, rank

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step and trainer.global_rank == self.rank:
            raise RuntimeError(f"rank {self.rank} fails at step {trainer.global_step}")


class KillSoonAfter(Callback):
    """SIGKILLs its own process `delay` seconds after an event, from a timer thread, so the
    kill lands wherever the run happens to be then (mid-step, mid-save, in validation, in the
    export): `event` is `start` (this callback's creation, before data and model load),
    `save` (this life's first checkpoint save) or `fit_end` (training done: the final
    evaluation and the export follow)."""

    def __init__(self, delay: float, event: str = "save"):
        self.delay, self.event = delay, event
        if event == "start":
            self._arm()

    def _arm(self) -> None:
        import threading

        timer = threading.Timer(self.delay, os.kill, (os.getpid(), signal.SIGKILL))
        timer.daemon = True
        timer.start()
        self.event = "armed"

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.event == "save":
            self._arm()

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.event == "fit_end":
            self._arm()


class SlowBatches(Callback):
    """Sleeps before every training batch once `after_step` optimizer steps are done, so a
    signal sent then arrives mid-step (a tiny model's steps take milliseconds)."""

    def __init__(self, seconds: float, after_step: int = 0):
        self.seconds, self.after_step = seconds, after_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.after_step:
            import time

            time.sleep(self.seconds)


# For the processes whose losses are compared bit for bit (an uninterrupted run, a killed
# one, its resumption): MKL, torch's CPU BLAS here, may pick its code path by the operands'
# memory alignment and its thread count by itself (MKL_DYNAMIC), and either can move a
# float32 sum by one rounding step between otherwise identical processes (seen here about
# once in a few dozen runs as a 1e-7 relative loss change). Strict conditional numerical
# reproducibility and a fixed thread count rule both out; lit_ft's own order of work is
# what these tests check.
REPRODUCIBLE_ENV = {"MKL_CBWR": "AUTO,STRICT", "MKL_DYNAMIC": "FALSE"}
