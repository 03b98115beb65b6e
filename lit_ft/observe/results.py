"""results.json: what a run reports, built in one place and written once at the end, with
the end-of-run line ("done in 41.2s: val/ppl 412.33 -> 96.71; ...")."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lit_ft.log import say
from lit_ft.observe.loggers import finish
from lit_ft.observe.memory import gigabytes
from lit_ft.observe.throughput import ThroughputLogger
from lit_ft.plots import plot_run


def results(
    task,
    metrics: dict[str, Any],
    trainer,
    recorder,
    data_seconds: float,
    started: float,
    paths: dict[str, Any],
    memory_estimate=None,
) -> dict[str, Any]:
    """What results.json holds. Loggers are closed and plots drawn first (the plots read
    the run's own logs/*/metrics.csv). `recorder`: the run's TrainingRecorder; `paths`:
    output_dir, the checkpoints ("best", "last": None when none was written), exports,
    predictions; `memory_estimate`: the memory plan's (lit_ft/training/memory_plan.py)."""
    finish(trainer.loggers)
    plots = plot_run(paths["output_dir"])
    training = recorder.summary()
    best, last = paths.pop("best"), paths.pop("last")
    found = [cb for cb in trainer.callbacks if isinstance(cb, ThroughputLogger)]
    estimate = memory_estimate
    return {
        "task": task.name,
        **task.report(),
        "headline_metric": task.headline,
        "training_loss": task.loss_choice.text() if task.loss_choice else None,
        "metrics": {**metrics, "train": training},
        "tokens_per_s": training["tokens_per_s"],
        "memory": {
            "estimated_mb": round(estimate.total / 2**20, 1) if estimate else None,
            "estimate_parts_mb": {k: round(v / 2**20, 1) for k, v in estimate.parts.items()}
            if estimate
            else None,
            "measured_peak_mb": training["peak_memory_mb"],
            "measured_by": training["peak_memory_measured_by"],
            "gradient_checkpointing": estimate.checkpointing if estimate else None,
        },
        "throughput": found[0].summary() if found else None,  # tokens/s, MFU after warm-up
        "data_prep_s": round(data_seconds, 3),
        "wall_time_s": round(time.perf_counter() - started, 2),
        "best_checkpoint": best or last,
        "last_checkpoint": last,
        **{key: str(value) if value else None for key, value in paths.items()},
        "plots": [str(path) for path in plots],
    }


def write_results(results: dict[str, Any], task) -> None:
    """results.json in the run directory, and the end-of-run line."""
    output_dir = Path(results["output_dir"])
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    before, after = results["metrics"]["before"], results["metrics"]["after"]
    name, label = task.headline, task.headline_label
    digits = 2 if name.endswith("ppl") else 4
    headline = f"{label} {after[name]:.{digits}f}" if name in after else "not validated"
    if before and name in before and name in after:
        headline = f"{label} {before[name]:.{digits}f} -> {after[name]:.{digits}f}"
    memory = results["memory"]
    if memory["measured_peak_mb"]:
        estimated = memory["estimated_mb"]
        estimated = f"estimated {gigabytes(estimated * 2**20)}, " if estimated else ""
        say(
            f"memory: {estimated}measured {gigabytes(memory['measured_peak_mb'] * 2**20)} "
            f"({memory['measured_by']})"
        )
    rate = results["tokens_per_s"]  # None: no training step was timed (nothing to train)
    rate = f"{rate:,.1f} tokens/s" if rate is not None else "no training step timed"
    say(
        f"done in {results['wall_time_s']:.1f}s: {headline}; {rate}; "
        f"model: {results['export_dir']}; results: {output_dir}/results.json"
    )
