"""The one error type users see.

Anything a user can fix (a bad key, a missing file, an unreachable Hub) is raised as a
`LitFtError` with a message that says what went wrong and what to do. The CLI prints the
message without a traceback and exits with `EXIT_USER_ERROR`; notebooks see the exception.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class LitFtError(Exception):
    """A problem the user can fix; the message says how."""


class ConfigError(LitFtError):
    """The composed config has one or more problems (all of them are listed)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"the config has {len(problems)} problem(s):\n{lines}")


class HubUnavailableError(LitFtError):
    """Something the run needs lives on the Hugging Face Hub, which cannot be reached."""
