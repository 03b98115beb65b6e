"""Checks of the filesystem that a config points at, made before any long work starts.

`validate_config` collects them with every other problem. The output directory is also
checked by a Hydra callback (`conf/hydra/default.yaml`), because Hydra creates the run
directory before lit_ft's code runs and would fail there with a traceback.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from hydra.experimental.callback import Callback

from lit_ft.errors import EXIT_USER_ERROR

# data.path given a file name: the builder that reads it
BUILDER_FOR_SUFFIX = {
    ".txt": "text",
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
}


def looks_like_hub_id(name: str) -> bool:
    """`gpt2` or `org/name`: what the Hub accepts (a path with more parts cannot be one)."""
    return not name.startswith(("/", ".", "~")) and name.count("/") <= 1


def model_path_problem(name_or_path: str, needs_weights_config: bool) -> str | None:
    """A local model path that does not exist or holds no saved model."""
    path = Path(name_or_path).expanduser()
    if not path.exists():
        if looks_like_hub_id(name_or_path):
            return None  # a Hub id: checked against the Hub or its cache later
        return (
            f"model.name_or_path='{name_or_path}' does not exist (a local model is a directory "
            "written by save_pretrained; a Hub id looks like 'gpt2' or 'org/name')"
        )
    if not path.is_dir():
        return f"model.name_or_path='{name_or_path}' is a file; give the model's directory"
    if needs_weights_config and not (path / "config.json").is_file():
        return (
            f"model.name_or_path='{name_or_path}' has no config.json, so it is not a saved "
            "model (save one with save_pretrained, or set model.model_type to build from scratch)"
        )
    return None


def data_path_problem(path: str) -> str | None:
    """A file name given as data.path, which takes a builder or a Hub dataset name."""
    builder = BUILDER_FOR_SUFFIX.get(Path(path).suffix.lower())
    if builder is None or Path(path).expanduser().is_dir():
        return None
    return (
        f"data.path='{path}' is a file name, but data.path names a builder or a Hub dataset: "
        f"use data.path={builder} data.data_files={path}"
    )


def output_dir_problem(output_dir: str, key: str = "paths.output_dir") -> str | None:
    """Why `output_dir` cannot be created and written, or None.

    Permission bits are not enough: root passes every `os.access` check, yet cannot create a
    directory in /proc or on a read-only mount, so the nearest existing parent is probed with
    a real (empty, removed at once) directory.
    """
    path = Path(output_dir).expanduser().absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{key}='{output_dir}' cannot be created: '{existing}' is a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{key}='{output_dir}' is not writable (no write access to '{existing}')"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".lit_ft_probe_", dir=existing))
    except OSError as err:
        reason = err.strerror or type(err).__name__
        return f"{key}='{output_dir}' cannot be created in '{existing}' ({reason})"
    return None


class OutputDirCheck(Callback):
    """Refuse an unwritable run directory before Hydra tries to create it."""

    def on_run_start(self, config, **kwargs) -> None:
        from lit_ft.run_dir import note_run_dir

        run_dir = str(config.hydra.run.dir)
        note_run_dir(run_dir)  # a new one is removed again if the run stops at its checks
        # named by the key the user set: hydra.run.dir defaults to paths.output_dir
        key = "paths.output_dir" if run_dir == str(config.paths.output_dir) else "hydra.run.dir"
        _refuse(output_dir_problem(run_dir, key))

    def on_multirun_start(self, config, **kwargs) -> None:
        _refuse(output_dir_problem(str(config.hydra.sweep.dir), "hydra.sweep.dir"))


def _refuse(problem: str | None) -> None:
    if problem:
        # The same form as every other user error (lit_ft.run): one line, exit code 2.
        print(f"lit_ft: error: {problem}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
