"""The benchmark scripts still run against the current code (they broke once when the data
module changed shape). Smoke runs only: no speed is asserted here (see benchmarks/)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_compare_runs_all_three_frameworks_and_writes_a_table(tmp_path):
    command = [
        sys.executable,
        "benchmarks/compare.py",
        "--preset=tiny",
        "--steps=3",
        "--warmup=1",
        "--repeats=1",
        "--modes=same",
        f"--out-dir={tmp_path}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| same | lit_ft |" in result.stdout and "MFU:" in result.stdout
    (path,) = tmp_path.glob("*_tiny_cpu.json")
    report = json.loads(path.read_text())
    runs = {run["framework"]: run for run in report["runs"]}
    assert set(runs) == {"lit_ft", "bare", "hf"}
    for run in runs.values():
        assert run["tokens_per_s"] > 0 and run["tokens_per_cpu_s"] > 0
        assert math.isfinite(run["eval_loss"]) and run["mfu"] > 0
    # The three frameworks train the same model on the same data: the losses are close.
    losses = [run["eval_loss"] for run in runs.values()]
    assert max(losses) / min(losses) < 1.05
    assert report["summary"]["same"]["lit_ft"]["vs"]["bare"]["median_paired_ratio"] > 0


def test_data_prep_reports_a_cached_second_run(tmp_path):
    command = [sys.executable, "benchmarks/data_prep.py", "--num-proc=1", f"--out-dir={tmp_path}"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = tmp_path.glob("*_data_prep_python_reference.json")
    report = json.loads(path.read_text())
    build = report["builds"]["1"]
    assert build["cold"]["train_blocks"] == build["second_run"]["train_blocks"] > 0
    assert build["second_run"]["tokenize_s"] < build["cold"]["tokenize_s"]


def test_memory_benchmark_measures_every_run_and_the_estimate(tmp_path):
    command = [
        sys.executable,
        "benchmarks/memory.py",
        "--preset=tiny",
        "--steps=3",
        "--runs=hf,lit_ft,lit_ft_chunked_gc",  # the chunked-off row is a diagnostic
        f"--out-dir={tmp_path}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| HF Trainer, defaults |" in result.stdout and "targets (" in result.stdout
    (path,) = tmp_path.glob("*_memory_tiny_cpu.json")
    report = json.loads(path.read_text())
    runs = report["runs"]
    assert set(runs) == {"hf", "lit_ft", "lit_ft_chunked_gc"}
    for run in runs.values():
        assert run["peak_memory_mb"] > 0 and run["tokens_per_s"] > 0
    assert runs["lit_ft_chunked_gc"]["training_loss"].startswith("training loss chunked")
    assert runs["lit_ft"]["estimated_mb"] > 0 and "met" in report["targets"]


@pytest.mark.parametrize("script", ["dpo_compare", "grpo_compare"])
def test_trl_comparisons_run_both_frameworks(tmp_path, script):
    command = [sys.executable, f"benchmarks/{script}.py", "--steps=5", "--repeats=1"]
    command.append(f"--out-dir={tmp_path}")
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| lit_ft |" in result.stdout and "| trl |" in result.stdout
    (path,) = tmp_path.glob("*_5steps_cpu.json")
    runs = json.loads(path.read_text())["runs"]
    assert {run["framework"] for run in runs} == {"lit_ft", "trl"}
