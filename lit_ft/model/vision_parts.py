"""The parts of a vision-language model: what `model.freeze_vision_tower` freezes, what LoRA
adapts by default, and the pre-flight's parameter counts per part.

A VLM is an image encoder (the vision tower), a projector that maps its features into the
language model's embedding space, and the language model. Fine-tuning recipes (LLaVA's
second stage, TRL's VLM examples) usually keep the pretrained vision tower as it is and train
the projector and the language model; a projector left frozen by accident teaches the model
nothing new about images (LLaMA-Factory #6754). Parts are found by module names, which the
families share: LLaVA `vision_tower` / `multi_modal_projector` / `language_model`; Idefics3
and SmolVLM `vision_model` / `connector` / `text_model`; Qwen2-VL `visual` with its `merger`.
"""

from __future__ import annotations

import torch

VISION = ("vision_tower", "vision_model", "visual", "image_encoder", "vision_encoder")
PROJECTOR = ("multi_modal_projector", "connector", "merger", "mm_projector", "projector")
PARTS = ("vision tower", "projector", "language model")

# LoRA defaults by model type: the language model's attention projections (a regex over
# module names, so the vision tower's own q/v projections stay untouched) and the projector
# trained in full beside the adapters.
LORA_DEFAULTS = {
    "llava": (r".*language_model.*\.(q_proj|v_proj)", ["multi_modal_projector"]),
    "idefics3": (r".*text_model.*\.(q_proj|v_proj)", ["connector"]),
    "smolvlm": (r".*text_model.*\.(q_proj|v_proj)", ["connector"]),
}


def part_of(name: str) -> str:
    """E.g. 'model.visual.merger.mlp.0.weight' -> 'projector' (the merger sits inside the
    vision module but is the projector); 'model.vision_tower.x' -> 'vision tower'."""
    segments = name.split(".")
    if any(s in PROJECTOR for s in segments):
        return "projector"
    if any(s in VISION for s in segments):
        return "vision tower"
    return "language model"


def has_vision_tower(model: torch.nn.Module) -> bool:
    return any(part_of(name) == "vision tower" for name, _ in model.named_parameters())


def freeze_vision_tower(model: torch.nn.Module) -> int:
    """requires_grad off on the vision tower's parameters; how many were frozen."""
    frozen = 0
    for name, param in model.named_parameters():
        if part_of(name) == "vision tower":
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


def parts_text(model: torch.nn.Module) -> str:
    """E.g. 'vision tower 101,952 (frozen), projector 12,416 (trainable), language model
    811,072 (trainable)'; a part partly trained (LoRA) says how much."""
    counts = {part: [0, 0] for part in PARTS}
    for name, param in model.named_parameters():
        total, trainable = counts[part_of(name)]
        counts[part_of(name)] = [
            total + param.numel(),
            trainable + param.numel() * param.requires_grad,
        ]
    described = []
    for part, (total, trainable) in counts.items():
        if not total:
            continue
        state = (
            "frozen"
            if not trainable
            else "trainable"
            if trainable == total
            else f"{trainable:,} trainable"
        )
        described.append(f"{part} {total:,} ({state})")
    return ", ".join(described)
