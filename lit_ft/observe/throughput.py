"""Throughput and MFU for any Auto model: tokens/s, samples/s, FLOP/s and model FLOPs utilization.

FLOPs per token are counted once, on a copy of the model built on the meta device (no memory,
no compute) with Lightning's `measure_flops` (torch's FlopCounterMode over forward + backward
at the training sequence length). A LoRA model is rebuilt there as base model + the same
adapters, with the base frozen as in training: frozen weights still cost their forward matmul
and the gradient with respect to their input, only their weight gradient is skipped. A model
that cannot be built there falls back to the usual count per token: 2 FLOPs per parameter for
the forward, 2 for the input gradient, 2 more for the weight gradient of trainable ones, so
4 x frozen + 6 x trainable parameters (6 x parameters when everything trains).

    MFU = tokens/s x FLOPs per token / peak FLOP/s of one device

tokens/s and MFU always come from the same tokens over the same seconds (`rates`). Tokens are
the non-padding ones (attention-mask sum), so padding never counts as useful work. The peak is
at the dtype the matmuls run in (`matmul_dtype`: bf16 under bf16-mixed/bf16-true, fp16 under
16-mixed/16-true, else fp32): from Lightning's table of GPUs, and on a CPU, which has no table,
the measured rate of a large matmul in that dtype (`matmul_flops_per_s`; on an AMX CPU bf16
runs ~4x fp32's rate, so an fp32 peak would read MFU ~4x too high). `peak_flops_per_s`
overrides either.

No per-step host sync: token counts stay on the device and are read every `log_every_n_steps`
optimizer steps, the only moments the clock is read against finished GPU work. Validation time
inside training is left out of the windows.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lit_ft.observe.tokens import real_tokens

log = logging.getLogger(__name__)


def process_start_time() -> float | None:
    """Wall-clock time (time.time()) at which this process started, or None where unknown; for
    the benchmarks, which time other frameworks' processes too (a run's own time to first step
    counts from train()'s start instead).

    Linux: field 22 of /proc/self/stat is the start in clock ticks after boot, on the same
    clock as CLOCK_BOOTTIME, so the age is that clock now minus the start; not via /proc/stat's
    `btime`, a wall-clock boot time in whole seconds that a container's clock can put far off.
    """
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rpartition(")")[2].split()[19])  # field 22; the split starts at field 3
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):  # AttributeError: not Linux
        return None
    return time.time() - age if age >= 0 else None


def count_flops_per_token(model: torch.nn.Module, seq_len: int) -> tuple[float, str]:
    """Training FLOPs (forward + backward) per token at `seq_len`, and how they were counted."""
    from lightning.fabric.utilities.throughput import measure_flops

    try:
        meta_model = _meta_copy(model)
        ids = torch.zeros((1, seq_len), dtype=torch.long, device="meta")
        # Every head gives logits (a classification head would refuse token labels), and
        # encoder-decoders need decoder inputs; the backward is taken from their sum.
        config = model.config
        decoder = {"decoder_input_ids": ids} if config.is_encoder_decoder else {}

        def forward():
            return meta_model(input_ids=ids, **decoder).logits.float().sum()

        flops = measure_flops(meta_model, forward, loss_fn=lambda total: total)
        if flops > 0:
            return flops / seq_len, "measured"
    except Exception as err:  # any model, any architecture: fall back rather than fail a run
        log.info(
            "FLOPs could not be measured on the meta device (%s); "
            "using 4 x frozen + 6 x trainable parameters",
            err,
        )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return 4.0 * frozen + 6.0 * trainable, "4 x frozen + 6 x trainable parameters"


def _meta_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same network on the meta device, with the same parameters frozen: a LoRA model is
    rebuilt as its base model wrapped with the same adapter config."""
    peft_config = getattr(model, "peft_config", None)
    base = model.get_base_model() if peft_config else model
    with torch.device("meta"):
        meta_model = type(base)(copy.deepcopy(base.config))
        if peft_config:
            from peft import get_peft_model

            adapter = copy.deepcopy(peft_config[model.active_adapter])
            meta_model = get_peft_model(meta_model, adapter)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    names = dict(model.named_parameters())
    for name, p in meta_model.named_parameters():
        # a parameter the copy names differently keeps the copy's own setting
        p.requires_grad_(name not in frozen if name in names else p.requires_grad)
    return meta_model


