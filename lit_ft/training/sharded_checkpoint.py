"""Reading trainer=fsdp2's sharded checkpoints (directories) in one process, a few tensors at a
time: the resume checks, `python -m lit_ft.export` and the end-of-run export use it.

A directory checkpoint holds torch.distributed.checkpoint's `.metadata` and shard files (each
tensor's pieces, as the ranks held them) and Lightning's `meta.pt` (everything but the weights
and optimizer states). `read_sharded` gives the same dict a `.ckpt` file gives, with the
weights as meta-device tensors of their full shapes (what the checks compare); `weight_groups`
then loads the real tensors, whole, a group of at most `max_bytes` at a time: the largest
memory the export needs is one group, not the model.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
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


def weight_groups(
    path: str | Path, names: list[str], max_bytes: int
) -> Iterator[dict[str, torch.Tensor]]:
    """The named weights, whole and on the CPU, in groups of at most `max_bytes` (a tensor
    larger than that is a group of its own), in the order given."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint import load as load_sharded

    entries = _tensor_entries(Path(path))
    group: list[str] = []
    size = 0
    for name in [*names, None]:
        nbytes = 0
        if name is not None:
            shape, dtype = entries[name]
            nbytes = torch.Size(shape).numel() * dtype.itemsize
        if group and (name is None or size + nbytes > max_bytes):
            tensors = {n: torch.empty(entries[n][0], dtype=entries[n][1]) for n in group}
            # one process, no process group: the shards of every rank are read from disk
            # (torch warns that it "assumes" this when no group exists; it is what we ask)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "torch.distributed is disabled")
                load_sharded(
                    {"state_dict": tensors},
                    storage_reader=FileSystemReader(str(path)),
                    no_dist=True,
                )
            yield tensors
            group, size = [], 0
        if name is not None:
            group.append(name)
            size += nbytes
