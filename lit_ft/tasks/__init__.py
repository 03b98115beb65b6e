"""The task table: the one place where a fine-tuning task plugs in.

A task is a class (one file each in this package) that knows four things:

- the Auto class that puts the right head on `config.model_type` (`auto_class`);
- which data columns it reads (`columns`: keys of the data config such as `label_column`);
- how raw rows become model inputs (`preprocess`) and how those become batches (`collate`);
- what to measure on held-out data (`evaluator`) and what to write as predictions (`predict`).

`python -m lit_ft.run task=<name>` picks one; its options live in `conf/task/<name>.yaml`.
"""

from __future__ import annotations

from lit_ft.errors import LitFtError
from lit_ft.problems import Problems
from lit_ft.tasks.base import Task, TaskContext
from lit_ft.tasks.causal_lm import CausalLMTask
from lit_ft.tasks.dpo import PreferenceTask
from lit_ft.tasks.grpo import GRPOTask
from lit_ft.tasks.masked_lm import MaskedLMTask
from lit_ft.tasks.reward_model import RewardModelTask
from lit_ft.tasks.seq2seq import Seq2SeqTask
from lit_ft.tasks.sequence_classification import SequenceClassificationTask
from lit_ft.tasks.sft import InstructionTask
from lit_ft.tasks.token_classification import TokenClassificationTask
from lit_ft.tasks.user_functions import function_problems
from lit_ft.tasks.vision import VisionInstructionTask

TASKS: dict[str, type[Task]] = {
    task.name: task
    for task in (
        CausalLMTask,
        InstructionTask,
        SequenceClassificationTask,
        TokenClassificationTask,
        Seq2SeqTask,
        MaskedLMTask,
        PreferenceTask,
        RewardModelTask,
        GRPOTask,
        VisionInstructionTask,
    )
}

# Every data-config key that names a column, whichever task reads it.
COLUMN_KEYS: tuple[str, ...] = tuple(
    dict.fromkeys(key for task in TASKS.values() for key in (*task.columns, *task.optional_columns))
)

__all__ = [
    "COLUMN_KEYS",
    "TASKS",
    "Task",
    "TaskContext",
    "build_task",
    "check_architecture",
    "get_task",
]


def build_task(
    name: str,
    tokenizer,
    columns: dict[str, str | None],
    max_length: int,
    add_eos: bool = False,
    truncation: str = "cut",
    compute_metrics=None,  # the evaluation's (lit_ft/training/evaluation.py), not the task's
    monitor=None,  # the metric the callbacks watch (conf/callbacks), not the task's either
    monitor_mode=None,
    monitor_label=None,
    **options,
) -> Task:
    """The task `name` with its options (conf/task/<name>.yaml) and the data's column names."""
    task = get_task(name)(tokenizer, columns, max_length, **options)
    task.add_eos = add_eos and tokenizer.eos_token_id is not None
    task.truncation = truncation
    return task


def get_task(name: str) -> type[Task]:
    try:
        return TASKS[name]
    except KeyError:
        raise LitFtError(f"unknown task '{name}'; available: {', '.join(TASKS)}") from None


# Each Auto class's table of model types, by the public name transformers gives it in
# `transformers.models.auto.modeling_auto` (the Auto class's own copy is private).
MAPPING_NAMES = {
    "AutoModelForCausalLM": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "AutoModelForMaskedLM": "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "AutoModelForSeq2SeqLM": "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    "AutoModelForSequenceClassification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForTokenClassification": "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForImageTextToText": "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
}


def supported_model_types(task: type[Task]) -> list[str]:
    """Model types (`config.model_type`) that the task's Auto class can build."""
    from transformers.models.auto import modeling_auto

    return sorted(getattr(modeling_auto, MAPPING_NAMES[task.auto_class]))


def check_architecture(task: type[Task], model_type: str) -> None:
    """Refuse a model whose architecture has no head for the task, before any weights load."""
    supported = supported_model_types(task)
    if model_type not in supported:
        raise LitFtError(
            f"model type '{model_type}' has no {task.auto_class} head, so it cannot do task "
            f"'{task.name}'; model types that can: {', '.join(supported)}"
        )


def task_problems(name: str, data, options=None) -> Problems:
    """An unknown task, a column the task reads that the data config leaves empty, or a bad
    value of the task's own options (conf/task/<name>.yaml, checked by the task class)."""
    problems = Problems()
    task = TASKS.get(name)
    problems.need(task is not None, f"task.name='{name}' is unknown; available: {', '.join(TASKS)}")
    for key in task.columns if task else ():
        problems.need(bool(data.get(key)), f"task '{task.name}' reads data.{key}, which is empty")
    if task is not None and options is not None:
        problems += task.option_problems(options)
        metrics = options.get("compute_metrics")
        problems += function_problems(metrics, "task.compute_metrics")
        problems.need(
            metrics is None or task.sequences_per_row == 1,
            f"task.compute_metrics: task '{task.name}' scores {task.row_name} of "
            f"{task.sequences_per_row} sequences, which the compute_metrics contract (logits "
            "and labels of one sequence per row) cannot hold; its own metrics are logged",
        )
    return problems
