"""`lit_ft.FineTuner`: the run as an object, for Python and notebooks, shaped like the
Hugging Face Trainer (datasets, a model, compute_metrics in; train, evaluate, predict,
save_model out).

It is `lit_ft.train(cfg)` with objects in place of what the config would load: the same
steps (lit_ft/run.py `run_job`, lit_ft/steps.py), the same run directory, results.json and
checkpoints. Datasets given as objects go through the same datamodule and task preprocessing
as files (lit_ft/data/given.py); what came as objects is recorded under `given` in
config.yaml and results.json.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from lit_ft.config import compose
from lit_ft.errors import LitFtError


class FineTuner:
    """One fine-tuning run from Python.

    `config_or_overrides`: Hydra overrides as the command line takes them
    (`["task=sequence_classification", "trainer.max_steps=50"]`) or a composed config
    (`lit_ft.compose([...])`, copied). `train_dataset` / `eval_dataset`: a `datasets.Dataset`
    (or a `DatasetDict` with a `train` split, as `train_dataset`), a pandas DataFrame or a list
    of dicts, with the raw columns `data.*_column` name; without them `data.*` is read.
    `model`: a built `PreTrainedModel` of the task's kind, trained instead of
    `model.name_or_path` (with `tokenizer`, or one saved beside the model's own path).
    `data_collator`: the HF Trainer's contract (a list of rows in, a batch out) in place of
    the task's padding; it gets the task's tokenized rows (input_ids, labels, ...) and must
    return tensors `input_ids` and `labels` (checked on its first batch).
    `compute_metrics`: the HF Trainer's contract (an `EvalPrediction` in, a dict of numbers
    out), logged as `val/<name>`, for every task of one sequence per row; per-token tasks get
    [rows, tokens] labels padded with -100, and language models the argmax token ids unless
    `preprocess_logits_for_metrics(logits, labels)` makes something else of each batch.
    `callbacks`: Lightning callbacks added to the configured ones, and Hugging Face
    TrainerCallbacks (instances or classes), driven through lit_ft/training/hf_callbacks.py
    with their events, state and control flags.
    """

    def __init__(
        self,
        config_or_overrides: DictConfig | Sequence[str] = (),
        *,
        train_dataset=None,
        eval_dataset=None,
        model=None,
        tokenizer=None,
        data_collator: Callable | None = None,
        compute_metrics: Callable | None = None,
        preprocess_logits_for_metrics: Callable | None = None,
        callbacks: Sequence | None = None,
    ):
        from lit_ft.steps import Given

        if isinstance(config_or_overrides, DictConfig):
            cfg = copy.deepcopy(config_or_overrides)  # the caller's config stays as it was
        elif isinstance(config_or_overrides, str):
            raise LitFtError("FineTuner takes a list of overrides, e.g. ['trainer.max_steps=50']")
        else:
            cfg = compose(list(config_or_overrides))
        self.cfg = cfg
        # What came as objects, each in place of what the config would load; `record` is
        # what results.json and the run's config say of them (cfg.given).
        given, record = Given(), {}
        _give_data(cfg, given, record, train_dataset, eval_dataset)
        _give_model(cfg, given, record, model, tokenizer)
        _give_functions(
            cfg, given, record, data_collator, compute_metrics, preprocess_logits_for_metrics
        )
        _give_callbacks(cfg, given, record, callbacks)
        if record:
            with open_dict(cfg):
                cfg.given = record
        self._given = given
        self._job = None

    # -- the run ---------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | Path | bool | None = None) -> dict[str, Any]:
        """Fine-tune; return what results.json holds. `resume_from_checkpoint`: a checkpoint
        path, `"last"` or True (this run directory's newest), as `ckpt_path=` takes."""
        from lit_ft.run import run_job

        if resume_from_checkpoint is not None and resume_from_checkpoint is not False:
            path = "last" if resume_from_checkpoint is True else str(resume_from_checkpoint)
            self.cfg.ckpt_path = path
        self._job = run_job(self.cfg, self._given)
        return self._job.results

    @property
    def results(self) -> dict[str, Any] | None:
        """What results.json holds, once `train()` has run."""
        return self._job.results if self._job else None

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.paths.output_dir)

    # -- after training --------------------------------------------------------------------
    def evaluate(self, eval_dataset=None) -> dict[str, float]:
        """The trained model's validation metrics (`val/loss`, `val/accuracy`, ... and what
        compute_metrics adds): on the run's validation split, or on `eval_dataset` (any kind
        train_dataset takes but a DatasetDict), tokenized as the training data was."""
        from lit_ft import steps

        job = self._trained("evaluate")
        split = "validation"
        if eval_dataset is not None:
            split = self._add_split("eval_dataset", eval_dataset, labelled=True)
        loader = job.data.datamodule.eval_loader(split)
        with _loggers_off(job.trainer):  # the run's logs and plots are of its own validation
            return steps.evaluate(job.trainer, job.module, dataloaders=loader)

    def predict(self, dataset) -> list[dict[str, Any]]:
        """One row per example, as predictions.jsonl holds them: the input as given, the
        prediction (a label name where the task has names) and the label when the row has
        one. Tasks that predict: classification, seq2seq, instruction."""
        from lit_ft import steps

        job = self._trained("predict")
        if not job.module.task.predicts:
            raise LitFtError(
                f"task={job.module.task.name} predicts nothing (classification, token "
                "classification, seq2seq and instruction do); evaluate() gives its metrics"
            )
        split = self._add_split("dataset", dataset, labelled=False)
        with _loggers_off(job.trainer):
            rows = steps.prediction_rows(job.trainer, job.module, job.data.datamodule, split)
        return [{k: v for k, v in row.items() if k != "split"} for row in rows]

    def save_model(self, output_dir: str | Path) -> Path:
        """The weights the run hands on (the best checkpoint's when it beat the end), with the
        tokenizer, in Hugging Face format: the export a run writes to hf_model/."""
        from lit_ft import steps

        job = self._trained("save_model")
        data = job.data
        return steps.export_model(
            job.trainer, job.module.model, data.tokenizer, Path(output_dir), job.best,
            data.processor,
        )  # fmt: skip

    def push_to_hub(self, repo_id: str, private: bool = True, commit_message: str = "") -> str:
        """Upload the export to a Hub model repo (lit_ft/hub.py); checked first, so offline,
        without a token or a repo id it says so and uploads nothing."""
        from lit_ft.hub import check_push_to_hub, push_to_hub

        job = self._trained("push_to_hub")
        check_push_to_hub(True, repo_id)
        folder = job.results.get("export_dir") or self.save_model(self.run_dir / "hf_model")
        return push_to_hub(folder, repo_id, private=private, commit_message=commit_message)

    # -- plumbing --------------------------------------------------------------------------
    def _trained(self, method: str):
        if self._job is None:
            raise LitFtError(f"FineTuner.{method}() needs a trained model: call train() first")
        return self._job

    def _add_split(self, what: str, obj, labelled: bool) -> str:
        """`obj` as one more split of the run's datamodule, preprocessed by its task."""
        import datasets

        from lit_ft.data.given import as_dataset

        if isinstance(obj, datasets.DatasetDict):
            raise LitFtError(f"{what} is a DatasetDict: give one split (e.g. ds['test'])")
        dataset, _ = as_dataset(obj, what)
        datamodule = self._job.data.datamodule
        split = f"{what}_{len(datamodule.datasets)}"  # a fresh name per call
        datamodule.add_split(split, dataset, labelled=labelled)
        return split


