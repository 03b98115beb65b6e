"""Resuming: which checkpoint to resume from, and the state Lightning does not save itself."""

from __future__ import annotations

import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_ft.errors import LitFtError


def resolve_ckpt_path(ckpt_path: str | None, checkpoint_dir: str | Path) -> str | None:
    """Which checkpoint `trainer.fit` resumes from.

    - `None`: start fresh;
    - `last`: the newest valid checkpoint of this run dir; an error if there is none;
    - `auto`: the same, but start fresh (and say so) when there is none: for jobs that are
      re-queued after preemption with the same command;
    - a path: that file, which must load.
    """
    if ckpt_path is None:
        return None
    if ckpt_path in ("last", "auto"):
        newest = newest_valid_checkpoint(Path(checkpoint_dir))
        if newest is not None:
            print(f"[lit_ft] resuming from {newest}", flush=True)
            return str(newest)
        if ckpt_path == "auto":
            print(f"[lit_ft] ckpt_path=auto: no checkpoint in {checkpoint_dir}, starting fresh")
            return None
        raise LitFtError(
            f"ckpt_path=last but {checkpoint_dir} holds no checkpoint. To resume a run, point "
            "paths.output_dir at that run's directory (e.g. paths.output_dir=outputs/runs/<date>); "
            "to start fresh, drop ckpt_path (or use ckpt_path=auto)"
        )
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise LitFtError(f"ckpt_path='{ckpt_path}' is not a file")
    problem = checkpoint_problem(path)
    if problem:
        raise LitFtError(f"ckpt_path='{ckpt_path}' cannot be resumed from: {problem}")
    return str(path)


def newest_valid_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The most recently written checkpoint that loads; broken ones are skipped with a warning."""
    candidates = sorted(
        checkpoint_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        print(f"[lit_ft] warning: skipping {path}: {problem}", file=sys.stderr, flush=True)
    return None


def checkpoint_problem(path: Path) -> str | None:
    """None if `path` loads as a lit_ft checkpoint with weights_only=True, else what is wrong."""
    try:
        # mmap: only the index is read, so checking a multi-GB file is cheap.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # truncated zip, wrong format, disallowed pickle...
        return f"it is truncated or not a checkpoint ({type(err).__name__}: {err})"
    if "state_dict" not in checkpoint or "loops" not in checkpoint:
        return "it holds no training state (state_dict/loops missing)"
    return None


def check_same_data(ckpt_path: str | None, current: dict[str, Any], force: bool) -> None:
    """Refuse to resume onto different data, tokenizer or sampler seed (unless forced).

    The checkpoint's data position counts examples of *its* data; on other data it would skip
    or repeat examples silently.
    """
    if ckpt_path is None:
        return
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    saved = next(
        (
            v["fingerprint"]
            for v in checkpoint.values()
            if isinstance(v, dict) and "fingerprint" in v
        ),
        None,
    )
    if saved is None:
        return  # not written by a lit_ft datamodule: nothing to compare
    changed = [key for key in current if saved.get(key) != current[key]]
    if not changed:
        return
    what = ", ".join(f"{key} ({saved.get(key)} -> {current[key]})" for key in changed)
    if force:
        print(
            f"[lit_ft] warning: force_resume=true: resuming although {what} changed",
            file=sys.stderr,
            flush=True,
        )
        return
    raise LitFtError(
        f"refusing to resume from {ckpt_path}: {what} changed since it was saved, so its data "
        "position would skip or repeat examples. Resume with the original data, tokenizer and "
        "seed, start fresh (drop ckpt_path), or set force_resume=true to resume anyway"
    )


def check_same_model(ckpt_path: str | None, hf_config, spec) -> None:
    """Refuse a checkpoint whose weights do not fit this run's model, naming both models.

    Lightning would fail deep inside `load_state_dict` with a size-mismatch traceback, after
    the data and the model were loaded. The shapes here come from the model built on the meta
    device (no memory, no weights read).
    """
    if ckpt_path is None:
        return
    import copy

    from lit_ft.peft_adapter import CHECKPOINT_KEY
    from lit_ft.tasks import get_task

    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    if CHECKPOINT_KEY in checkpoint:  # adapter-only: AdapterCheckpoint checks it on load
        return
    hf_config = copy.deepcopy(hf_config)
    if spec.pad_vocab_to_multiple_of:  # run.py pads the embeddings after building the model
        multiple = spec.pad_vocab_to_multiple_of
        hf_config.vocab_size = -(-hf_config.vocab_size // multiple) * multiple
    with torch.device("meta"):
        model = get_task(spec.task).model_class().from_config(hf_config)
    name = spec.name_or_path
    saved = {k.removeprefix("model."): v.shape for k, v in checkpoint["state_dict"].items()}
    here = {k: v.shape for k, v in model.state_dict().items()}
    differ = sorted(k for k in saved.keys() & here.keys() if saved[k] != here[k])
    missing, extra = sorted(here.keys() - saved.keys()), sorted(saved.keys() - here.keys())
    if not (differ or missing or extra):
        return
    info = checkpoint.get("lit_ft", {})
    theirs = info.get("model_spec", {}).get("name_or_path", "an unknown model")
    their_type = info.get("hf_config", {}).get("model_type", "?")
    if differ:
        k = differ[0]
        detail = f"{k} is {tuple(saved[k])} there and {tuple(here[k])} here"
    else:
        detail = f"parameters missing there: {missing[:3]}; only there: {extra[:3]}"
    their_config, our_config = info.get("hf_config", {}), hf_config.to_dict()
    sizes = [  # the architecture numbers that differ, e.g. "n_embd 32 there, 64 here"
        f"{key} {their_config[key]} there, {value} here"
        for key, value in our_config.items()
        if isinstance(value, int) and key in their_config and their_config[key] != value
    ]
    if sizes:
        detail += f" ({'; '.join(sizes[:3])})"
    raise LitFtError(
        f"refusing to resume from {ckpt_path}: it holds another model ('{theirs}', "
        f"{their_type}) than this run's '{name}' ({model.config.model_type}): {detail}. Resume "
        "with the model it was trained with, or start fresh (drop ckpt_path)"
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint writes that never leave a half-written file where a good one stood.

    The file is written to a temporary name in the target directory, flushed and fsynced,
    then renamed over the target (`os.replace` is atomic on POSIX). A crash mid-save leaves the
    previous checkpoint intact and removes the temporary file. Loads use weights_only=True:
    lit_ft checkpoints hold only plain containers and tensors.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except OSError as err:  # disk full, quota, permissions: the user's to fix
            free_mb = shutil.disk_usage(path.parent).free / 2**20
            kept = "the previous one is kept" if path.exists() else "no earlier one was there"
            raise LitFtError(
                f"could not save checkpoint {path}: {err.strerror or err} ({free_mb:,.0f} MB "
                f"free on its disk); {kept}. Free space (or set paths.output_dir elsewhere) "
                "and resume with ckpt_path=last"
            ) from err
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except Exception as err:
            raise LitFtError(f"checkpoint '{path}' cannot be loaded: {err}") from err


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (the directory entry), where the OS allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("lit_ft_rng_per_rank")
        if states and len(states) == trainer.world_size:
            self._own_rank_state = states[trainer.global_rank]  # preferred at on_train_start

    def on_train_start(self, trainer, pl_module) -> None:
        state = self._own_rank_state or self._to_restore
        if state is not None:
            restore_rng(state)
        self._to_restore = self._own_rank_state = None


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