def matmul_dtype(precision: str) -> torch.dtype:
    """The dtype the matmuls run in under a Lightning precision: autocast and true half
    precision compute in bf16/fp16, everything else in fp32 (64-true in fp64)."""
    precision = str(precision)
    if precision.startswith("bf16") or precision == "transformer-engine":
        return torch.bfloat16
    if precision in ("16", "16-mixed", "16-true"):
        return torch.float16
    if precision in ("64", "64-true"):
        return torch.float64
    return torch.float32


def peak_flops(
    trainer: L.Trainer, configured: float | None
) -> tuple[float | None, str | None, str | None]:
    """Peak FLOP/s of one device at the dtype the matmuls run in, where the figure comes from
    (the configured value, else Lightning's GPU table, else the rate of a large matmul
    measured on this CPU) and that dtype's name."""
    dtype = matmul_dtype(getattr(trainer.precision_plugin, "precision", "32-true"))
    name = dtype_name(dtype)
    if configured:
        return float(configured), "configured", name
    device = trainer.strategy.root_device
    if device.type == "cpu":
        return matmul_flops_per_s(dtype), f"measured {name} matmul on this CPU", name
    from lightning.fabric.utilities.throughput import get_available_flops

    try:
        flops = get_available_flops(device, dtype)
    except Exception:  # a device missing from the table
        flops = None
    if flops is None:
        return None, f"{device} is not in Lightning's device table", name
    return float(flops), f"Lightning's device table ({name})", name


def matmul_flops_per_s(dtype: torch.dtype = torch.float32, size: int = 1024) -> float:
    """FLOP/s of a size x size matmul on the CPU with torch's threads (best of 5 rounds).

    A CPU's datasheet peak depends on clocks and vector units that Python cannot read, and
    no matmul reaches it; this is the practical ceiling, so CPU MFU reads as "share of what
    this CPU's best kernel does". About 0.3 s for fp32 on 2 cores (2 x 1024^3 = 2.1 GFLOP
    per product at ~130 GFLOP/s: 16 ms each, 3 per round)."""
    # A private generator: drawing from the global one would shift every later dropout mask
    # (and a resumed run's restored random state) just because MFU was measured.
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    a @ b  # warm-up: thread pool, kernel choice
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(3):
            a @ b
        best = min(best, (time.perf_counter() - started) / 3)
        if best > 1.0:  # an emulated dtype (bf16 without avx512_bf16/AMX): one round is enough
            break
    return 2 * size**3 / best


def dtype_name(dtype: torch.dtype) -> str:
    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    return names.get(dtype, str(dtype).removeprefix("torch."))


def rates(
    tokens: int,
    samples: int,
    seconds: float,
    flops_per_token: float | None,
    peak: float | None,
) -> dict[str, float]:
    """tokens/s, samples/s, FLOP/s and MFU of one window: the same tokens over the same
    seconds for all four (e.g. 51,200 tokens in 10 s at 1e6 FLOPs per token, peak 2e10:
    5,120 tok/s, 5.12e9 FLOP/s, MFU 0.256). A figure that cannot be computed is left out."""
    if seconds <= 0:
        return {}
    metrics = {"tokens_per_s": tokens / seconds, "samples_per_s": samples / seconds}
    if flops_per_token:
        metrics["flops_per_s"] = tokens * flops_per_token / seconds
        if peak:
            metrics["mfu"] = metrics["flops_per_s"] / peak
    return metrics


