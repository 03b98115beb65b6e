"""Functions of the user's own, named in a config: `module:function` (an importable module,
e.g. `my_metrics:compute_metrics`) or `path/to/file.py:function` (a file, relative to the
directory the run starts in). `task.compute_metrics` is one; a reward function will be another.

The config check loads them (`function_problems`), so a typo in the module, the file or the
function name is reported with the other problems, before any data or model is loaded.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

from lit_ft.errors import LitFtError
from lit_ft.problems import Problems


def load_function(spec: str, key: str) -> Callable:
    """The function `spec` names; LitFtError naming `key` and what went wrong otherwise."""
    where, sep, name = str(spec).rpartition(":")
    if not sep or not where or not name:
        raise LitFtError(
            f"{key}='{spec}' must name a function as module:function or path/to/file.py:function"
        )
    if where.endswith(".py"):
        path = Path(where).expanduser()
        if not path.is_file():
            raise LitFtError(f"{key}='{spec}': the file {path.resolve()} does not exist")
        module_name = f"lit_ft_user_{path.stem}_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(module_name)
        if module is None:
            loader = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(loader)
            sys.modules[module_name] = module  # pickling (DDP workers) finds it by name
            try:
                loader.loader.exec_module(module)
            except Exception as err:
                del sys.modules[module_name]
                raise LitFtError(f"{key}='{spec}': importing {path} failed: {err!r}") from err
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as err:
            raise LitFtError(
                f"{key}='{spec}': cannot import module '{where}' ({err}); is it on PYTHONPATH, "
                "or give the file as path/to/file.py:function"
            ) from err
    function = getattr(module, name, None)
    if not callable(function):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise LitFtError(
            f"{key}='{spec}': '{where}' has no function '{name}'; its functions: "
            f"{', '.join(found) or 'none'}"
        )
    return function


def function_problems(spec, key: str) -> Problems:
    """The config check's view of `load_function`: its error as a problem, or none."""
    problems = Problems()
    if spec is None or callable(spec):
        return problems
    try:
        load_function(spec, key)
    except LitFtError as err:
        problems.add(str(err))
    return problems
