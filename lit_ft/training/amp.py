"""Mixed precision that clips gradients with the fused optimizer, on CPU and GPU.

Lightning's `MixedPrecision` refuses gradient clipping for any optimizer that handles AMP
scaling in its own step (torch's fused AdamW is one), so lit_ft's defaults on bf16 hardware
(bf16-mixed, fused AdamW, clipping at 1.0) would stop at the first optimizer step. The fused
kernel is worth keeping: it updates every tensor in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType

from lit_ft.compat import run_before_optimizer_step_hooks
from lit_ft.config import to_plain
from lit_ft.log import say
from lit_ft.model.precision import resolve_precision
from lit_ft.training.checkpoint import AtomicCheckpointIO


class ClippingMixedPrecision(MixedPrecision):
    """Lightning's `MixedPrecision`, with clipping allowed for every optimizer.

    bf16-mixed has no loss scaler: the gradients are the true ones, so clipping them is valid
    whatever the optimizer. Under 16-mixed the gradients are unscaled right after the backward
    pass, for every optimizer (torch's AMP recipe), so the `on_before_optimizer_step` hooks
    (gradient-norm logging, the NaN stop) and clipping see true gradients. `GradScaler.step`
    then passes the fused kernel no scale (already unscaled) and the inf/NaN flag, so a step
    whose gradients overflowed is still skipped and the scale lowered.
    """

    def optimizer_step(self, optimizer, model, closure, **kwargs: Any) -> Any:
        if self.scaler is None:  # bf16: no scaler, nothing to unscale
            return super().optimizer_step(optimizer, model=model, closure=closure, **kwargs)
        closure_result = closure()
        # automatic optimization returns None when training_step skipped the backward
        skipped = closure_result is None and model.automatic_optimization
        if not skipped:
            self.scaler.unscale_(optimizer)
        run_before_optimizer_step_hooks(self, model, optimizer)
        if skipped:
            return closure_result
        step_output = self.scaler.step(optimizer, **kwargs)
        self.scaler.update()
        return step_output

    def clip_gradients(
        self, optimizer, clip_val=0.0, gradient_clip_algorithm=GradClipAlgorithmType.NORM
    ) -> None:
        # Unscaled by now (see optimizer_step): clip exactly as in fp32.
        Precision.clip_gradients(self, optimizer, clip_val, gradient_clip_algorithm)


def autocast_device(accelerator: str) -> str:
    """The autocast device type for a Trainer's `accelerator`, as Lightning picks it."""
    accelerator = str(accelerator)
    if accelerator in ("cpu", "mps"):
        return accelerator
    if accelerator in ("gpu", "cuda") or torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"


def precision_plugins(precision: str, accelerator: str, strategy: Any) -> list:
    """`[ClippingMixedPrecision]` for 16-/bf16-mixed under the single-device, DDP and FSDP2
    strategies; [] otherwise (pass `precision` to the Trainer). FSDP and DeepSpeed bring
    precision plugins of their own, which lit_ft keeps. FSDP2 (Lightning's
    ModelParallelStrategy) takes Lightning's plain `MixedPrecision`, which refused clipping
    with the fused AdamW: `trainer=fsdp2` stopped at step 1 wherever `auto` picks bf16-mixed."""
    from lit_ft.model.fsdp2 import is_fsdp2

    if precision not in ("16-mixed", "bf16-mixed"):
        return []
    target = strategy.get("_target_", "") if isinstance(strategy, dict) else str(strategy)
    if not is_fsdp2(strategy) and any(name in target.lower() for name in ("fsdp", "deepspeed")):
        return []
    return [ClippingMixedPrecision(precision, autocast_device(accelerator))]


@dataclass
class PrecisionChoice:
    flag: str | None  # for Trainer(precision=...); None when a plugin carries it
    plugins: list  # checkpoint IO, and lit_ft's mixed precision where it applies
    text: str  # "bf16-mixed (the CPU has avx512_bf16)"


def choose_precision(trainer_cfg) -> PrecisionChoice:
    """`auto` resolved for this machine (printed, so it is never a surprise). bf16-/16-mixed
    come as lit_ft's plugin (clipping with the fused AdamW); Lightning refuses a precision
    plugin and a `precision` flag together, so it is one or the other."""
    precision, why = resolve_precision(trainer_cfg.precision, trainer_cfg.accelerator)
    say(f"precision {precision} ({why})")
    amp = precision_plugins(precision, trainer_cfg.accelerator, to_plain(trainer_cfg)["strategy"])
    flag = None if amp else precision
    return PrecisionChoice(flag, [AtomicCheckpointIO(), *amp], f"{precision} ({why})")
