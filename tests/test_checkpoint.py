"""Checkpoint files: atomic writes, broken files, and choosing what to resume from."""

from __future__ import annotations

import os
import time

import pytest
import torch

from lit_ft.errors import LitFtError
from lit_ft.training.checkpoint import (
    AtomicCheckpointIO,
    newest_valid_checkpoint,
    resolve_ckpt_path,
)
from lit_ft.training.rng import capture_rng, restore_rng


def _checkpoint(step: int) -> dict:
    return {"state_dict": {"w": torch.full((3,), float(step))}, "loops": {"step": step}}


def _write(io, path, step):
    io.save_checkpoint(_checkpoint(step), path)
    time.sleep(0.01)  # distinct modification times


def test_crash_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    last = tmp_path / "last.ckpt"
    _write(io, last, 1)

    def crash(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk vanished mid-save")

    monkeypatch.setattr(torch, "save", crash)
    # An OSError while saving (disk full, quota) reaches the user as one clear sentence.
    with pytest.raises(LitFtError, match="disk vanished mid-save .* the previous one is kept"):
        io.save_checkpoint(_checkpoint(2), last)
    monkeypatch.undo()

    assert io.load_checkpoint(last)["loops"]["step"] == 1  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temp litter


def test_truncated_checkpoint_is_skipped_by_last_and_named_when_explicit(tmp_path, capsys):
    io = AtomicCheckpointIO()
    _write(io, tmp_path / "step000004.ckpt", 4)
    _write(io, tmp_path / "last.ckpt", 8)
    data = (tmp_path / "last.ckpt").read_bytes()
    (tmp_path / "last.ckpt").write_bytes(data[: len(data) // 2])  # a crash outside lit_ft

    assert newest_valid_checkpoint(tmp_path) == tmp_path / "step000004.ckpt"
    warning = capsys.readouterr().err
    assert "skipping" in warning and "last.ckpt" in warning
    assert resolve_ckpt_path("last", tmp_path) == str(tmp_path / "step000004.ckpt")
    with pytest.raises(LitFtError, match=r"last.ckpt' cannot be resumed from: it is truncated"):
        resolve_ckpt_path(str(tmp_path / "last.ckpt"), tmp_path)
    with pytest.raises(LitFtError, match="last.ckpt' cannot be loaded"):
        io.load_checkpoint(tmp_path / "last.ckpt")


def test_resume_modes(tmp_path, capsys):
    assert resolve_ckpt_path(None, tmp_path) is None
    assert resolve_ckpt_path("auto", tmp_path) is None
    assert "starting fresh" in capsys.readouterr().out
    with pytest.raises(LitFtError, match="holds no checkpoint"):
        resolve_ckpt_path("last", tmp_path)
    AtomicCheckpointIO().save_checkpoint(_checkpoint(3), tmp_path / "last.ckpt")
    assert resolve_ckpt_path("auto", tmp_path) == str(tmp_path / "last.ckpt")


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path):
    import random

    import numpy as np

    state = capture_rng()
    expected = (random.random(), np.random.rand(), torch.rand(1))
    torch.save({"rng": state}, tmp_path / "rng.pt")
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(1), expected[2])
    assert not any(name.startswith(".") for name in os.listdir(tmp_path))


def test_best_checkpoint_waits_quietly_for_a_validation(tmp_path, recwarn):
    """No "could not find the monitored key" before any val/ metric; Lightning's check after."""
    from types import SimpleNamespace

    from lit_ft.training.best_checkpoint import BestCheckpoint

    best = BestCheckpoint(dirpath=tmp_path, monitor="val/loss", mode="min")
    trainer = SimpleNamespace(callback_metrics={"train/loss": torch.tensor(3.0)})
    assert best._nothing_to_monitor_yet(trainer)
    best.on_train_epoch_end(trainer, None)  # would reach Lightning's save (and warning)
    assert not list(tmp_path.iterdir()) and not recwarn.list
    trainer.callback_metrics = {"val/ppl": torch.tensor(3.0)}  # validated, val/loss missing
    assert not best._nothing_to_monitor_yet(trainer)
    trainer.callback_metrics = {"val/loss": torch.tensor(3.0)}
    assert not best._nothing_to_monitor_yet(trainer)


def test_a_state_is_stored_once_whatever_names_it_has(tiny_overrides, tmp_path):
    """Validations at steps 2, 4 and 6: the resumable stream keeps steps 4 and 6, last.ckpt is
    a symbolic link to step 6's file, and the best checkpoint is a hard link to the step file
    of its step. Four names, two files on disk; `ckpt_path=last` reads last.ckpt's name."""
    import lit_ft

    lit_ft.train_from_overrides(
        [*tiny_overrides, "trainer.max_steps=6", "trainer.val_check_interval=2", "export=false"]
    )
    directory = tmp_path / "run" / "checkpoints"
    names = sorted(p.name for p in directory.iterdir())
    (best,) = [n for n in names if n.startswith("best-")]
    assert names == [best, "last.ckpt", "step000004.ckpt", "step000006.ckpt"]
    assert os.readlink(directory / "last.ckpt") == "step000006.ckpt"
    # the loss falls at every validation of this run: the best is step 6's state
    assert torch.load(directory / best, weights_only=True)["global_step"] == 6
    assert os.path.samefile(directory / best, directory / "step000006.ckpt")
    assert len({(directory / n).stat().st_ino for n in names}) == 2
    assert newest_valid_checkpoint(directory) == directory / "last.ckpt"
