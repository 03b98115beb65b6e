"""The memory a run takes, measured: the peak of the training, for results.json and the
progress line.

On a GPU it is `torch.cuda.max_memory_allocated` (tensors only: the allocator's cache and the
CUDA context come on top), reset when training starts. On a CPU it is the process's peak
resident set size (`getrusage`'s ru_maxrss): the whole process's high-water mark, Python,
libraries and the loaded data included, and never reset, so an evaluation before training
counts in it too.
"""

from __future__ import annotations

import resource
import sys

import torch


def on_gpu() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def peak_bytes() -> int:
    """The peak so far: GPU tensors (since the last reset), else the process's peak RSS."""
    if on_gpu():
        return torch.cuda.max_memory_allocated()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes


def current_bytes() -> int:
    """What is held now: GPU tensors, else the process's resident set (/proc/self/statm)."""
    if on_gpu():
        return torch.cuda.memory_allocated()
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()
    except OSError:  # no /proc (macOS): the peak is the best figure there is
        return peak_bytes()


def reset_peak() -> None:
    """Start the GPU peak afresh (a CPU's peak RSS cannot be reset)."""
    if on_gpu():
        torch.cuda.reset_peak_memory_stats()


def how_measured() -> str:
    if on_gpu():
        return "torch.cuda.max_memory_allocated during training"
    return "peak RSS of the whole process (getrusage), not reset"


def gigabytes(n: int) -> str:
    """e.g. 1,288,490,188 bytes -> '1.2 GB'; under 1 GB in MB ('823 MB')."""
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:,.0f} MB"


def short(n: int) -> str:
    """The progress line's field, 4-5 characters: '1.2G', '823M'."""
    return f"{n / 2**30:.1f}G" if n >= 2**30 else f"{n / 2**20:.0f}M"
