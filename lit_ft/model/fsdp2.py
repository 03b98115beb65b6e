"""trainer=fsdp2: PyTorch's `fully_shard` (FSDP2) through Lightning's ModelParallelStrategy.

Every process holds 1/N of each parameter, its gradient and its AdamW moments (DTensors over a
one-dimensional data-parallel mesh of all N processes); each transformer block is one
`fully_shard` unit, so a block's whole weights exist only while it computes. GPT-2 124M on
4 GPUs: (4 + 4 + 8) x 124M / 4 = 496 MB of weights, gradients and AdamW per GPU against
1.98 GB under DDP.

Checkpoints are sharded: `step000100.ckpt/` is a directory in torch.distributed.checkpoint's
format (every rank writes its own shards) plus `meta.pt`, Lightning's loop, data and RNG state
with lit_ft's own entry, so a run resumes exactly on the same number of processes
(tests/test_fsdp2.py) and, re-sharded on load, on another (tests/test_elastic.py). A save
goes to a staging directory that replaces the old one only once complete: a crash mid-save
leaves the previous checkpoint whole.
`lit_ft.training.sharded_checkpoint` reads these directories tensor by tensor, which is how
the export writes `from_pretrained` shards without the whole model in one process's memory.

Runs on CUDA GPUs (NCCL) and on CPU processes (gloo: `trainer.accelerator=cpu
trainer.devices=2`, what the tests use).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lightning.pytorch.strategies import ModelParallelStrategy

from lit_ft.compat import set_data_parallel_size
from lit_ft.model.strategy import block_classes, strategy_target


class FullyShardedStrategy(ModelParallelStrategy):
    """ModelParallelStrategy with every process in the data-parallel (sharding) dimension and
    no tensor parallelism, and atomic directory checkpoints."""

    def __init__(self, **kwargs) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, **kwargs)

    def setup_environment(self) -> None:
        # Lightning's "auto" data-parallel size is the number of nodes (it pairs with tensor
        # parallelism inside a node); here every process shards: 1 node x 4 GPUs -> 4.
        set_data_parallel_size(self, self.num_nodes * self.num_processes)
        super().setup_environment()

    def save_checkpoint(self, checkpoint, filepath, storage_options=None) -> None:
        path = Path(self.broadcast(str(filepath)))
        staging = path.with_name(f".{path.name}.partial")
        previous = path.with_name(f".{path.name}.previous")
        if self.is_global_zero:
            shutil.rmtree(staging, ignore_errors=True)
        self.barrier("lit_ft_staging_clean")
        super().save_checkpoint(checkpoint, staging, storage_options)
        self.barrier("lit_ft_staging_written")
        if self.is_global_zero:  # swap in: the old directory goes only once the new is whole
            if path.exists():
                shutil.rmtree(previous, ignore_errors=True)
                path.rename(previous)
            staging.rename(path)
            shutil.rmtree(previous, ignore_errors=True)
        self.barrier("lit_ft_checkpoint_swapped")


def is_fsdp2(strategy_cfg) -> bool:
    """Whether `trainer.strategy` (its config) is trainer=fsdp2's."""
    return strategy_target(strategy_cfg).endswith("FullyShardedStrategy")


def fsdp2_problems(strategy, peft, model_cfg) -> list[str]:
    """What trainer=fsdp2 does not combine with (yet), said before any work starts."""
    if not is_fsdp2(strategy):
        return []
    problems = []
    if peft:
        problems.append(
            "trainer=fsdp2 with peft is not supported: the sharded export writes whole "
            "weights, not adapters; use trainer=ddp (LoRA's gradients are small) or drop peft"
        )
    if model_cfg.get("pad_vocab_to_multiple_of"):
        problems.append(
            "trainer=fsdp2 with model.pad_vocab_to_multiple_of is not supported: the sharded "
            "export does not crop the padded rows; set it to null"
        )
    return problems


def is_fully_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_model(model, mesh) -> None:
    """`fully_shard` each transformer block (the model's own `_no_split_modules` classes, as
    trainer=fsdp wraps them), then the rest of the model as the root unit."""
    from torch.distributed.fsdp import fully_shard

    blocks = tuple(block_classes(model))
    for module in model.modules():
        if isinstance(module, blocks):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
