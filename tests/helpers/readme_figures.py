"""README's figures, as the tests that repeat the runs behind them read them.

Each pattern below finds one passage of README.md; its groups are the numbers quoted there.
A test reruns the command, then `assert_figures` compares every figure at once and names each
one that moved, so a change that moves them fails until README says the new values.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"

# Quickstart: "(**224.1 → 45.3** where it trains in fp32, ...; 177 optimizer steps"
DEFAULT_RUN = r"perplexity before and after \(\*\*([\d.]+) → ([\d.]+)\*\*.*?(\d+) optimizer steps"

# Preference tuning (DPO), "Offline example": "100 steps of 8 pairs ... first 160 of the 725
# held-out pairs ... accuracy **0.00 -> 0.98** ... margin 0 -> 6.82, loss 0.693 -> 0.060; the
# chosen answers' summed log-probability went from -117 to -139, the rejected ones' from -140
# to -230"
DPO_EXAMPLE = (
    r"(\d+) steps of 8 pairs.*?first (\d+) of the ([\d,]+) held-out pairs"
    r".*?held-out reward accuracy \*\*([\d.]+) -> ([\d.]+)\*\*"
    r".*?margin ([\d.]+) -> ([\d.]+), loss ([\d.]+) -> ([\d.]+)"
    r".*?log-probability went from (-[\d.]+) to (-[\d.]+), the rejected ones' from (-[\d.]+) to"
    r" (-[\d.]+)"
)

# Reward models, "Offline example": "100 steps of 8 pairs ... first 160 of the 722 held-out
# pairs: accuracy **0.43 -> 0.97**, margin -0.04 -> 6.58, loss 0.719 -> 0.054"
REWARD_EXAMPLE = (
    r"tiny_gpt2_docstring_reward`\).*?(\d+) steps of 8 pairs.*?first (\d+) of the ([\d,]+) held-out"
    r"\s+pairs: accuracy \*\*([\d.]+) -> ([\d.]+)\*\*, margin (-?[\d.]+) -> ([\d.]+), loss"
    r" ([\d.]+) -> (\d[\d.]*\d)"
)

# Learning from rewards (GRPO), "Offline example": "100 steps of 4 prompts x 8 completions
# ... first 64 of the 725 validation prompts) **0.049 -> 0.090**, training reward 0.067 (mean
# of the first 10 steps) -> 0.139 (last 10)"
GRPO_EXAMPLE = (
    r"tiny_gpt2_docstring_grpo`\).*?(\d+) steps of 4 prompts.*?first (\d+) of the ([\d,]+)"
    r" validation prompts\) \*\*([\d.]+) -> ([\d.]+)\*\*,\s+training reward ([\d.]+) \(mean"
    r"\s+of the first 10 steps\) -> ([\d.]+) \(last 10\)"
)

# Chat fine-tuning: the example's budget in the text, then its table of figures.
CHAT_EXAMPLE = (
    r"tiny_gpt2_docstring_chat` trains (\d+) optimizer steps"
    r".*?\| validation \(([\d,]+) chats, packed into ([\d,]+) sequences\) \| before \| after \|"
    r"\n\|---\|---\|---\|"
    r"\n\| perplexity on the answers \| ([\d.]+) \| ([\d.]+) \|"
    r"\n\| ROUGE-L of greedy answers to the final question \| ([\d.]+) \| ([\d.]+) \|"
    r"\n\| chrF \| ([\d.]+) \| ([\d.]+) \|"
    r"\n\| exact match \| ([\d.]+) \| ([\d.]+) \|"
)
# The same section: how full the packed blocks are, as the pre-flight prints it.
CHAT_PACKING = r"(\d+)% full when `<\|im_end\|>` was\s+7 tokens; (\d+)% now"

# Quickstart: "the fast tier of the tests: 382 tests", "adds the 131 tests marked `slow`",
# "the precision matrix: 513 tests in"
TEST_COUNTS = (
    r"fast tier of the tests: (\d+) tests.*?adds the (\d+) tests marked `slow`"
    r".*?matrix: (\d+) tests in"
)


class Quoted(float):
    """A number as README writes it; `decimals` is how many digits it gives after the point."""

    decimals: int

    def __new__(cls, text: str) -> Quoted:
        number = super().__new__(cls, text.replace(",", ""))
        number.decimals = len(text.partition(".")[2])
        return number


def quoted(pattern: str, what: str) -> list[Quoted]:
    """The numbers README quotes where `pattern` matches (thousands separators dropped)."""
    match = re.search(pattern, README.read_text(encoding="utf-8"), re.S)
    assert match, (
        f"README no longer quotes {what} in the words tests/helpers/readme_figures.py looks "
        f"for; if the passage was reworded, update the pattern there:\n{pattern}"
    )
    return [Quoted(group) for group in match.groups()]


@dataclass
class Figure:
    """One figure of a run against README's. The tolerance is the larger of `rel` x README's
    value and `abs` (both 0: equal), widened by half a unit of README's last quoted digit
    (README says 0.98, so 0.9812 is that figure)."""

    name: str
    measured: float
    readme: float
    rel: float = 0.0
    abs: float = 0.0

    def tolerance(self) -> float:
        decimals = getattr(self.readme, "decimals", 0)
        return max(self.rel * abs(self.readme), self.abs) + 0.5 * 10.0**-decimals

    def ok(self) -> bool:
        return abs(self.measured - self.readme) <= self.tolerance()


def assert_figures(where: str, figures: list[Figure]) -> None:
    """All figures compared, every one that moved reported together (one README edit fixes
    them all), with the values to write."""
    moved = [f for f in figures if not f.ok()]
    python = "{}.{}".format(*sys.version_info[:2])
    assert not moved, (
        f"README's figures for {where} no longer match a fresh run; if the change is meant, "
        f"write this run's figures into README ({README.name}). The examples' data come from "
        f"this Python's standard library (this run: Python {python}): another version gives "
        "other figures.\n"
        + "\n".join(
            f"  {f.name}: README {f.readme:g}, this run {f.measured:.4g}"
            f" (tolerance ±{f.tolerance():.3g})"
            for f in moved
        )
    )


# Vision-language models, "Offline example": "270 steps of 16 chats (3 epochs), every one of the
# 160 validation chats answered: exact match **0.00 -> 0.81** with `model=tiny_vlm`"
VLM_EXAMPLE = (
    r"tiny_vlm_shapes`\).*?(\d+) steps of 16\s+chats.*?every one of the (\d+) validation"
    r" chats answered: exact match \*\*([\d.]+) ->\s+([\d.]+)\*\*"
)
