"""A list of config problems, and the small checks every rule is written with.

Each module that owns a config group reports its own rules (`optimizer_problems` beside the
optimizer factory, `data_problems` beside the data sources, ...); `validate_config` collects
them all, so a user sees every problem of a config at once.
"""

from __future__ import annotations


class Problems(list):
    """Problem messages, each naming the key and what to do."""

    def need(self, ok: bool, message: str) -> None:
        if not ok:
            self.append(message)

    def add(self, problem: str | None) -> None:
        """A check's answer: None when all is well."""
        if problem:
            self.append(problem)

    def positive_int(self, key: str, value) -> None:
        self.need(
            isinstance(value, int) and not isinstance(value, bool) and value > 0,
            f"{key} must be a positive integer, got {value!r}",
        )

    def boolean(self, key: str, value) -> None:
        self.need(isinstance(value, bool), f"{key} must be true or false, got {value!r}")
