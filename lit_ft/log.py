"""The one way lit_ft talks to the user: `[lit_ft] ...` lines, printed by rank zero only.

Every process of a DDP run executes the same code; without the rank check each line would
print once per process. The lines go through the `lit_ft.console` logger, whose filter passes
rank zero only (`RankZeroOnly`). Warnings go to stderr, so a redirected stdout keeps only
progress.
"""

from __future__ import annotations

import logging
import sys


class RankZeroOnly(logging.Filter):
    """Lets a record through on global rank zero only; `error()`'s lines (every rank's own
    failure) carry `all_ranks` and always pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "all_ranks", False):
            return True
        from lit_ft.distributed import is_global_zero

        return is_global_zero()


class _Console(logging.Handler):
    """stdout below WARNING, stderr from WARNING up, looked up at each line (so pytest's and
    Jupyter's replaced streams get it), flushed at once so the order with progress holds."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        print(self.format(record), file=stream, flush=True)


class _RunLogFiles(logging.Handler):
    """Hydra's run.log is a FileHandler on the root logger; the console already has the
    line, so it goes to the root's file handlers only (its console handler would print it
    a second time)."""

    def emit(self, record: logging.LogRecord) -> None:
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)


def _console_logger() -> logging.Logger:
    logger = logging.getLogger("lit_ft.console")
    logger.disabled = False  # a logging.config.dictConfig(disable_existing_loggers=True)
    if not logger.handlers:
        logger.setLevel(logging.INFO)
        logger.propagate = False  # its own console and run.log handlers, nothing twice
        logger.addFilter(RankZeroOnly())
        logger.addHandler(_Console())
        logger.addHandler(_RunLogFiles())
    return logger


def say(message: str) -> None:
    """A `[lit_ft]` line on stdout, from rank zero (and in run.log)."""
    _console_logger().info(f"[lit_ft] {message}")


def warn(message: str) -> None:
    """A `[lit_ft] warning:` line on stderr, from rank zero (and in run.log)."""
    _console_logger().warning(f"[lit_ft] warning: {message}")


def error(message: str) -> None:
    """The one line a user error ends a run with (`lit_ft: error: ...`), also in run.log."""
    _console_logger().error(f"lit_ft: error: {message}", extra={"all_ranks": True})


class _DropMessages:
    """A logging filter that drops records containing any of `needles`."""

    def __init__(self, *needles: str) -> None:
        self.needles = needles

    def filter(self, record) -> bool:
        return not any(needle in record.getMessage() for needle in self.needles)


def quiet_known_noise() -> None:
    """Silence library messages that are wrong or useless for a lit_ft run (idempotent).

    Only what has no switch at its source is filtered here; the rest is avoided where it
    arises (the best checkpoint's "could not find the monitored key": BestCheckpoint waits for
    a validation; transformers' `loss_type=None`: lit_ft.model.build sets the loss type).

    - Lightning's mid-epoch-resume warning: it assumes the loader is not resumable; ours
      resumes through the datamodule's state (lit_ft/data/sampler.py). Lightning stays quiet
      only for a loader with state_dict/load_state_dict, and then saves and restores that
      loader's state too: a second resumption path beside the datamodule's, for a warning.
    - Lightning's advertisement for its cloud logger ("Tip: ... litlogger"), printed at every
      fit: Trainer's logger connector prints it whenever no LitLogger is among the loggers,
      with no setting or environment variable to turn it off (Lightning 2.6).
    """
    import warnings

    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropMessages) for f in rank_zero.filters):
        rank_zero.addFilter(_DropMessages("litlogger"))
