"""`model.liger_kernel=true`: Liger's Triton kernels (RMSNorm, RoPE, SwiGLU, fused linear
cross-entropy, ...) swapped into a model of an architecture Liger supports.

Why optional: the kernels are Triton, so CUDA only, and `liger-kernel` is not a dependency.
Why it matters on a GPU: Liger's README reports ~60% less memory on Llama-3-8B, most of it
from never building the logits, plus faster norms and activations. lit_ft's own chunked loss
(lit_ft/model/chunked_loss.py) covers the logits on any device; with Liger on, its fused loss
takes over (the model's forward computes it) and lit_ft's stays off.

Checked before any work starts: the package and a CUDA device (config check); the model's
architecture once its config is known (`apply_liger`). Each refusal says what to change.
"""

from __future__ import annotations

import importlib.util

from lit_ft.errors import LitFtError
from lit_ft.problems import Problems


def liger_problems(model_cfg) -> Problems:
    """The rules of `model.liger_kernel` (asked for: the package and CUDA must be there)."""
    problems = Problems()
    enabled = model_cfg.get("liger_kernel", False)
    problems.boolean("model.liger_kernel", enabled)
    if enabled is not True:
        return problems
    if not liger_installed():
        problems.add(
            "model.liger_kernel=true needs the liger-kernel package: pip install liger-kernel "
            "(or set model.liger_kernel=false; lit_ft's chunked loss still avoids the logits)"
        )
    import torch

    if not torch.cuda.is_available():
        problems.add(
            "model.liger_kernel=true needs a CUDA GPU (Liger's kernels are Triton) and this "
            "machine has none; set model.liger_kernel=false"
        )
    return problems


def liger_installed() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def apply_liger(model) -> str:
    """Patch `model` (before LoRA wraps it) with every Liger kernel its architecture has;
    returns what was done, for the pre-flight summary."""
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    model_type = getattr(model.config, "model_type", None)
    apply = MODEL_TYPE_TO_APPLY_LIGER_FN.get(model_type)
    if apply is None:
        raise LitFtError(
            f"model.liger_kernel=true: Liger has no kernels for model_type '{model_type}'; "
            f"it covers {', '.join(sorted(MODEL_TYPE_TO_APPLY_LIGER_FN))}. Set "
            "model.liger_kernel=false (the chunked loss still avoids the full logits)"
        )
    apply(model=model)  # the instance's modules are patched in place, with Liger's defaults
    return f"Liger kernels applied for {model_type} (fused linear cross-entropy included)"
