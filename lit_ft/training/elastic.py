"""Resuming on other hardware: another process count or micro-batch, the same global batch.

A preempted 2-process job requeued on 1 process, or a run that hit out-of-memory and goes on
at half the micro-batch, must train the steps the uninterrupted run would have trained. What
an optimizer step sees is the global batch, batch x accumulation x processes, read in order
from one epoch permutation (lit_ft/data/sampler.py splits it by global position). So a
resume keeps that product, and with it the data of every later step and the schedule:

- every checkpoint records the global batch it was trained with (`GlobalBatchRecord`);
- on resume, a setting the user left as it was saved is recomputed to keep the product, the
  accumulation first (2 processes x 4 -> 1 process x 4 x accumulation 2), then the batch
  (1 process x 8 -> 2 processes x 4); the pre-flight says what changed;
- when no whole numbers keep it (8 sequences on 3 processes), the run stops before any work,
  naming the settings and process counts that would;
- Lightning's loop counters, which count micro-batches, are rescaled to the new accumulation
  so that windows still end on the steps they ended on (`lit_ft.compat.rescale_batch_progress`).

With dropout off the resumed steps equal the uninterrupted run's up to the order of float
sums. With dropout on, ranks that existed keep their own random streams; a rank that did not
exist starts a stream of its own (seeded by step and rank), so its masks differ from the
ones the old layout would have drawn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from lightning.pytorch import Callback

from lit_ft.compat import reopen_epoch, rescale_batch_progress
from lit_ft.errors import LitFtError
from lit_ft.log import say

CHECKPOINT_KEY = "lit_ft_global_batch"


@dataclass(frozen=True)
class GlobalBatch:
    batch_size: int  # sequences per process and micro-batch (data.batch_size)
    accumulation: int  # micro-batches per optimizer step (trainer.accumulate_grad_batches)
    world_size: int  # processes (trainer.devices x trainer.num_nodes)

    @property
    def size(self) -> int:
        return self.batch_size * self.accumulation * self.world_size

    def describe(self) -> str:
        processes = "process" if self.world_size == 1 else "processes"
        return (
            f"{self.world_size} {processes} x batch {self.batch_size} x accumulation "
            f"{self.accumulation} = {self.size}"
        )


def saved_global_batch(checkpoint: dict[str, Any] | None) -> GlobalBatch | None:
    """The global batch a checkpoint was trained with (None: written before it was kept)."""
    saved = (checkpoint or {}).get(CHECKPOINT_KEY)
    return GlobalBatch(**saved) if saved else None


def keep_global_batch(saved: GlobalBatch | None, here: GlobalBatch) -> tuple[GlobalBatch, str]:
    """The batch and accumulation that give `here.world_size` processes the saved global
    batch, and a line saying what changed ('' when nothing did).

    A setting that differs from the checkpoint's was chosen by the user and is kept; the
    other one is recomputed. Raises LitFtError when no whole numbers keep the global batch.
    """
    if saved is None or saved.size == here.size:
        return here, ""
    world = here.world_size
    choices = []
    if here.accumulation == saved.accumulation:  # the accumulation was not chosen: fit it
        choices.append(GlobalBatch(here.batch_size, saved.size // (here.batch_size * world), world))
    if here.batch_size == saved.batch_size:  # the batch was not chosen: fit it
        choices.append(
            GlobalBatch(saved.size // (here.accumulation * world), here.accumulation, world)
        )
    for choice in choices:
        if choice.batch_size >= 1 and choice.accumulation >= 1 and choice.size == saved.size:
            changed = [
                f"{name} {old} -> {new}"
                for name, old, new in (
                    ("data.batch_size", here.batch_size, choice.batch_size),
                    ("trainer.accumulate_grad_batches", here.accumulation, choice.accumulation),
                )
                if old != new
            ]
            return choice, (
                f"resumed on {world} {'process' if world == 1 else 'processes'}: "
                f"{', '.join(changed)} keeps the global batch of {saved.size} "
                f"(saved: {saved.describe()})"
            )
    raise LitFtError(_refusal(saved, here))


def keep_epoch_limit(
    limit: int | float | None, saved: GlobalBatch | None, kept: GlobalBatch
) -> tuple[int | float | None, str]:
    """`trainer.limit_train_batches` for the resumed layout, and a line when it changes.

    An integer limit counts micro-batches per process, so an epoch holds limit x batch x
    processes sequences: 4 batches of 8 on 1 process are 32 sequences, which 1 process of
    batch 4 reads in 8 batches. Kept, every later epoch starts on the step it started on
    and holds the same examples. A fraction of the data is the same on any layout.
    """
    per_batch_then = saved.batch_size * saved.world_size if saved else None
    per_batch_now = kept.batch_size * kept.world_size
    if (
        not isinstance(limit, int)
        or isinstance(limit, bool)
        or per_batch_then in (None, per_batch_now)
    ):
        return limit, ""
    sequences = limit * per_batch_then
    if sequences % per_batch_now:
        raise LitFtError(
            f"cannot resume with trainer.limit_train_batches={limit}: an epoch of the "
            f"checkpoint's run held {limit} x {per_batch_then} = {sequences} sequences, which "
            f"batches of {per_batch_now} over all processes do not divide; set "
            "trainer.limit_train_batches to a fraction (e.g. 0.5) or resume on the old layout"
        )
    new = sequences // per_batch_now
    return new, f"trainer.limit_train_batches {limit} -> {new} keeps {sequences} sequences an epoch"


def _refusal(saved: GlobalBatch, here: GlobalBatch) -> str:
    world = here.world_size
    pairs = [  # every whole (batch, accumulation) for this process count
        (b, saved.size // (b * world))
        for b in range(1, saved.size + 1)
        if saved.size % (b * world) == 0
    ]
    fits = [w for w in range(1, saved.size + 1) if saved.size % w == 0]
    how = (
        "set "
        + " or ".join(f"data.batch_size={b} trainer.accumulate_grad_batches={a}" for b, a in pairs)
        if pairs
        else f"no data.batch_size and trainer.accumulate_grad_batches multiply to {saved.size} "
        f"on {world} processes; resume on {', '.join(map(str, fits))} process(es)"
    )
    return (
        f"cannot resume with a global batch of {here.size} ({here.describe()}): the "
        f"checkpoint was trained with {saved.describe()}, and a different global batch would "
        f"train other examples in each step on a schedule sized for the old one. To keep it, "
        f"{how}; or start fresh (drop ckpt_path)"
    )


class GlobalBatchRecord(Callback):
    """Writes the run's global batch into every checkpoint, and on resume makes Lightning's
    loop counters agree with the data position (counted in sequences over all processes):
    micro-batch counts rescaled when the accumulation changed, and an epoch that `max_steps`
    cut short continued rather than closed (lit_ft.compat.reopen_epoch)."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = asdict(running_global_batch(trainer))

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        sampler = getattr(trainer.datamodule, "train_sampler", None)  # none when streaming
        if sampler is not None:
            position = checkpoint.get(type(trainer.datamodule).__name__, {})
            if 0 < position.get("samples_done", 0) < sampler.epoch_positions:  # mid-epoch
                reopen_epoch(checkpoint)
        saved = saved_global_batch(checkpoint)
        if saved is not None and saved.accumulation != trainer.accumulate_grad_batches:
            rescale_batch_progress(checkpoint, saved.accumulation, trainer.accumulate_grad_batches)


def running_global_batch(trainer) -> GlobalBatch:
    return GlobalBatch(
        trainer.datamodule.batch_size, trainer.accumulate_grad_batches, trainer.world_size
    )


def keep_global_batch_on_resume(cfg, resume, trainer) -> None:
    """The run's step: on resume, the batch and accumulation that keep the checkpoint's
    global batch on this many processes (and an epoch's sequences under an integer
    `trainer.limit_train_batches`), written into the config and the Trainer; said in the
    pre-flight when they change."""
    here = GlobalBatch(cfg.data.batch_size, cfg.trainer.accumulate_grad_batches, trainer.world_size)
    saved = saved_global_batch(resume.checkpoint if resume else None)
    kept, change = keep_global_batch(saved, here)
    limit, limit_change = keep_epoch_limit(trainer.limit_train_batches, saved, kept)
    if change:
        say(change)
        cfg.data.batch_size = kept.batch_size
        cfg.trainer.accumulate_grad_batches = trainer.accumulate_grad_batches = kept.accumulation
    if limit_change:  # an epoch of the same sequences (the step count reads the config)
        say(limit_change)
        cfg.trainer.limit_train_batches = trainer.limit_train_batches = limit
