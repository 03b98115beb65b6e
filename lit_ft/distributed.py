"""Several processes, one run: what Hydra and lit_ft need around Lightning's strategies.

Lightning's DDP launcher starts ranks 1..N-1 by re-running the command line of rank 0, with
`hydra.run.dir=<rank 0's HydraConfig run.dir>` appended. Two things go wrong with Hydra as is
(the "several output dirs" problem, lightning-hydra-template #393):

- `hydra.run.dir` is `${paths.output_dir}`, which holds `${now:...}`: a child that starts a
  second later resolves a different time, so each rank writes its own directory;
- in a multirun, the child command line still has `-m` and the sweep lists, and
  `hydra.run.dir` is not the job's directory: each child would run the whole sweep.

`share_run_with_child_ranks()` pins both before training starts: `run.dir` becomes the job's
resolved output directory, and in a multirun the command line becomes this job's own overrides.
`end_processes()` closes the process group after a job, so the next job of a sweep launches its
own ranks instead of talking to the previous job's (exited) ones. `end_child_ranks()` ends the
ranks this process launched when its job fails: they would otherwise wait in a collective for
a rank 0 that has gone on to the next job (or exited), asleep, for the process group's timeout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

from lit_ft.compat import stop_child_process_observer

# Set by Lightning's launcher in rank 0 when it starts the children (read at the next launch).
_LAUNCHER_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def share_run_with_child_ranks(hydra_cfg, multirun: bool) -> None:
    """Make the ranks Lightning launches from this process write into this job's directory."""
    from omegaconf import read_write

    with read_write(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    if multirun:
        # e.g. `-m optimizer.lr=1e-3,3e-3` -> job 1's children get `optimizer.lr=3e-3`
        sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]


def require_one_output_dir(hydra_cfg) -> None:
    """Under torchrun or srun every process composes its own config, so a `${now:...}` run
    directory would differ between them: such runs must name one directory themselves."""
    from lit_ft.errors import LitFtError

    world = int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1)
    ours = any(o.startswith("hydra.run.dir=") for o in hydra_cfg.overrides.hydra)  # our children
    named = any(o.startswith("paths.output_dir=") for o in hydra_cfg.overrides.task)
    if world > 1 and launched_externally() and not ours and not named:
        raise LitFtError(
            f"{world} processes were started by torchrun/SLURM and each would pick its own "
            "timestamped run directory: set paths.output_dir to one directory on a filesystem "
            "all nodes share (e.g. paths.output_dir=outputs/runs/$SLURM_JOB_ID)"
        )


def launched_externally() -> bool:
    """True when torchrun, SLURM or a launcher before us set up this process's rank."""
    return "LOCAL_RANK" in os.environ or "SLURM_PROCID" in os.environ


def end_processes(launched_here: bool) -> None:
    """After a job: close the process group; forget the launcher's env if we launched."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if launched_here:
        for key in _LAUNCHER_ENV:
            os.environ.pop(key, None)


def end_child_ranks(grace_s: float = 5.0) -> list[int]:
    """Stop the rank processes this process launched (children with LOCAL_RANK >= 1).

    They get `grace_s` seconds to exit on their own (a failure they share ends them too),
    then SIGTERM, then SIGKILL. Returns the pids that had to be signalled. The children and
    their environments are read with psutil (Linux, macOS, Windows).
    """
    launched = stop_child_process_observer()
    ranks = _child_ranks()
    deadline = time.monotonic() + grace_s
    while ranks and time.monotonic() < deadline:
        time.sleep(0.1)
        ranks = [pid for pid in ranks if _alive(pid)]
    signalled = list(ranks)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in ranks:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 2.0
        while ranks and time.monotonic() < deadline:
            time.sleep(0.05)
            ranks = [pid for pid in ranks if _alive(pid)]
    for proc in launched:  # collect their exit status: no zombie entries either
        with contextlib.suppress(Exception):
            proc.wait(timeout=1)
    return signalled


def _child_ranks() -> list[int]:
    """Direct children whose environment names a LOCAL_RANK other than 0 (Lightning's
    launcher starts ranks 1..N-1 so; data-loader workers are forks of rank 0: LOCAL_RANK 0
    or none)."""
    import psutil

    found = []
    for child in psutil.Process().children(recursive=False):
        try:
            rank = child.environ().get("LOCAL_RANK", "0")
        except (psutil.Error, OSError):
            continue  # gone meanwhile, or not ours to read
        if rank not in ("", "0"):
            found.append(child.pid)
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie has ended: only its exit status waits to be collected)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the initialized process group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_from_processes(values):
    """Every process's `values` (the same shape on each) laid end to end in rank order; the
    tensor itself on one process. A collective: every rank must call it at the same point."""
    import torch
    import torch.distributed as dist

    rank, world = rank_and_world()
    if world == 1:
        return values
    parts = [torch.empty_like(values) for _ in range(world)]
    dist.all_gather(parts, values.contiguous())
    return torch.cat(parts)


def is_global_zero() -> bool:
    """Rank 0 of the whole run; known from the environment before the Trainer exists."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0
