"""Speed settings that change no math: `torch.compile` done the Lightning-compatible way.

`compile.enabled=true` compiles the Hugging Face model in place with `nn.Module.compile()`:
the module's `state_dict` keys stay the same (no `_orig_mod.` prefix), so checkpoints,
resumption and the export are unchanged, and Lightning sees an ordinary module. The first
steps pay the compilation (tens of seconds for GPT-2 on a GPU, minutes on a small CPU),
so it pays for long runs: it is off by default.
"""

from __future__ import annotations

import logging

from lit_ft.problems import Problems

log = logging.getLogger(__name__)


def compile_model(
    model,
    enabled: bool = False,
    backend: str = "inductor",
    mode: str | None = None,
    dynamic: bool | None = None,
):
    """Compile `model` in place when enabled; return it."""
    if enabled:
        log.info("torch.compile: backend=%s mode=%s dynamic=%s", backend, mode, dynamic)
        model.compile(backend=backend, mode=mode, dynamic=dynamic)
    return model


def compile_problems(compile_cfg) -> Problems:
    problems = Problems()
    problems.boolean("compile.enabled", (compile_cfg or {}).get("enabled", False))
    return problems