def _tokenizer_beside(model):
    """The tokenizer saved with a model loaded from a directory or the Hub."""
    from lit_ft.model.build import ModelSpec, load_tokenizer

    path = getattr(model, "name_or_path", "") or ""
    if not path:
        raise LitFtError(
            f"the given {type(model).__name__} has no name_or_path to load a tokenizer from: "
            "pass tokenizer= as well"
        )
    return load_tokenizer(ModelSpec(name_or_path=path))


@contextmanager
def _loggers_off(trainer):
    """Evaluations after the run are the caller's: kept out of the run's metrics.csv."""
    loggers = trainer.loggers
    trainer.loggers = []
    try:
        yield
    finally:
        trainer.loggers = loggers


# -- objects given to FineTuner, in place of what the config would load ---------------------
def _give_data(cfg, given, record: dict, train_dataset, eval_dataset) -> None:
    if eval_dataset is not None and train_dataset is None:
        raise LitFtError("eval_dataset without train_dataset: give both, or neither")
    if train_dataset is None:
        return
    from lit_ft.data.given import given_splits

    given.splits, record["data"] = given_splits(train_dataset, eval_dataset)
    with open_dict(cfg):  # the source is the objects: no path or files to read
        cfg.data.path = cfg.data.name = cfg.data.data_files = cfg.data.corpus = None


def _give_model(cfg, given, record: dict, model, tokenizer) -> None:
    if model is not None:
        given.model, given.tokenizer = model, tokenizer or _tokenizer_beside(model)
        record["model"] = {
            "kind": type(model).__name__,
            "name_or_path": getattr(model, "name_or_path", "") or None,
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        with open_dict(cfg):
            cfg.model.name_or_path = record["model"]["name_or_path"] or type(model).__name__
            cfg.model.model_type = cfg.model.config_overrides = cfg.model.tokenizer = None
            cfg.model.from_scratch = False
    elif tokenizer is not None:
        given.tokenizer = tokenizer
    if given.tokenizer is not None:
        record["tokenizer"] = {"kind": type(given.tokenizer).__name__}


def _give_functions(
    cfg, given, record: dict, data_collator, compute_metrics, preprocess_logits
) -> None:
    if data_collator is not None:
        if not callable(data_collator):
            raise LitFtError("data_collator must be a function of a list of rows")
        given.data_collator = data_collator
        record["data_collator"] = getattr(data_collator, "__name__", type(data_collator).__name__)
    if compute_metrics is None:
        return
    if not callable(compute_metrics):
        raise LitFtError("compute_metrics must be a function of an EvalPrediction")
    from lit_ft.tasks import get_task

    task = get_task(cfg.task.name)
    if task.sequences_per_row != 1:
        raise LitFtError(
            f"compute_metrics: task={task.name} scores {task.row_name} of "
            f"{task.sequences_per_row} sequences, which the compute_metrics contract "
            "(logits and labels of one sequence per row) cannot hold"
        )
    given.compute_metrics = compute_metrics
    given.preprocess_logits_for_metrics = preprocess_logits
    record["compute_metrics"] = getattr(compute_metrics, "__name__", repr(compute_metrics))


def _give_callbacks(cfg, given, record: dict, callbacks) -> None:
    from lit_ft.training.hf_callbacks import HFCallbacks, split_callbacks

    given.callbacks, hf_callbacks = split_callbacks(callbacks)
    if hf_callbacks:  # one Lightning callback drives them all (training/hf_callbacks.py)
        given.callbacks.append(
            HFCallbacks(
                hf_callbacks,
                output_dir=cfg.paths.output_dir,
                seed=cfg.seed,
                batch_size=cfg.data.batch_size,
                checkpoint_dir=cfg.paths.checkpoint_dir,
            )
        )
    if given.callbacks:
        record["callbacks"] = [type(c).__name__ for c in callbacks]
