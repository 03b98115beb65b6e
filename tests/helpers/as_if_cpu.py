"""Run lit_ft's CLI as if this CPU had (or lacked) bf16 units, so a test can decide what
`trainer.precision=auto` picks instead of inheriting the host's answer.

    python tests/helpers/as_if_cpu.py avx512_bf16 -- <lit_ft.run overrides>
    python tests/helpers/as_if_cpu.py none -- <lit_ft.run overrides>
"""

from __future__ import annotations

import sys

import torch

import lit_ft.model.precision


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
