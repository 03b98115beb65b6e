"""The suite's subprocess runner: a run that overruns its time is ended with every process it
started (a hung 2-process run's rank-1 child would otherwise hold its port for the rest of the
suite)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.processes import run_in_own_group


def test_a_timeout_ends_the_children_too(tmp_path):
    pid_file = tmp_path / "child.pid"
    parent = (
        "import subprocess, sys, time;"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']);"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid));"
        "print('started', flush=True); time.sleep(120)"
    )
    with pytest.raises(subprocess.TimeoutExpired) as expired:
        run_in_own_group([sys.executable, "-c", parent], timeout=5)
    assert "started" in expired.value.stdout
    child = int(pid_file.read_text())
    for _ in range(50):  # SIGKILL is delivered at once; the kernel reaps within moments
        if not _alive(child):
            break
        time.sleep(0.1)
    assert not _alive(child)


def test_a_finished_run_reports_like_subprocess_run():
    done = run_in_own_group([sys.executable, "-c", "import sys; print('out'); sys.exit(3)"], 60)
    assert (done.returncode, done.stdout) == (3, "out\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a killed child whose parent died is reparented and reaped; a zombie still answers kill 0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
