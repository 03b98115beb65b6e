"""Leave no run directory behind for a run that stopped before training.

Hydra creates `hydra.run.dir` before `main` runs (.hydra/ with the composed config, run.log)
and lit_ft adds its lock file, config.yaml, the loggers' copy of the config (logs/.../
hparams.yaml) and train_example.txt; a run stopped by its checks or by a lit_ft error while
preparing (data too small, a file that will not load) has done nothing else, and a directory
per mistake piles up in outputs/runs/. Such a directory is removed, but
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
# resolved config (write_config below), the training example (lit_ft/observe/plan.py);
# and LOGS_DIR when it holds only CSV loggers' hparams.yaml (lit_ft.observe.loggers.log_config).
START_FILES = frozenset({".hydra", "run.log", LOCK_FILE, "config.yaml", "train_example.txt"})
LOGS_DIR, CONFIG_COPY = "logs", "hparams.yaml"

_existed_before: dict[str, bool] = {}


def write_config(cfg, output_dir: Path, leader: bool) -> None:
    """The resolved config, beside everything the run writes (by rank 0)."""
    from omegaconf import OmegaConf

    if leader:
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def note_run_dir(path: str | Path) -> None:
    """Called before Hydra creates the directory (lit_ft.preflight.OutputDirCheck)."""
    _existed_before[str(Path(path).resolve())] = Path(path).exists()


def remove_unused_run_dir(path: str | Path) -> bool:
    """Remove `path` if this run created it and it holds nothing but START_FILES."""
    path = Path(path)
    if _existed_before.get(str(path.resolve()), True) or not path.is_dir():
        return False  # existed before (or unknown: not started through Hydra's run mode)
    names = {entry.name for entry in path.iterdir()}
    if not names - {LOGS_DIR} <= START_FILES:
        return False
    if LOGS_DIR in names and not _only_config_copies(path / LOGS_DIR):
        return False  # metrics, event files: the run got further than its start
    _close_log_files(path)
    for name in START_FILES | {LOGS_DIR}:
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


def _only_config_copies(logs: Path) -> bool:
    if logs.is_symlink() or not logs.is_dir():
        return False
    return all(
        (f.is_dir() and not f.is_symlink()) or f.name == CONFIG_COPY for f in logs.rglob("*")
    )


def _close_log_files(path: Path) -> None:
    # Hydra's run.log handler would keep writing into the removed file.
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == path:
            handler.close()
            root.removeHandler(handler)
