"""Sharded strategies: FSDP's wrapping unit derived from the model, DeepSpeed's requirements.

FSDP shards parameters per "unit"; the natural unit of a transformer is one block (GPT2Block,
LlamaDecoderLayer, ...). Every Hugging Face model names its blocks in `_no_split_modules`
(the classes `device_map="auto"` keeps whole), so the policy reads them from the model it is
asked to wrap: `trainer=fsdp` works for any model without naming its block class.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from torch import nn

from lit_ft.compat import no_split_module_names, wrap_policy_decided_at_wrap
from lit_ft.errors import LitFtError


def block_classes(root: nn.Module) -> set[type[nn.Module]]:
    """The classes of `root`'s submodules that its Hugging Face models list as blocks."""
    names = no_split_module_names(root)
    found = {type(m) for m in root.modules() if type(m).__name__ in names}
    if not found:
        raise LitFtError(
            f"trainer=fsdp: the model ({type(root).__name__}) names no transformer block class "
            "(_no_split_modules is empty), so there is nothing to wrap; use trainer=ddp"
        )
    return found


def transformer_block_policy():
    """FSDP's wrap policy over the model's own block classes, found when FSDP wraps it."""
    return wrap_policy_decided_at_wrap(block_classes)


def strategy_target(strategy: Any) -> str:
    """`trainer.strategy`'s class path (a config node) or its name (a string like "ddp")."""
    return str(strategy.get("_target_", "") if hasattr(strategy, "get") else strategy)


def notebook_problems(strategy: Any, devices: Any, num_nodes: Any) -> list[str]:
    """What a run started from a Jupyter notebook cannot do: several processes. Lightning's
    DDP starts ranks 1..N-1 by running the script again, which a notebook has not (it
    refuses `ddp` in an interactive session), and its fork-based `ddp_notebook` runs only
    `fit` in the children, while a lit_ft run also validates, tests and exports around it."""
    target = strategy_target(strategy).lower()
    several = any(name in target for name in ("ddp", "fsdp", "deepspeed"))
    several = several or (isinstance(devices, int) and devices > 1)
    several = several or (isinstance(num_nodes, int) and num_nodes > 1)
    if not several:
        return []
    return [
        "several processes (trainer.strategy / devices / num_nodes) cannot start from a "
        "notebook: run the same overrides as a script, e.g. in a cell "
        "`!python -m lit_ft.run trainer=ddp trainer.devices=2 ...`, then read its "
        "results.json; in the notebook train on one device"
    ]


def strategy_problems(strategy: Any, accelerator: str, export: bool = False) -> list[str]:
    """What keeps `trainer.strategy` from running here (for validate_config)."""
    import torch

    target = strategy_target(strategy).lower()
    problems = []
    if "deepspeed" in target:
        if importlib.util.find_spec("deepspeed") is None:
            problems.append(
                "trainer.strategy is DeepSpeed but the deepspeed package is not installed: "
                "pip install 'lit-ft[deepspeed]' (or use trainer=fsdp / trainer=ddp)"
            )
        # (trainer.accelerator=gpu without a GPU is reported on its own already)
        if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
            problems.append(
                "trainer.strategy is DeepSpeed, which needs CUDA GPUs; torch sees none "
                "(trainer=ddp trainer.accelerator=cpu runs on CPUs)"
            )
    if "deepspeed" in target and export:
        problems.append(
            "trainer.strategy is DeepSpeed, whose checkpoints are sharded directories that "
            "lit_ft does not export: set export=false, then convert with Lightning's "
            "convert_zero_checkpoint_to_fp32_state_dict and run python -m lit_ft.export on it"
        )
    if ("fsdpstrategy" in target or target == "fsdp") and (
        accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    ):
        problems.append(
            "trainer.strategy is FSDP, which Lightning runs on CUDA GPUs only; torch sees none "
            "(trainer=ddp trainer.accelerator=cpu runs on CPUs)"
        )
    return problems


def shards_weights(trainer) -> bool:
    """FSDP leaves each rank a shard of the weights: export from the checkpoint instead
    (FSDP's `state_dict_type: full` file holds whole weights; fsdp2's directory is read a
    file's worth at a time). DeepSpeed runs have export off."""
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    return isinstance(trainer.strategy, FSDPStrategy | ModelParallelStrategy)
