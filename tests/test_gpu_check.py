"""benchmarks/gpu_check.py on a machine without CUDA: every step is skipped, at once, and the
report is still written. Its overrides must also compose, so a typo in a key shows up here
rather than on a lent GPU machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
STEPS = [
    "default",
    "compare",
    "compile",
    "attention",
    "fp16",
    "resume",
    "fsdp",
    "qlora",
    "ddp",
    "liger",
    "memory",
]


def _script_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _run(*args: str) -> subprocess.CompletedProcess:
    # No GPU visible even where the suite runs on a GPU machine: the real check takes minutes.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def test_without_cuda_every_step_is_skipped_and_the_report_written(tmp_path):
    result = _run(f"--out-dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "machine: no CUDA GPU" in result.stdout
    rows = [ln for ln in result.stdout.splitlines() if ln.startswith("| ") and "---" not in ln]
    assert rows[0] == "| step | result | figure | seconds |"
    assert len(rows[1:]) == len(STEPS)
    for row in rows[1:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1:] == ["skip", "no CUDA GPU", "-"], row

    (path,) = tmp_path.glob("gpu_check_*.json")
    report = json.loads(path.read_text())
    assert [s["id"] for s in report["steps"]] == STEPS
    assert {(s["result"], s["figure"]) for s in report["steps"]} == {("skip", "no CUDA GPU")}
    assert report["machine"]["gpu_count"] == 0
    budgets = {s["id"]: s["budget_s"] for s in report["steps"]}
    check = _script_module()
    for group in check.LEASE_GROUPS:  # each group the docstring names fits one lent command
        assert check.PROBE_BUDGET_S + sum(budgets[i] for i in group) <= check.LEASE_S
    assert (path.with_suffix(".md")).read_text().count("| skip | no CUDA GPU |") == len(STEPS)


def test_every_override_of_every_step_composes():
    result = _run("--compose-only")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "FAIL" not in result.stdout
    # every step but the two that run benchmark scripts instead of lit_ft
    composed = {line.split()[1].split("/")[0] for line in result.stdout.splitlines()}
    assert composed >= set(STEPS) - {"compare", "memory"}
