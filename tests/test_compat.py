"""Each use of another library's private state (lit_ft/compat.py) against the real library:
these fail loudly when an upgrade moves what they reach."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from lit_ft.compat import mark_step_as_saved, reopen_epoch, rescale_batch_progress


def _fit(tmp_path, callbacks, max_steps=4, ckpt_path=None):
    trainer = L.Trainer(
        default_root_dir=tmp_path, max_steps=max_steps, accumulate_grad_batches=2,
        logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=callbacks, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(BoringModel(), ckpt_path=ckpt_path)
    return trainer


def test_a_step_marked_saved_is_not_saved_again(tmp_path):
    """Resumed at step 2 with accumulation 2, Lightning's ModelCheckpoint saves step 2 again
    at the first micro-batch (mid-window); marked as saved, it waits for step 3."""

    def resumed_saves(marked: bool) -> list[int]:
        saves: list[int] = []

        class Counting(ModelCheckpoint):
            def on_train_start(self, trainer, pl_module):
                super().on_train_start(trainer, pl_module)
                if marked:
                    mark_step_as_saved(self, trainer.global_step)

            def _save_checkpoint(self, trainer, filepath):
                saves.append(trainer.global_step)
                super()._save_checkpoint(trainer, filepath)

        every = {"dirpath": tmp_path / str(marked), "every_n_train_steps": 1, "save_top_k": -1}
        _fit(tmp_path, [ModelCheckpoint(**every, filename="first")], max_steps=2)
        _fit(tmp_path, [Counting(**every)], max_steps=4, ckpt_path=every["dirpath"] / "first.ckpt")
        return saves

    assert resumed_saves(marked=False)[0] == 2  # the library's behaviour we correct
    assert resumed_saves(marked=True) == [3, 4]


def test_checkpoint_batch_progress_has_the_layout_we_rescale(tmp_path):
    import torch

    _fit(tmp_path, [ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, filename="s")])
    checkpoint = torch.load(tmp_path / "s.ckpt", weights_only=True)
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    assert progress["current"]["ready"] == 6  # 3 steps x accumulation 2
    rescale_batch_progress(checkpoint, old=2, new=1)
    assert progress["current"]["ready"] == 3 and progress["total"]["ready"] == 3


def test_an_epoch_cut_by_max_steps_is_saved_processed_and_reopens(tmp_path):
    import torch

    # no validation: ModelCheckpoint saves at the epoch-end hook that max_steps=3 still runs
    _fit(tmp_path, [ModelCheckpoint(dirpath=tmp_path, filename="s")], max_steps=3)
    checkpoint = torch.load(tmp_path / "s.ckpt", weights_only=True)
    epochs = checkpoint["loops"]["fit_loop"]["epoch_progress"]
    assert epochs["current"]["processed"] == 1 and epochs["current"]["completed"] == 0
    reopen_epoch(checkpoint)
    assert epochs["current"]["processed"] == epochs["current"]["completed"] == 0


def test_the_logging_counter_we_align_exists_and_is_read(tmp_path):
    from lit_ft.compat import align_logging_counter

    trainer = _fit(tmp_path, [], max_steps=3)  # accumulation 2: 6 micro-batches, 3 steps
    trainer.fit_loop.epoch_loop._batches_that_stepped = 99
    align_logging_counter(trainer)
    assert trainer.fit_loop.epoch_loop._batches_that_stepped == trainer.global_step == 3
