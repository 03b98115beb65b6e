"""One live run per run directory.

A re-queued job whose predecessor still lives, or a resume typed in a second terminal, would
otherwise interleave checkpoints in one directory: Lightning names the second writer's files
`-v1`, and `last.ckpt` becomes whichever process saved last. Nothing in Lightning prevents it.

The lock is an `flock` on `<run dir>/.lit_ft.lock`, held by rank 0 for the whole run. The
kernel releases it when the process ends in any way (SIGKILL and OOM included), so a crashed
run never leaves a stale lock to clean up; the file's text only names the holder.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lit_ft.errors import LitFtError

LOCK_FILE = ".lit_ft.lock"


class RunDirInUse(LitFtError):
    """Another live process is writing this run directory."""


@contextmanager
def hold_run_dir(output_dir: str | Path, leader: bool = True) -> Iterator[None]:
    """Hold the run directory's lock while the body runs; refuse if a live run holds it.

    Only the leader (rank 0) locks: the other ranks of the same run write into it with it.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no flock; runs there go unguarded
        fcntl = None
    if not leader or fcntl is None:
        yield
        return
    path = Path(output_dir) / LOCK_FILE
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held for the whole run)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunDirInUse(
            f"run directory '{output_dir}' is in use by a live run ({holder}); nothing was "
            "written. Wait for it to end (resume it then with ckpt_path=last), stop it, or "
            "choose another paths.output_dir"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        command = " ".join(sys.argv)[:200]
        handle.write(f"process {os.getpid()} on {socket.gethostname()} since {started}: {command}")
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
