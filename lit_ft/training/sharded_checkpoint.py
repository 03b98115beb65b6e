"""Reading trainer=fsdp2's sharded checkpoints (directories) in one process, a few tensors at a
time: the resume checks, `python -m lit_ft.export` and the end-of-run export use it.

A directory checkpoint holds torch.distributed.checkpoint's `.metadata` and shard files (each
tensor's pieces, as the ranks held them) and Lightning's `meta.pt` (everything but the weights
and optimizer states). `read_sharded` gives the same dict a `.ckpt` file gives, with the
weights as meta-device tensors of their full shapes (what the checks compare; the export's
shard plan sizes its files from them); `read_weights` then loads the named tensors, whole:
the export reads one output file's worth at a time, so its memory is one file, not the model.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

META_FILE = "meta.pt"  # Lightning's name for the non-tensor part of the checkpoint
WEIGHTS = "state_dict."  # how the strategy's flattened keys start: state_dict.model.<name>


def is_sharded_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / META_FILE).is_file() and (path / ".metadata").is_file()


def is_checkpoint_path(path: Path) -> bool:
    """A checkpoint file, or trainer=fsdp2's checkpoint directory."""
    return path.is_file() or is_sharded_checkpoint(path)


def _tensor_entries(path: Path) -> dict[str, Any]:
    """name -> (full size, dtype) of every weight, from the checkpoint's own index."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    entries = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    return {
        key.removeprefix(WEIGHTS): (tuple(meta.size), meta.properties.dtype)
        for key, meta in entries.items()
        if key.startswith(WEIGHTS) and isinstance(meta, TensorStorageMetadata)
    }


def read_sharded(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict (loops, callbacks, lit_ft's entry, ...) with `state_dict` as
    meta-device tensors: names and full shapes, no weights read."""
    path = Path(path)
    checkpoint = torch.load(path / META_FILE, map_location="cpu", weights_only=True)
    checkpoint["state_dict"] = {
        name: torch.empty(size, dtype=dtype, device="meta")
        for name, (size, dtype) in _tensor_entries(path).items()
    }
    return checkpoint


def read_weights(path: str | Path, names: list[str]) -> dict[str, torch.Tensor]:
    """The named weights, whole and on the CPU, put together from every rank's shards."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint import load as load_sharded

    entries = _tensor_entries(Path(path))
    tensors = {n: torch.empty(entries[n][0], dtype=entries[n][1]) for n in names}
    # one process, no process group: the shards of every rank are read from disk
    # (torch warns that it "assumes" this when no group exists; it is what we ask)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled")
        load_sharded(
            {"state_dict": tensors}, storage_reader=FileSystemReader(str(path)), no_dist=True
        )
    return tensors
