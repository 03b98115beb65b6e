"""`trainer.precision=auto`: bf16 mixed precision where the hardware computes bf16, else fp32.

bf16 without hardware support is emulated and far slower than fp32 (measured on a 2-core AMD
EPYC without avx512_bf16: a 2048x2048 bf16 matmul ran at 0.3 GFLOP/s against 140 GFLOP/s in
fp32), so "auto" checks instead of assuming.
"""

from __future__ import annotations

from pathlib import Path

from lit_ft.problems import Problems

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags: the first `flags : ...` line of /proc/cpuinfo."""
    try:
        text = cpuinfo.read_text()
    except OSError:  # not Linux: no cheap way to know, assume none
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def resolve_precision(requested: str, accelerator: str) -> tuple[str, str]:
    """The Lightning precision to use, and why (printed, so the choice is never a surprise)."""
    if str(requested) != "auto":
        return str(requested), "as configured"
    import torch

    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if on_gpu:
        if torch.cuda.is_bf16_supported():
            return "bf16-mixed", f"{torch.cuda.get_device_name()} computes bf16"
        return "32-true", f"{torch.cuda.get_device_name()} has no bf16 support"
    found = sorted(set(CPU_BF16_FLAGS) & cpu_flags())
    if found:
        return "bf16-mixed", f"the CPU has {', '.join(found)}"
    return "32-true", f"the CPU has none of {', '.join(CPU_BF16_FLAGS)} (bf16 would be emulated)"


def precision_problem(requested: str, accelerator: str) -> str | None:
    """Why this hardware cannot run `requested` (None when it can), for validate_config.

    Lightning does not refuse these itself: on CPU it turns 16-mixed into bf16-mixed with a
    warning (emulated on most CPUs, see above), and on a GPU without bf16 it fails mid-run.
    """
    import torch

    requested, accelerator = str(requested), str(accelerator)
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        return f"trainer.accelerator={accelerator} but torch sees no CUDA GPU; use auto or cpu"
    if requested in ("16-mixed", "16") and not on_gpu:
        return (
            f"trainer.precision={requested} needs a CUDA GPU (fp16 autocast does not run on CPU); "
            "use auto, 32-true, or bf16-mixed if the CPU has avx512_bf16/AMX"
        )
    gpu_ready = on_gpu and torch.cuda.is_available()
    if requested.startswith("bf16") and gpu_ready and not _gpu_computes_bf16():
        return (
            f"trainer.precision={requested}: {torch.cuda.get_device_name()} does not compute "
            "bf16 (Ampere or newer does); use 16-mixed or auto"
        )
    if requested == "transformer-engine":
        import importlib.util

        if importlib.util.find_spec("transformer_engine") is None:
            return "trainer.precision=transformer-engine needs the transformer_engine package"
    return None


def _gpu_computes_bf16() -> bool:
    import torch

    return torch.cuda.is_bf16_supported(including_emulation=False)


# What Lightning's `Trainer(precision=...)` takes, plus lit_ft's `auto`.
PRECISIONS = {
    "32",
    "32-true",
    "16",
    "16-mixed",
    "bf16",
    "bf16-mixed",
    "16-true",
    "bf16-true",
    "64",
    "64-true",
    "auto",
    "transformer-engine",
}


def precision_problems(trainer) -> Problems:
    problems = Problems()
    known = str(trainer.precision) in PRECISIONS
    problems.need(
        known,
        f"trainer.precision='{trainer.precision}' is unknown; "
        f"use one of {', '.join(sorted(PRECISIONS))}",
    )
    if known:
        problems.add(precision_problem(trainer.precision, trainer.accelerator))
    return problems
