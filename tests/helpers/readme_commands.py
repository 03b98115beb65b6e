"""The `python -m lit_ft.<module>` commands of README.md's ```bash blocks, as a test reads them.

A command is found wherever a shell line starts one: alone, after `srun`, after `&&` (the
Quickstart's `pip install ... && python -m lit_ft.run`) or as torchrun's `-m lit_ft.run`.
Backslash continuations are joined and comments dropped first, so a command is what a shell
would run.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"

# a fenced block's body; the fence's language tag must be exactly `bash`
_BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.M | re.S)
# shell operators that end one command and start the next
_SEPARATORS = {"&&", "||", ";", "|"}
# a placeholder the reader fills in (`<SFT run>`, `<run>`): one word, though it holds a space
_PLACEHOLDER = re.compile(r"<[^<>\n]+>")
_SPACE = "\0"  # stands for a placeholder's space while the line is split into words


def _split(line: str, comments: bool = False) -> list[str]:
    line = _PLACEHOLDER.sub(lambda m: m.group().replace(" ", _SPACE), line)
    return [w.replace(_SPACE, " ") for w in shlex.split(line, comments=comments)]


@dataclass(frozen=True)
class ReadmeCommand:
    line: str  # the whole shell line, continuations joined, comment dropped, spaces collapsed
    module: str  # e.g. lit_ft.run
    args: tuple[str, ...]  # what follows the module, shell-unquoted
    launcher: tuple[
        str, ...
    ]  # what runs python: () or ("srun",) or ("torchrun", "--nnodes=2", ...)
    after: tuple[str, ...]  # the shell commands earlier on the same line (`pip install ...`)

    @property
    def text(self) -> str:
        """The command alone, as a table key: `python -m lit_ft.run a=1 b=2`."""
        return shlex.join(["python", "-m", self.module, *self.args])


def logical_lines(markdown: str) -> list[str]:
    """Every non-comment shell line of the ```bash blocks, backslash continuations joined."""
    lines = []
    for block in _BASH_BLOCK.findall(markdown):
        for line in re.sub(r"\\\n", " ", block).splitlines():
            # shlex drops a comment the way a shell does: `#` starting a word, outside quotes
            words = _split(line, comments=True)
            if words:
                lines.append(shlex.join(words))
    return lines


def _segments(words: list[str]) -> list[list[str]]:
    segments, current = [], []
    for word in words:
        if word in _SEPARATORS:
            segments.append(current)
            current = []
        else:
            current.append(word)
    return [*segments, current]


def parse_commands(markdown: str) -> list[ReadmeCommand]:
    """The lit_ft commands of the README's bash blocks, in order, each once (the first time)."""
    commands: dict[str, ReadmeCommand] = {}
    for line in logical_lines(markdown):
        earlier: list[str] = []
        for segment in _segments(_split(line)):
            for i in range(len(segment) - 1):
                if segment[i] == "-m" and segment[i + 1].startswith("lit_ft"):
                    launcher = segment[:i]
                    if launcher and re.fullmatch(r"python3?", launcher[-1]):
                        launcher = launcher[:-1]  # `srun python -m`: srun launches python
                    command = ReadmeCommand(
                        line=line,
                        module=segment[i + 1],
                        args=tuple(segment[i + 2 :]),
                        launcher=tuple(launcher),
                        after=tuple(earlier),
                    )
                    commands.setdefault(command.text, command)
                    break
            earlier.append(shlex.join(segment))
    return list(commands.values())


def readme_commands(path: Path = README) -> list[ReadmeCommand]:
    return parse_commands(path.read_text(encoding="utf-8"))
