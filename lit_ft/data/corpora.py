"""Built-in corpora: real text that every Python installation carries, written out at run time.

The offline default needs real text that nobody on this project wrote and that exists on any
machine without a download. Python itself ships two very different bodies of it:

- `python_source`: the standard library's own source code (code, comments, docstrings);
  the bundled tiny GPT-2 was pretrained on this.
- `python_reference`: the language reference and help topics in `pydoc_data.topics`
  (English technical prose, ~465K characters); the default run fine-tunes on this,
  a new domain for a code model, so the perplexity drop means something.
- `python_docstrings`: the docstrings of the standard library's functions and classes, one
  JSON row each, with labels that their authors wrote without knowing it: the package a
  docstring belongs to (topic classification), its first paragraph as a summary of the rest
  (seq2seq, instruction tuning), and which of its words name the function's own parameters or
  are marked up as ``code`` (token classification).
  `python_docstring_topics` keeps the rows of six packages with distinct subjects.

Nothing is committed to the repo: each corpus is generated into the cache directory the
first time it is asked for, and reused afterwards.
"""

from __future__ import annotations

import ast
import json
import os
import random
import re
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


def _stdlib_files() -> Iterator[tuple[Path, str]]:
    """(path relative to the stdlib, source) of every standard-library module."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skipped = {"site-packages", "dist-packages", "test", "tests", "idle_test", "pydoc_data"}
    for path in sorted(stdlib.rglob("*.py")):
        relative = path.relative_to(stdlib)
        if skipped.intersection(relative.parts):
            continue
        try:
            yield relative, path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue


def _python_source() -> Iterator[str]:
    """One JSON line per standard-library module: {"path": ..., "text": ...}."""
    for relative, text in _stdlib_files():
        yield json.dumps({"path": str(relative), "text": text}) + "\n"


def docstring_rows(min_paragraphs: int = 2) -> Iterator[dict]:
    """One row per documented function or class whose docstring has `min_paragraphs` or more
    paragraphs (the first one is the summary)."""
    for relative, text in _stdlib_files():
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        module = ".".join(relative.with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            doc = ast.get_docstring(node)
            paragraphs = [" ".join(p.split()) for p in (doc or "").split("\n\n") if p.strip()]
            if len(paragraphs) < max(min_paragraphs, 1):
                continue
            summary, description = paragraphs[0], " ".join(paragraphs[1:])[:2000]
            words, tags = tag_words(f"{summary} {description}".split()[:96], _parameters(node))
            yield {
                "package": relative.parts[0].removesuffix(".py"),
                "module": module,
                "name": node.name,
                "signature": _signature(node),
                "summary": summary,
                "description": description,
                "words": words,
                "tags": tags,
            }


def _parameters(node) -> set[str]:
    if isinstance(node, ast.ClassDef):
        return set()
    args = node.args
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
    return {a.arg for a in every if a is not None and a.arg not in ("self", "cls")}


def _signature(node) -> str:
    return "" if isinstance(node, ast.ClassDef) else f"({ast.unparse(node.args)})"


def tag_words(words: list[str], parameters: set[str]) -> tuple[list[str], list[str]]:
    """IOB tags: CODE for words inside ``double backquotes`` (reST inline literals), ARG for a
    word that is one of the function's parameter names; O otherwise."""
    tags, in_code = [], False
    for word in words:
        opens = word.startswith("``")
        if in_code or opens:
            tags.append("I-CODE" if in_code else "B-CODE")
            # A literal closes on a word ending in `` (possibly followed by punctuation).
            in_code = not re.search(r"``\W*$", word[2:] if opens else word)
        elif re.sub(r"^\W+|\W+$", "", word) in parameters:
            tags.append("B-ARG")
        else:
            tags.append("O")
    return words, tags


# Six packages whose docstrings talk about clearly different things.
TOPIC_PACKAGES = ("asyncio", "email", "logging", "multiprocessing", "unittest", "xml")


def _python_docstrings() -> Iterator[str]:
    for row in docstring_rows():
        yield json.dumps(row) + "\n"


def _python_docstring_topics() -> Iterator[str]:
    for row in docstring_rows(min_paragraphs=1):
        if row["package"] in TOPIC_PACKAGES:
            yield json.dumps(row) + "\n"


def _python_docstring_chats() -> Iterator[str]:
    """Two-turn chats about a function: what it does (its summary line), then how it is
    called (its signature), e.g. "What does shutil.copyfile do?" -> "Copy data from src to
    dst in the most efficient way possible." -> "What parameters does it take?" ->
    "copyfile(src, dst, *, follow_symlinks=True)". Functions with parameters only."""
    for row in docstring_rows(min_paragraphs=1):
        if not row["signature"] or row["signature"] in ("()", "(self)"):
            continue
        messages = [
            {"role": "user", "content": f"What does {row['module']}.{row['name']} do?"},
            {"role": "assistant", "content": row["summary"]},
            {"role": "user", "content": "What parameters does it take?"},
            {"role": "assistant", "content": f"{row['name']}{row['signature']}"},
        ]
        yield json.dumps({"package": row["package"], "messages": messages}) + "\n"


