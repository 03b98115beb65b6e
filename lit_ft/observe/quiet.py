"""Other libraries' console output that a lit_ft user does not need, switched off at its source.

What a user needs is printed once in lit_ft's own voice (lit_ft.log.say): the device
and precision, the data's size, the steps. The libraries' own lines say it again, differently:

- Lightning's INFO lines ("GPU available: False, used: False", "Seed set to 42", "`Trainer.fit`
  stopped: `max_steps=2` reached", "`weights_only` was not set" on a preemption save) reach
  Hydra's handlers, which print them with a timestamp into the console and run.log. lit_ft
  prints the precision (with the device it chose), the seed is in config.yaml, and the
  progress line shows the last step. Lightning's warnings (level WARNING) still show.
- matplotlib's "generated new fontManager" (INFO, once per machine, when the plots first run).
- datasets' and transformers' progress bars ("Tokenizing train", "Loading weights", "Writing
  model shards"): in a file or a pipe each redraw is a carriage return, so a log holds lines
  like `0%|...\r100%|...`. On a terminal they stay, where they redraw in place.
- transformers' load report (a table of newly initialized weights, with terminal escape codes):
  on a terminal it stays; in a file, transformers' messages below ERROR are dropped.
- Two deprecation warnings raised inside libraries about their own calls, nothing a user can
  change: Lightning 2.6's `_pytree.py` uses `isinstance(treespec, LeafSpec)`, deprecated by
  torch 2.13; peft's LoRA set-up calls transformers' `is_gradient_checkpointing`, deprecated by
  transformers 5.
"""

from __future__ import annotations

import logging
import sys
import warnings

LIBRARY_INFO_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "matplotlib")
LIBRARY_DEPRECATIONS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"`is_gradient_checkpointing` is deprecated",
)


def quiet_libraries(on_terminal: bool | None = None) -> None:
    """Switch the output above off (idempotent). `on_terminal`: None reads stderr, where the
    libraries write their bars and messages."""
    if on_terminal is None:  # a notebook's output redraws bars in place as a terminal does
        on_terminal = sys.stderr.isatty() or "ipykernel" in sys.modules
    for name in LIBRARY_INFO_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in LIBRARY_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message)
    if on_terminal:
        return
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
