"""Built-in corpora: real text that every Python installation carries, written out at run time.

The offline default needs real text that nobody on this project wrote and that exists on any
machine without a download. Python itself ships two very different bodies of it:

- `python_source`: the standard library's own source code (code, comments, docstrings);
  the bundled tiny GPT-2 was pretrained on this.
- `python_reference`: the language reference and help topics in `pydoc_data.topics`
  (English technical prose, ~465K characters); the default run fine-tunes on this,
  a new domain for a code model, so the perplexity drop means something.

Nothing is committed to the repo: each corpus is generated into the cache directory the
first time it is asked for, and reused afterwards.
"""

from __future__ import annotations

import json
import os
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path

from lit_ft.errors import LitFtError


def _python_reference() -> Iterator[str]:
    """One line of text per paragraph of the pydoc topics, paragraphs split by blank lines."""
    try:
        from pydoc_data.topics import topics
    except ImportError as err:  # some distributions strip pydoc_data
        raise LitFtError(
            "corpus 'python_reference' needs the standard-library module pydoc_data, which this "
            "Python lacks; install your distribution's full stdlib or set data.* to your own files"
        ) from err
    for name in sorted(topics):
        yield topics[name].strip() + "\n\n"


def _python_source() -> Iterator[str]:
    """One JSON line per standard-library module: {"path": ..., "text": ...}."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skipped = {"site-packages", "dist-packages", "test", "tests", "idle_test", "pydoc_data"}
    for path in sorted(stdlib.rglob("*.py")):
        if skipped.intersection(path.relative_to(stdlib).parts):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        yield json.dumps({"path": str(path.relative_to(stdlib)), "text": text}) + "\n"


CORPORA: dict[str, Callable[[], Iterator[str]]] = {
    "python_reference": _python_reference,  # text, for data.path=text
    "python_source": _python_source,  # JSON lines, for data.path=json
}


def materialize(name: str, target: str | Path) -> Path:
    """Write corpus `name` to `target` unless it is already there; return the path."""
    if name not in CORPORA:
        raise LitFtError(f"unknown corpus '{name}'; available: {', '.join(sorted(CORPORA))}")
    target = Path(target).expanduser()
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        for chunk in CORPORA[name]():
            out.write(chunk)
    os.replace(tmp, target)  # atomic: a concurrent or interrupted run never sees half a file
    return target
