"""The one way lit_ft talks to the user: `[lit_ft] ...` lines, printed by rank zero only.

Every process of a DDP run executes the same code; without the rank check each line would
print once per process. Warnings go to stderr, so a redirected stdout keeps only progress.
"""

from __future__ import annotations

import sys


def _rank_zero() -> bool:
    from lit_ft.distributed import is_global_zero

    return is_global_zero()


def say(message: str) -> None:
    """A `[lit_ft]` line on stdout, from rank zero."""
    if _rank_zero():
        print(f"[lit_ft] {message}", flush=True)


def warn(message: str) -> None:
    """A `[lit_ft] warning:` line on stderr, from rank zero."""
    if _rank_zero():
        print(f"[lit_ft] warning: {message}", file=sys.stderr, flush=True)
