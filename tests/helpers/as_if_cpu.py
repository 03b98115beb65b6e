"""Run lit_ft's CLI as if this CPU had (or lacked) bf16 units, so a test can decide what
`trainer.precision=auto` picks instead of inheriting the host's answer.

    python tests/helpers/as_if_cpu.py avx512_bf16 -- <lit_ft.run overrides>
    python tests/helpers/as_if_cpu.py none -- <lit_ft.run overrides>

From a test: `run_as_if("none", overrides)` (a subprocess; its output captured).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

import lit_ft.model.precision


def run_as_if(flags: str, overrides: list[str], timeout: float = 900):
    """`python -m lit_ft.run <overrides>` in a subprocess, on a CPU with (or without) `flags`;
    the `subprocess.CompletedProcess`, its output captured as text."""
    from helpers.processes import run_in_own_group  # not when this file runs as the script

    return run_in_own_group(
        [sys.executable, __file__, flags, "--", *overrides],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        timeout=timeout,
    )


def main() -> None:
    flags, sep, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
    assert sep == "--", __doc__
    lit_ft.model.precision.cpu_flags = lambda: set() if flags == "none" else set(flags.split(","))
    torch.cuda.is_available = lambda: False  # the CPU's answer, whatever the host has
    from lit_ft.run import main as run_main

    sys.argv = ["lit_ft.run", *overrides]
    run_main()


if __name__ == "__main__":
    main()
