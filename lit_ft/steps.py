"""The steps of one run, in the order `lit_ft.run.run_job` takes them, each owned by the
package whose job it is; this module only names them in story order.

`run.py` tells the story and stays light to import, so the command line answers `--help`,
`--cfg job` and config errors before torch is loaded; importing this module is the one
place a run loads the heavy stack (torch, Lightning, transformers, datasets). Steps take
plain values and objects the entry point instantiated, never a config group to
instantiate themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lightning import seed_everything

from lit_ft.data.prepare import PreparedData, build_task_and_data, prepare_data
from lit_ft.evaluate import lm_eval_at_end
from lit_ft.export import export_model, export_run
from lit_ft.hub import check_run_sources
from lit_ft.model.network import build_network
from lit_ft.observe.plan import print_plan, show_training_example
from lit_ft.observe.results import results, write_results
from lit_ft.run_dir import write_config
from lit_ft.training.amp import PrecisionChoice, choose_precision
from lit_ft.training.callbacks import run_callbacks
from lit_ft.training.checkpoint import check_resume_fits, last_checkpoint, resolve_resume
from lit_ft.training.elastic import keep_global_batch_on_resume
from lit_ft.training.evaluation import (
    evaluate,
    evaluate_final,
    evaluate_start,
    prediction_rows,
    test,
    use_compute_metrics,
    write_predictions,
)
from lit_ft.training.memory_plan import plan_memory
from lit_ft.training.optim import count_optimizer_steps


@dataclass
class Given:
    """Objects handed to the run instead of what the config names (lit_ft.FineTuner): the raw
    splits (lit_ft/data/given.py) for `data.*`'s source, a built model and its tokenizer for
    `model.name_or_path`, Lightning callbacks beside the configured ones, and a function with
    the HF Trainer's compute_metrics contract (lit_ft/tasks/metrics.py UserMetrics) with its
    preprocess_logits_for_metrics."""

    splits: dict[str, Any] | None = None
    model: Any = None
    tokenizer: Any = None
    callbacks: list = field(default_factory=list)
    compute_metrics: Callable | None = None
    preprocess_logits_for_metrics: Callable | None = None
    data_collator: Callable | None = None  # in place of the task's (lit_ft/data/datamodule.py)


__all__ = [  # in the order a run takes them
    "Given",
    "write_config",  # lit_ft/run_dir.py
    "check_run_sources",  # lit_ft/hub.py
    "resolve_resume",  # lit_ft/training/checkpoint.py
    "run_callbacks",  # lit_ft/training/callbacks.py
    "PrecisionChoice",
    "choose_precision",  # lit_ft/training/amp.py
    "keep_global_batch_on_resume",  # lit_ft/training/elastic.py
    "seed_everything",  # Lightning's
    "PreparedData",
    "prepare_data",
    "build_task_and_data",  # lit_ft/data/prepare.py
    "check_resume_fits",  # lit_ft/training/checkpoint.py
    "count_optimizer_steps",  # lit_ft/training/optim.py
    "build_network",  # lit_ft/model/network.py
    "use_compute_metrics",  # lit_ft/training/evaluation.py
    "plan_memory",  # lit_ft/training/memory_plan.py
    "print_plan",
    "show_training_example",  # lit_ft/observe/plan.py
    "evaluate",
    "evaluate_start",
    "evaluate_final",
    "test",
    "write_predictions",
    "prediction_rows",  # lit_ft/training/evaluation.py
    "last_checkpoint",  # lit_ft/training/checkpoint.py
    "export_run",
    "export_model",  # lit_ft/export.py
    "lm_eval_at_end",  # lit_ft/evaluate.py
    "results",
    "write_results",  # lit_ft/observe/results.py
]
