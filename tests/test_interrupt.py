"""Ctrl-C: the first SIGINT saves at the step boundary and says how to resume (as SIGTERM
does, exit code 3); a second one stops at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.config import tiny_run_overrides

from lit_ft.training.preemption import EXIT_PREEMPTED

pytestmark = pytest.mark.slow


HELPERS = str(Path(__file__).parent)


def _start(args: list[str]) -> subprocess.Popen:
    path = os.pathsep.join([HELPERS, os.environ.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, "-m", "lit_ft.run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
    )


def _wait_for_checkpoint(process: subprocess.Popen, checkpoints: Path, timeout: float = 300):
    """Until the run has written its first step checkpoint (it trains on after it)."""
    deadline = time.monotonic() + timeout
    while not list(checkpoints.glob("step*.ckpt")):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.2)


def _step(run_dir: Path) -> int:
    import torch

    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]


def _args(tiny_tokenizer_dir, text_file, run_dir: Path) -> list[str]:
    args = tiny_run_overrides(tiny_tokenizer_dir, text_file, run_dir)
    args.remove("trainer.max_steps=30")
    return [
        *args,
        "trainer.max_steps=100000",  # far more than it can do before the signal comes
        "trainer.max_epochs=1000",
        "trainer.accumulate_grad_batches=2",
        "callbacks.resumable_checkpoint.every_n_train_steps=2",
        "evaluate_before=false",
    ]


def test_ctrl_c_saves_says_how_to_resume_and_resumes(tiny_tokenizer_dir, text_file, tmp_path):
    run_dir = tmp_path / "run"
    args = _args(tiny_tokenizer_dir, text_file, run_dir)
    process = _start(args)
    _wait_for_checkpoint(process, run_dir / "checkpoints")
    os.kill(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=300)
    assert process.returncode == EXIT_PREEMPTED, err[-3000:]
    assert "Ctrl-C: finishing this optimizer step" in out
    assert "SIGINT received: saved" in out and "ckpt_path=last" in out
    assert "Traceback" not in err and "graceful shutdown" not in out + err
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_file()
    import torch

    saved_step = torch.load(last, weights_only=True)["global_step"]
    assert saved_step >= 2

    # the hint works: the same command with ckpt_path=last goes on from that step
    resumed = subprocess.run(
        [sys.executable, "-m", "lit_ft.run", *args, f"trainer.max_steps={saved_step + 2}"]
        + ["ckpt_path=last"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["resumed_from"].endswith("last.ckpt")
    assert torch.load(last, weights_only=True)["global_step"] > saved_step


def test_a_second_ctrl_c_stops_at_once(tiny_tokenizer_dir, text_file, tmp_path):
    run_dir = tmp_path / "run"
    # from step 2 on, each micro-batch starts with a 2 s sleep: both signals land in one step
    slow = "+callbacks.slow={_target_: helpers.callbacks.SlowBatches, seconds: 2, after_step: 2}"
    process = _start([*_args(tiny_tokenizer_dir, text_file, run_dir), slow])
    _wait_for_checkpoint(process, run_dir / "checkpoints")
    os.kill(process.pid, signal.SIGINT)
    time.sleep(0.5)  # two signals at once would reach Python's handler as one
    os.kill(process.pid, signal.SIGINT)  # before the step it is in ends
    out, err = process.communicate(timeout=300)
    assert process.returncode not in (0, EXIT_PREEMPTED)
    assert "second Ctrl-C: stopping now" in out
    assert "SIGINT received: saved" not in out
    assert not (run_dir / "checkpoints" / "last.ckpt").exists() or _step(run_dir) == 2
