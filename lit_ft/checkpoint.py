"""Resuming: which checkpoint to resume from, and the state Lightning does not save itself."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback

from lit_ft.errors import LitFtError


def resolve_ckpt_path(ckpt_path: str | None, checkpoint_dir: str | Path) -> str | None:
    """`None` starts fresh; `last` is the newest checkpoint of this run dir; else a file."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        return str(newest_checkpoint(Path(checkpoint_dir)))
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise LitFtError(f"ckpt_path='{ckpt_path}' is not a file")
    return str(path)


def newest_checkpoint(checkpoint_dir: Path) -> Path:
    last = checkpoint_dir / "last.ckpt"
    if last.is_file():
        return last
    found = sorted(checkpoint_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise LitFtError(
            f"ckpt_path=last but {checkpoint_dir} holds no checkpoint. To resume a run, point "
            "paths.output_dir at that run's directory (e.g. paths.output_dir=outputs/runs/<date>); "
            "to start fresh, drop ckpt_path"
        )
    return found[-1]


class RngState(Callback):
    """Saves the global RNG states (python, numpy, torch, CUDA) and restores them on resume.

    Lightning checkpoints no global RNG state, so a resumed run would draw different dropout
    masks than the uninterrupted one. States are kept as lists and tensors, so checkpoints still
    load with `torch.load(weights_only=True)`. They are restored at `on_train_start`, the last
    moment before the first resumed step.
    """

    def __init__(self) -> None:
        self._to_restore: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return capture_rng()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = state_dict

    def on_train_start(self, trainer, pl_module) -> None:
        if self._to_restore is not None:
            restore_rng(self._to_restore)
            self._to_restore = None


def capture_rng() -> dict[str, Any]:
    version, keys, gauss = random.getstate()
    kind, np_keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(keys), gauss],
        "numpy": [kind, torch.from_numpy(np_keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    kind, np_keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np_keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
