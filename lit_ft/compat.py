"""Every use of another library's private state, in one place.

Each function names what it reaches, why no public route serves, and the versions it was
checked against; tests/test_compat.py fails loudly when a library changes underneath.
"""

from __future__ import annotations

from typing import Any


def mark_step_as_saved(checkpoint_callback: Any, global_step: int) -> None:
    """Tell a Lightning `ModelCheckpoint` that `global_step` is already saved.

    Reaches `ModelCheckpoint._last_global_step_saved` (lightning 2.5-2.6). Lightning keeps it
    only in memory: a run resumed at step 6 starts with 0, so with accumulation 2 the first
    micro-batch after the resume (global step still 6, 6 % every_n_train_steps == 0) saves a
    checkpoint *inside* the accumulation window, whose gradients no checkpoint holds. A run
    resumed from that file loses the window's first half and drifts from then on; it is also
    why `step000006-v1.ckpt` appeared beside `step000006.ckpt`. No public setting restores it.
    """
    if not hasattr(checkpoint_callback, "_last_global_step_saved"):
        raise AttributeError(
            "lightning's ModelCheckpoint no longer has _last_global_step_saved: "
            "lit_ft.compat.mark_step_as_saved must be updated for this Lightning version"
        )
    checkpoint_callback._last_global_step_saved = global_step


def rescale_batch_progress(checkpoint: dict[str, Any], old: int, new: int) -> None:
    """Lightning's micro-batch counters of a checkpoint, recounted for accumulation `new`.

    Reaches the layout of `checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]`
    (lightning 2.5-2.6: `total`/`current` of `ready`/`started`/`processed`/`completed`).
    Lightning ends an accumulation window when the epoch's micro-batch count is a multiple of
    the accumulation; the checkpoint counts micro-batches of the *old* one. Saved after k
    optimizer steps of this epoch it holds k x old micro-batches; a resume at accumulation
    `new` must continue from k x new, or its windows would end mid-step (e.g. 7 steps at
    accumulation 1 = 7 micro-batches; at accumulation 2 the next window would close after
    one micro-batch). No public API sets these counters.
    """
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    if progress.get("is_last_batch"):  # saved at the epoch's end: the next epoch starts at 0
        return
    done = progress["current"]["ready"]
    if done % old:
        raise ValueError(
            f"the checkpoint was saved inside an accumulation window ({done} micro-batches at "
            f"accumulation {old}): it cannot be resumed at another accumulation"
        )
    shift = done // old * new - done
    for counts in (progress["current"], progress["total"]):
        for key in counts:
            counts[key] += shift


def align_logging_counter(trainer) -> None:
    """Set Lightning's logging counter to the optimizer steps done.

    Reaches `trainer.fit_loop.epoch_loop._batches_that_stepped` (lightning 2.5-2.6): the
    counter `should_update_logs` reads for the `log_every_n_steps` cadence. It is saved and
    restored apart from global_step and no public setting sets it.
    """
    loop = trainer.fit_loop.epoch_loop
    if not hasattr(loop, "_batches_that_stepped"):
        raise AttributeError(
            "lightning's training epoch loop no longer has _batches_that_stepped: "
            "lit_ft.compat.align_logging_counter must be updated"
        )
    loop._batches_that_stepped = trainer.global_step


def reopen_epoch(checkpoint: dict[str, Any]) -> None:
    """Mark a checkpoint's epoch as still running.

    Reaches `checkpoint["loops"]["fit_loop"]["epoch_progress"]` (lightning 2.5-2.6). A run
    stopped by `max_steps` mid-epoch still runs the epoch-end hooks, and a checkpoint saved
    there (Lightning's ModelCheckpoint saves at train-epoch end when no validation ran)
    counts the epoch as processed: resumed with a larger `max_steps`, Lightning would close
    the epoch, reach `max_epochs` and train nothing more. Rewinding `processed` to
    `completed` makes Lightning continue the epoch from the batch it stopped at, as it does
    for any mid-epoch checkpoint.
    """
    for counts in checkpoint["loops"]["fit_loop"]["epoch_progress"].values():
        counts["processed"] = counts["completed"]
