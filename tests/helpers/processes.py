"""Subprocesses that leave nothing behind when they overrun their time.

`subprocess.run(timeout=...)` kills the process it started, not what that process started: a
2-process run that hangs keeps its rank-1 child (Lightning's launcher starts it), and the child
goes on holding its port and a core for the rest of the suite. Started in a session of its own,
the whole group is killed on timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess


def run_in_own_group(command: list[str], timeout: float, **popen) -> subprocess.CompletedProcess:
    """`subprocess.run(command, capture_output=True, text=True, timeout=timeout, **popen)`, whose
    timeout also ends the processes `command` started."""
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **popen,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as expired:
            os.killpg(process.pid, signal.SIGKILL)
            expired.stdout, expired.stderr = process.communicate()
            raise
        return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