class ThroughputLogger(L.Callback):
    """Log throughput/{tokens_per_s, samples_per_s, flops_per_s, mfu} every N optimizer steps.

    The first `warmup_steps` optimizer steps (allocator warm-up, torch.compile) are left out of
    the summary that goes into results.json. `time_to_first_step_s` counts from `run_started`
    (a time.perf_counter() the run takes as train() begins; by default this callback's
    creation), so it can never exceed the run's wall time.
    """

    def __init__(
        self,
        log_every_n_steps: int = 10,
        warmup_steps: int = 2,
        peak_flops_per_s: float | None = None,
    ):
        self.run_started = time.perf_counter()
        self.log_every_n_steps = max(1, int(log_every_n_steps))
        self.warmup_steps = max(0, int(warmup_steps))
        self.configured_peak = peak_flops_per_s
        self.flops_per_token: float | None = None
        self.flops_method: str | None = None
        self.peak: float | None = None
        self.peak_source: str | None = None
        self.peak_dtype: str | None = None
        self.time_to_first_step_s: float | None = None
        self.last: dict[str, float] = {}
        self._window_tokens: torch.Tensor | int = 0
        self._window_samples = 0
        self._window_start: float | None = None
        self._window_first_step = 0
        self._paused_at: float | None = None
        self._paused = 0.0
        self._measured = {"tokens": 0, "samples": 0, "seconds": 0.0, "steps": 0}
        self._last_step = self._start_step = 0
        self._measuring = False

    # -- set-up ----------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        self.peak, self.peak_source, self.peak_dtype = peak_flops(trainer, self.configured_peak)
        self._last_step = self._start_step = trainer.global_step  # > 0 when resumed
        self._measuring = False
        self._restart_window(trainer.global_step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.flops_per_token is None:  # once, at the real sequence length
            model = getattr(pl_module, "model", pl_module)
            seq_len = int(batch["input_ids"].shape[-1])
            self.flops_per_token, self.flops_method = count_flops_per_token(model, seq_len)
            self._window_start = time.perf_counter()  # counting is not training time

    # -- validation inside training does not count ---------------------------------------
    def on_validation_start(self, trainer, pl_module) -> None:
        self._paused_at = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._paused_at is not None:
            self._paused += time.perf_counter() - self._paused_at
            self._paused_at = None

    # -- counting --------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._window_tokens = self._window_tokens + real_tokens(batch)  # stays on the device
        self._window_samples += int(batch["input_ids"].shape[0])
        step = trainer.global_step
        if step == self._last_step:  # inside a gradient-accumulation window
            return
        self._last_step = step
        if self.time_to_first_step_s is None:
            _synchronize(trainer)  # once: the first step really finished
            self.time_to_first_step_s = round(time.perf_counter() - self.run_started, 2)
        if step - self._start_step == max(1, self.warmup_steps) and not self._measuring:
            # Warm-up over (allocations, compilation): measure from here on.
            _synchronize(trainer)
            self._measuring = True
            self._restart_window(step)
        elif step - self._window_first_step >= self.log_every_n_steps:
            self._close_window(trainer, pl_module, step)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._measuring and trainer.global_step > self._window_first_step:
            self._close_window(trainer, pl_module, trainer.global_step)

    def _close_window(self, trainer, pl_module, step: int) -> None:
        _synchronize(trainer)
        seconds = time.perf_counter() - self._window_start - self._paused
        tokens = int(self._window_tokens)  # the one host read per window
        metrics = self._rates(tokens, self._window_samples, seconds)
        self.last = metrics
        for logger in trainer.loggers:
            logger.log_metrics({f"throughput/{k}": v for k, v in metrics.items()}, step=step)
        if self._measuring:
            self._measured["tokens"] += tokens
            self._measured["samples"] += self._window_samples
            self._measured["seconds"] += seconds
            self._measured["steps"] += step - self._window_first_step
        self._restart_window(step)

    def _restart_window(self, step: int) -> None:
        self._window_tokens, self._window_samples = 0, 0
        self._window_start, self._paused = time.perf_counter(), 0.0
        self._window_first_step = step

    def mfu_missing_reason(self) -> str | None:
        """Why MFU cannot be computed (None when it can, given a measured window)."""
        if not self.flops_per_token:
            return "FLOPs per token not counted yet"
        if not self.peak:
            return f"no peak FLOP/s ({self.peak_source or 'unknown device'})"
        return None

    def _rates(self, tokens: int, samples: int, seconds: float) -> dict[str, float]:
        return rates(tokens, samples, seconds, self.flops_per_token, self.peak)

    # -- results ---------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """For results.json: rates over the measured windows (warm-up excluded)."""
        m = self._measured
        found = self._rates(m["tokens"], m["samples"], m["seconds"])
        left_out = {}
        if "mfu" not in found:  # never a 0: the figure is absent, with the reason
            reason = self.mfu_missing_reason() or "no steps measured after the warm-up"
            left_out["mfu_left_out"] = reason
        return {
            **{k: _round(v) for k, v in found.items()},
            **left_out,
            "measured_steps": m["steps"],
            "warmup_steps_excluded": self.warmup_steps,
            "flops_per_token": _round(self.flops_per_token),
            "flops_counted_by": self.flops_method,
            "peak_flops_per_s": _round(self.peak),
            "peak_flops_from": self.peak_source,
            "peak_flops_dtype": self.peak_dtype,  # the dtype the matmuls run in
            "time_to_first_step_s": self.time_to_first_step_s,
        }


def _synchronize(trainer) -> None:
    if trainer.strategy.root_device.type == "cuda":
        torch.cuda.synchronize(trainer.strategy.root_device)


def _round(value: float | None) -> float | None:
    if value is None:
        return None
    return float(f"{value:.4g}")
