"""Preemption: SIGTERM (or SIGUSR1, SLURM's warning signal) saves a checkpoint and stops.

The handler only sets a flag. At the next optimizer-step boundary (never in the middle of a
gradient-accumulation window, whose partial gradients no checkpoint holds) the run writes
`last.ckpt` and exits with `EXIT_PREEMPTED`, so a job script can tell "preempted, re-queue
me" from success (0) and errors (1, 2). The same command with `ckpt_path=last` (or `auto`)
then continues exactly where it stopped.

Ctrl-C (SIGINT) during training is the same request from a person: the first one says what
will happen and is handled like SIGTERM; a second one, before the save, stops at once (as
Python's KeyboardInterrupt, which Lightning turns into exit code 1, saving nothing).
"""

from __future__ import annotations

import signal
from pathlib import Path

from lit_ft.log import say
from lit_ft.observe.step_end import StepEndCallback

EXIT_PREEMPTED = 3
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Preempted(SystemExit):
    def __init__(self, checkpoint: Path):
        super().__init__(EXIT_PREEMPTED)
        self.checkpoint = checkpoint


class PreemptionCheckpoint(StepEndCallback):
    def __init__(self, checkpoint_dir: str | Path):
        self.checkpoint_dir = Path(checkpoint_dir)
        self.signal_received: int | None = None
        self._previous: dict[int, object] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        # Installed after Lightning's own handlers (registered when fit starts) and instead of
        # them: Lightning would stop at the end of any batch, even inside an accumulation window.
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signal_received == signal.SIGINT:
            say("second Ctrl-C: stopping now, without saving")
            raise KeyboardInterrupt
        if signum == signal.SIGINT:
            say(
                "Ctrl-C: finishing this optimizer step, then saving last.ckpt and stopping "
                "(press Ctrl-C again to stop at once, without saving)"
            )
        self.signal_received = signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.took_step():  # inside an accumulation window
            return
        stop = self.signal_received is not None
        if trainer.world_size > 1:
            # Every rank must stop at the same step: the save is a collective, and a rank that
            # trained on would wait for the others forever. One rank's signal stops all.
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        path = self.checkpoint_dir / "last.ckpt"
        trainer.save_checkpoint(path)
        name = signal.Signals(self.signal_received or signal.SIGTERM).name  # or another rank's
        say(
            f"{name} received: saved {path} at step {trainer.global_step}; exiting with "
            f"code {EXIT_PREEMPTED}. Resume with the same command plus ckpt_path=last."
        )
        raise Preempted(path)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
