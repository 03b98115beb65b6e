"""The callbacks every run has, whatever `callbacks/` configures: what exact resumption,
preemption and the NaN stop rely on, one step numbering, and the recorder behind
results.json."""

from __future__ import annotations

from lit_ft.log import quiet_known_noise
from lit_ft.model.peft import AdapterCheckpoint
from lit_ft.observe.completions import CompletionsLog
from lit_ft.observe.quiet import quiet_libraries
from lit_ft.observe.recorder import TrainingRecorder
from lit_ft.observe.step_numbers import StepNumbers
from lit_ft.observe.throughput import ThroughputLogger
from lit_ft.training.elastic import GlobalBatchRecord
from lit_ft.training.nonfinite import StopOnNonFiniteLoss
from lit_ft.training.preemption import PreemptionCheckpoint
from lit_ft.training.rng import RngState


def run_callbacks(
    configured: list,
    checkpoint_dir: str,
    lora,
    started: float | None = None,
    output_dir: str | None = None,
) -> tuple[list, TrainingRecorder]:
    """The configured callbacks plus the always-on ones, and the recorder. `started`: the
    run's start (time.perf_counter()), which time to first step counts from; `output_dir`:
    where completions.jsonl goes (written only by tasks that sample, GRPO)."""
    quiet_known_noise()  # e.g. Lightning's mid-epoch-resume warning, wrong for our loader
    quiet_libraries()  # Lightning's INFO lines, progress bars in files (lit_ft/observe/quiet.py)
    for callback in configured:
        if isinstance(callback, ThroughputLogger) and started is not None:
            callback.run_started = started  # the same start as results.json's wall_time_s
    recorder = TrainingRecorder()
    always = [
        RngState(),
        PreemptionCheckpoint(checkpoint_dir),
        StopOnNonFiniteLoss(checkpoint_dir),
        GlobalBatchRecord(),  # resuming on other hardware keeps the global batch
        StepNumbers(),  # one step numbering in console, logs and plots
    ]
    if output_dir is not None:
        always.append(CompletionsLog(output_dir))  # a no-op unless the task samples
    adapters = [AdapterCheckpoint(lora)] if lora else []  # adapter-only checkpoints
    return [*configured, recorder, *always, *adapters], recorder
