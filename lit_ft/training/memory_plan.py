"""The run's memory plan: the peak estimate for this job (lit_ft/training/memory_estimate.py)
and the decision `model.gradient_checkpointing=auto` leaves to it, taken from the estimates
with and without checkpointing against the memory free for the run. Printed by the
pre-flight summary (lit_ft/observe/plan.py), which only prints."""

from __future__ import annotations

from functools import partial

from lit_ft.model.chunked_loss import output_layer, unwrapped
from lit_ft.model.fsdp2 import is_fsdp2
from lit_ft.model.peft import enable_checkpointing
from lit_ft.tasks.base import VOCABULARY_LOGITS
from lit_ft.training.memory_estimate import (
    MemoryEstimate,
    checkpointing_choice,
    estimate_memory,
    free_bytes,
)


def plan_memory(cfg, task, model, world_size: int, precision: str) -> MemoryEstimate:
    """The estimate the run should peak at; with `auto`, gradient checkpointing is switched
    on here when the estimate without it does not fit (its reason in `.checkpointing`)."""
    import torch

    choice, per_row = task.loss_choice, task.sequences_per_row
    head = output_layer(model)
    per_token_logits = task.auto_class in VOCABULARY_LOGITS and head is not None
    estimate = partial(
        estimate_memory,
        model,
        batch_size=cfg.data.batch_size * per_row,  # dpo: b pairs are 2b sequences
        seq_len=task.sequence_length,  # grpo: prompt + completion
        mixed_precision="mixed" in precision,
        chunk_tokens=choice.chunk_tokens if choice is not None and choice.chunked else None,
        vocab=head.weight.shape[0] if per_token_logits else None,
        held=task.held_models(),
        shards=world_size if is_fsdp2(cfg.trainer.get("strategy")) else 1,
    )
    setting = cfg.model.gradient_checkpointing
    without, with_it = estimate(gradient_checkpointing=False), estimate(gradient_checkpointing=True)
    on_cuda = torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda")
    # CPU processes of one host share its memory; a GPU process has its device
    here = 1 if on_cuda else max(world_size // max(int(cfg.trainer.get("num_nodes", 1)), 1), 1)
    free = free_bytes(on_cuda, here) if setting == "auto" else None
    checkpointing, why = checkpointing_choice(setting, without, with_it, free)
    if setting == "auto" and checkpointing:
        enable_checkpointing(unwrapped(model))
    chosen = with_it if checkpointing else without
    chosen.checkpointing = why
    return chosen
