"""One live run per run directory.

A re-queued job whose predecessor still lives, or a resume typed in a second terminal, would
otherwise interleave checkpoints in one directory: Lightning names the second writer's files
`-v1`, and `last.ckpt` becomes whichever process saved last. Nothing in Lightning prevents it.

The lock is `filelock`'s on `<run dir>/.lit_ft.lock` (flock on Unix, msvcrt on Windows),
held by rank 0 for the whole run. The kernel releases it when the process ends in any way
(SIGKILL and OOM included), so a crashed run never leaves a stale lock to clean up; the
file's text only names the holder. filelock >= 4 opens the file without truncating it and
truncates only once it holds the lock (its #591), so a refused contender still reads who
holds it. Its soft fallback (a marker file, for file systems without flock) is off: a
marker outlives a killed run and would refuse the very resume that should follow.
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
    if not leader:
        yield
        return
    import filelock

    path = Path(output_dir) / LOCK_FILE
    lock = filelock.FileLock(path, timeout=0, fallback_to_soft=False)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise RunDirInUse(
            f"run directory '{output_dir}' is in use by a live run ({_holder(path)}); nothing "
            "was written. Wait for it to end (resume it then with ckpt_path=last), stop it, or "
            "choose another paths.output_dir"
        ) from None
    try:
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        command = " ".join(sys.argv)[:200]
        holder = f"process {os.getpid()} on {socket.gethostname()} since {started}: {command}"
        try:
            with open(path, "r+", encoding="utf-8") as text:  # beside the lock's descriptor
                text.truncate()
                text.write(holder)
        except OSError:  # Windows locks the bytes themselves: the holder goes unnamed
            pass
        yield
    finally:
        lock.release()


def _holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "another process"
    except OSError:  # Windows: the holder's lock keeps others from reading the file
        return "another process"
