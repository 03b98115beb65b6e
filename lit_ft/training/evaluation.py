"""The run's evaluations: the starting model ("before"), the weights training hands on
("after", from the best checkpoint when it beats the end), the labelled test split, and
predictions.jsonl. Each returns plain floats under lit_ft's names (`val/loss`, ...)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lit_ft.data.row_index import ROW_KEY
from lit_ft.log import say
from lit_ft.observe.step_numbers import without_step
from lit_ft.tasks.base import VOCABULARY_LOGITS
from lit_ft.tasks.metrics import UserMetrics, argmax_logits
from lit_ft.tasks.user_functions import load_function


def use_compute_metrics(
    module, compute_metrics: Callable | str | None, preprocess_logits: Callable | None = None
) -> None:
    """Validation and test report what `compute_metrics` (the HF Trainer's contract; a
    function, or `task.compute_metrics`' module:function) returns beside the task's metrics
    (lit_ft/tasks/metrics.py UserMetrics). Tasks whose logits span the vocabulary hand it
    their argmax unless `preprocess_logits` (HF's preprocess_logits_for_metrics) says else."""
    if compute_metrics is None:
        return
    if isinstance(compute_metrics, str):
        compute_metrics = load_function(compute_metrics, "task.compute_metrics")
    if preprocess_logits is None and module.task.auto_class in VOCABULARY_LOGITS:
        preprocess_logits = argmax_logits
    module.evaluator = UserMetrics(module.evaluator, compute_metrics, preprocess_logits)


def evaluate(
    trainer, module, datamodule=None, ckpt_path: str | None = None, dataloaders=None
) -> dict[str, float]:
    """The validation metrics (`val/...`) of the datamodule's validation split, or of
    `dataloaders` (FineTuner.evaluate on a dataset of its own)."""
    found = trainer.validate(
        module, dataloaders, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False
    )
    # trainer.limit_val_batches=0: Lightning validates nothing and returns no metrics
    found = without_step(found[0]) if found else {}
    return {key: float(value) for key, value in found.items()}


def evaluate_start(trainer, module, datamodule, resume, enabled: bool) -> dict[str, float] | None:
    """The starting model's metrics ("before"). A resumed run does not validate again: its
    weights are not loaded yet, and its starting model was scored by the run's first life,
    whose figures the checkpoint carries (FineTuneModule.on_save_checkpoint)."""
    if resume is not None:
        before = resume.checkpoint.get("lit_ft", {}).get("before")
        if before:
            say("validation before training: the run's first life's, from the checkpoint")
    else:
        before = evaluate(trainer, module, datamodule) if enabled else None
    module.before_metrics = before
    return before


def evaluate_final(trainer, module, datamodule) -> tuple[dict[str, float], str | None]:
    """The metrics of the weights the run hands on, and the checkpoint they come from when an
    earlier one beats the end (None: the final weights)."""
    after = evaluate(trainer, module, datamodule)  # the weights training ended with
    best = better_checkpoint(trainer, after)
    if best is not None:  # an earlier checkpoint beats the end: load and report that one
        after = evaluate(trainer, module, datamodule, ckpt_path=best)
    return after, best


def better_checkpoint(trainer, final: dict[str, float]) -> str | None:
    """The best checkpoint if it beats the final weights on the monitored metric, else None.

    Training that stops at max_steps between validations ends with weights no checkpoint
    has scored, so "best" is decided against a fresh evaluation of the final weights.
    """
    # The checkpoint stream that tracks a validation metric (not the step-retention one).
    monitored = [cb for cb in trainer.checkpoint_callbacks if getattr(cb, "monitor", None) in final]
    callback = monitored[0] if monitored else None
    if callback is None or not callback.best_model_path or callback.best_model_score is None:
        return None
    best, end = float(callback.best_model_score), final.get(callback.monitor)
    if end is None:
        return callback.best_model_path
    beats = best < end if callback.mode == "min" else best > end
    return callback.best_model_path if beats else None


def test(trainer, module, datamodule) -> dict[str, float] | None:
    """The labelled test split's metrics (`data.test_split`), when the data has one."""
    if "test" not in datamodule.datasets:
        return None
    (metrics,) = trainer.test(module, datamodule=datamodule, verbose=False)
    metrics = {key: float(value) for key, value in without_step(metrics).items()}
    # Printed as the validations are (4 significant digits); results.json keeps full precision.
    say("test: " + " ".join(f"{key} {value:.4g}" for key, value in metrics.items()))
    return metrics


def write_predictions(trainer, module, datamodule, output_dir: Path) -> Path | None:
    """predictions.jsonl: input, prediction and label for each row of the test split (or of
    validation when there is no labelled test split). Tasks with nothing to predict skip it."""
    if not module.task.predicts:
        return None
    path = output_dir / "predictions.jsonl"
    with open(path, "w", encoding="utf-8") as out:
        for line in prediction_rows(trainer, module, datamodule, datamodule.predict_split):
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
    return path


def prediction_rows(trainer, module, datamodule, split: str) -> list[dict[str, Any]]:
    """predictions.jsonl's rows for one split of the datamodule: the row's input as the data
    holds it (case, spacing, past max_length; not decoded ids), prediction, label."""
    batches = trainer.predict(module, dataloaders=datamodule.eval_loader(split, indexed=True))
    lines = []
    for row in (row for batch in batches for row in batch):
        index = row.pop(ROW_KEY, None)
        raw = datamodule.raw_row(split, index) if index is not None else {}
        # rows given tokenized: their input_ids are the input as the data holds it
        given = {"input_ids": raw["input_ids"]} if getattr(datamodule, "tokenized", 0) else None
        lines.append({"split": split, **(given or module.task.prediction_inputs(raw)), **row})
    return lines
