"""lit_ft: fine-tune Hugging Face Transformers models with PyTorch Lightning and Hydra.

import lit_ft
results = lit_ft.train_from_overrides(["trainer.max_steps=50"])
cfg = lit_ft.compose(["model=gpt2", "data=wikitext"]); lit_ft.train(cfg)
"""

from __future__ import annotations

from importlib import import_module

__version__ = "0.1.0"
__all__ = ["FineTuner", "LitFtError", "compose", "train", "train_from_overrides"]

# Resolved on first use: `python -m lit_ft.run` and `import lit_ft` stay light, and the run
# module is not imported twice.
_EXPORTS = {
    "compose": "lit_ft.config",
    "FineTuner": "lit_ft.finetuner",
    "LitFtError": "lit_ft.errors",
    "train": "lit_ft.run",
    "train_from_overrides": "lit_ft.run",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lit_ft' has no attribute {name!r}")
