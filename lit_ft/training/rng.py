"""The global RNG states (python, numpy, torch, CUDA) in every checkpoint, restored on resume."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback


class RngState(Callback):
    """Saves the global RNG states (python, numpy, torch, CUDA) and restores them on resume.

    Lightning checkpoints no global RNG state, so a resumed run would draw different dropout
    masks than the uninterrupted one. States are kept as lists and tensors, so checkpoints still
    load with `torch.load(weights_only=True)`. They are restored at `on_train_start`, the last
    moment before the first resumed step.
    """

    def __init__(self) -> None:
        self._to_restore: dict[str, Any] | None = None
        self._own_rank_state: dict[str, Any] | None = None
        self._new_rank_seed: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return capture_rng()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = state_dict

    # Under DDP only rank 0 writes the file, so state_dict() alone would give every rank rank
    # 0's generators (and rank 1 other dropout masks than it had). Each rank's state is
    # gathered into the checkpoint (all ranks save together), and each takes back its own.
    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if trainer.world_size > 1:
            import torch.distributed as dist

            states: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(states, capture_rng())
            checkpoint["lit_ft_rng_per_rank"] = states

    # Resumed on another process count (lit_ft/training/elastic.py): a rank that existed
    # takes its own state back; a rank that did not gets a stream of its own, seeded by step
    # and rank (never a copy of rank 0's, which would repeat its dropout masks).
    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("lit_ft_rng_per_rank") or [
            checkpoint["callbacks"].get(self.state_key)
        ]
        rank = trainer.global_rank
        if rank < len(states) and states[rank] is not None:
            self._own_rank_state = states[rank]  # preferred at on_train_start
        elif states[0] is not None:
            self._new_rank_seed = 1_000_003 * checkpoint["global_step"] + rank

    def on_train_start(self, trainer, pl_module) -> None:
        state = self._own_rank_state or self._to_restore
        if self._new_rank_seed is not None:
            import lightning as L

            L.seed_everything(self._new_rank_seed, workers=True, verbose=False)
        elif state is not None:
            restore_rng(state)
        self._to_restore = self._own_rank_state = self._new_rank_seed = None


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
