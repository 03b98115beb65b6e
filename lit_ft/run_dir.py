"""Leave no run directory behind for a run that stopped at its checks.

Hydra creates `hydra.run.dir` before `main` runs (.hydra/ with the composed config, run.log)
and lit_ft adds its lock file and config.yaml; a run refused by its checks has done nothing
else, and a directory per typo piles up in outputs/runs/. Such a directory is removed, but
only when it is new (it did not exist before this run: not a run pointed at again to resume)
and holds only those start files, so no checkpoint or output of an earlier run can go with it.
A sweep's failed jobs keep theirs: run.log holds the reason sweep_report shows.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from lit_ft.run_lock import LOCK_FILE

# What a run directory holds before any work: Hydra's config copy and log, our lock and
# resolved config (lit_ft.steps.write_config).
START_FILES = frozenset({".hydra", "run.log", LOCK_FILE, "config.yaml"})

_existed_before: dict[str, bool] = {}


def note_run_dir(path: str | Path) -> None:
    """Called before Hydra creates the directory (lit_ft.preflight.OutputDirCheck)."""
    _existed_before[str(Path(path).resolve())] = Path(path).exists()


def remove_unused_run_dir(path: str | Path) -> bool:
    """Remove `path` if this run created it and it holds nothing but START_FILES."""
    path = Path(path)
    if _existed_before.get(str(path.resolve()), True) or not path.is_dir():
        return False  # existed before (or unknown: not started through Hydra's run mode)
    if not {entry.name for entry in path.iterdir()} <= START_FILES:
        return False
    _close_log_files(path)
    for name in START_FILES:
        entry = path / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif entry.exists() or entry.is_symlink():
            entry.unlink()
    try:
        os.rmdir(path)  # only if empty: something written meanwhile stays
    except OSError:
        return False
    return True


def _close_log_files(path: Path) -> None:
    # Hydra's run.log handler would keep writing into the removed file.
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == path:
            handler.close()
            root.removeHandler(handler)
