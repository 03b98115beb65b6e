"""The task table: the one place where a fine-tuning task plugs in.

A task names the Auto class that resolves the model head for `config.model_type`. Data
preparation and metrics key off the same name (`lit_ft.data`, `lit_ft.module`); a new task adds
a row here and its pieces there.
"""

from __future__ import annotations

from dataclasses import dataclass

from lit_ft.errors import LitFtError


@dataclass(frozen=True)
class Task:
    name: str
    auto_class: str  # attribute of `transformers`, resolved lazily so importing lit_ft stays fast
    description: str

    def model_class(self):
        import transformers

        return getattr(transformers, self.auto_class)


TASKS: dict[str, Task] = {
    "causal-lm": Task(
        "causal-lm", "AutoModelForCausalLM", "next-token prediction on text split into blocks"
    ),
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise LitFtError(f"unknown task '{name}'; available: {', '.join(TASKS)}") from None


def supported_model_types(task: Task) -> list[str]:
    """Model types (`config.model_type`) that the task's Auto class can build."""
    return sorted(task.model_class()._model_mapping._model_mapping)


def check_architecture(task: Task, model_type: str) -> None:
    """Refuse a model whose architecture has no head for the task, before any weights load."""
    supported = supported_model_types(task)
    if model_type not in supported:
        raise LitFtError(
            f"model type '{model_type}' has no {task.auto_class} head, so it cannot do task "
            f"'{task.name}'; model types that can: {', '.join(supported)}"
        )