def _python_docstring_preferences() -> Iterator[str]:
    """Preference pairs: for "One-line docstring for <module>.<name><signature>:", the
    function's real summary line is chosen over the same words in a shuffled order (a fluent
    sentence over a garbled one), e.g. "Return the number of items." over "items. the Return
    of number". Each rejected answer is unique to its pair.

    Why not another function's summary as the rejected answer (the first version): each
    summary was then chosen in one pair and rejected in another: 91% of the chosen answers
    held out by the random 90/10 split were rejected answers in training, which taught the
    model to lower exactly them (held-out reward accuracy 0.34, below chance; README). Telling
    which real summary fits which name is also beyond a 1.35M-parameter model; word order is
    something it knows from pretraining and can learn to weigh."""
    seen = set()
    for row in docstring_rows(min_paragraphs=1):
        words = row["summary"].split()
        if len(words) < 4:  # 1-3 words: too few orders that read as wrong
            continue
        # Seeded by the function's name: the same pairs on every machine and every run.
        shuffled = list(words)
        random.Random(f"{row['module']}.{row['name']}").shuffle(shuffled)
        if shuffled == words:
            continue
        prompt = f"One-line docstring for {row['module']}.{row['name']}{row['signature']}:"
        if (prompt, row["summary"]) in seen:  # a repeat would sit on both sides of the split
            continue
        seen.add((prompt, row["summary"]))
        pair = {"prompt": prompt, "chosen": row["summary"], "rejected": " ".join(shuffled)}
        yield json.dumps(pair) + "\n"


# task=vision_instruction's example: a coloured shape on a light background, drawn here, and a
# question about its colour or its shape. Chance is 1 in 4 colours and 1 in 3 shapes.
SHAPE_COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
                 "yellow": (230, 200, 30)}  # fmt: skip
SHAPES = ("circle", "square", "triangle")
SHAPE_ROWS = 1600
SHAPE_QUESTIONS = {"colour": "What colour is the shape?", "shape": "What shape is this?"}


def _shape_chats(folder: Path) -> Iterator[str]:
    """One chat per drawn image: the image (PNG, in `shape_chats_v1_images/` beside the JSON
    lines, named relative to them) and one question, answered with one word. Images are 24 to
    64 pixels a side, so processors that split images by size see several layouts."""
    from PIL import Image, ImageDraw

    images = folder / "shape_chats_v1_images"
    images.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for i in range(SHAPE_ROWS):
        colour, shape = rng.choice(list(SHAPE_COLOURS)), rng.choice(SHAPES)
        width, height = rng.randint(24, 64), rng.randint(24, 64)
        image = Image.new("RGB", (width, height), (245, 245, 240))
        side = rng.randint(min(width, height) // 2, min(width, height) - 4)
        x, y = rng.randint(0, width - side), rng.randint(0, height - side)
        box = (x, y, x + side, y + side)
        draw = ImageDraw.Draw(image)
        if shape == "circle":
            draw.ellipse(box, fill=SHAPE_COLOURS[colour])
        elif shape == "square":
            draw.rectangle(box, fill=SHAPE_COLOURS[colour])
        else:
            draw.polygon([(x, y + side), (x + side, y + side), (x + side // 2, y)],
                         fill=SHAPE_COLOURS[colour])  # fmt: skip
        name = f"{images.name}/{i:05d}.png"
        image.save(folder / name)
        asked = rng.choice(list(SHAPE_QUESTIONS))
        question = [{"type": "image"}, {"type": "text", "text": SHAPE_QUESTIONS[asked]}]
        answer = colour if asked == "colour" else shape
        chat = [
            {"role": "user", "content": question},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ]
        yield json.dumps({"messages": chat, "images": [name]}) + "\n"


CORPORA: dict[str, Callable[..., Iterator[str]]] = {
    "python_reference": _python_reference,  # text, for data.path=text
    "python_source": _python_source,  # JSON lines, for data.path=json
    "python_docstrings": _python_docstrings,  # JSON lines, for data.path=json
    "python_docstring_topics": _python_docstring_topics,  # JSON lines, for data.path=json
    "python_docstring_chats": _python_docstring_chats,  # JSON lines of {"messages": [...]}
    "python_docstring_preferences": _python_docstring_preferences,  # prompt, chosen, rejected
    "shape_chats": _shape_chats,  # JSON lines of {"messages": [...], "images": [path]}
}
# Corpora that write files of their own (images) into the corpus folder beside their lines
WITH_FILES = {"shape_chats"}


# The file each corpus is written to, inside `data.corpus_dir`.
CORPUS_FILES = {
    "python_reference": "python_reference.txt",
    "python_source": "python_source.jsonl",
    "python_docstrings": "python_docstrings.jsonl",
    "python_docstring_topics": "python_docstring_topics.jsonl",
    "python_docstring_chats": "python_docstring_chats.jsonl",
    # v2: the shuffled-summary pairs; a new name so that a cached first version is not reused
    "python_docstring_preferences": "python_docstring_preferences_v2.jsonl",
    "shape_chats": "shape_chats_v1.jsonl",
}


def corpus_file(name: str, corpus_dir: str | Path) -> Path:
    return Path(corpus_dir).expanduser() / CORPUS_FILES[name]


def files_to_read(data_files, corpus: str | None, corpus_dir: str | Path | None):
    """`data.data_files` when given (the user's files replace a built-in corpus); else the
    built-in corpus, written to `corpus_dir` on first use."""
    if data_files or not corpus:
        return data_files
    return str(materialize(corpus, corpus_file(corpus, corpus_dir)))


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
        for chunk in CORPORA[name](*([target.parent] if name in WITH_FILES else [])):
            out.write(chunk)
    os.replace(tmp, target)  # atomic: a concurrent or interrupted run never sees half a file
    return target
