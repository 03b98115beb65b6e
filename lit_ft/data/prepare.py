"""The run's data step: tokenizer and model config, the task, its datamodule, loaded and
tokenized, before any model is built (so bad data is refused in seconds, not after loading
weights). `lit_ft.run` calls `prepare_data`; the benchmarks build their data with
`build_task_and_data`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from lit_ft.config import to_plain
from lit_ft.data.datamodule import build_datamodule
from lit_ft.data.sources import clamp_block_size
from lit_ft.errors import LitFtError
from lit_ft.model.build import (
    ModelSpec,
    load_config,
    load_processor,
    load_tokenizer,
    max_positions,
)
from lit_ft.tasks import COLUMN_KEYS, build_task, check_architecture, get_task


@dataclass
class PreparedData:
    tokenizer: Any
    hf_config: Any  # the model's config, with what the data decided (labels) written in
    task: Any
    datamodule: Any
    seconds: float  # loading + tokenizing (a cached second run: well under 1 s)
    # A vision-language model's AutoProcessor (image processor + the tokenizer above), which
    # the task feeds images through and the export saves beside the model; None for text.
    processor: Any = None


def build_task_and_data(cfg, tokenizer, hf_config, given_splits=None):
    """The task (conf/task) and its datamodule (conf/data): the data's column keys and block
    size go to the task, the rest to the datamodule. `given_splits`: raw splits handed over
    as objects (lit_ft/data/given.py), read instead of `data.path`."""
    data_options, task_options = to_plain(cfg.data), to_plain(cfg.task)
    task = build_task(
        task_options.pop("name"),
        tokenizer,
        columns={key: data_options.pop(key) for key in COLUMN_KEYS},
        max_length=clamp_block_size(
            data_options.pop("block_size"),
            max_positions(hf_config),
            getattr(tokenizer, "model_max_length", None),
        ),
        add_eos=data_options.pop("add_eos"),
        truncation=data_options.pop("truncation", "cut"),
        **task_options,
    )
    if given_splits is not None:
        data_options["given"] = given_splits
    iterations = getattr(task, "num_iterations", 1)  # GRPO: each window trained mu times
    if iterations > 1:
        data_options["repeat_windows"] = (cfg.trainer.accumulate_grad_batches, iterations)
    return task, build_datamodule(tokenizer, task, seed=cfg.seed, **data_options)


def prepare_data(cfg, spec: ModelSpec, given=None) -> PreparedData:
    """Tokenizer and model config, then the data, loaded and tokenized. `given`
    (lit_ft.steps.Given): a given model brings its own config, a given tokenizer replaces
    loading one, given splits replace `data.path`."""
    tokenizer = getattr(given, "tokenizer", None)
    if tokenizer is None:  # (not `or`: a tokenizer's truth is its length)
        tokenizer = load_tokenizer(spec)
    if tokenizer.pad_token is None:  # as load_tokenizer does: padding is masked, EOS is safe
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model = getattr(given, "model", None)
    hf_config = model.config if model is not None else load_config(spec)
    check_architecture(get_task(spec.task), hf_config.model_type)  # before the data's work
    task, datamodule = build_task_and_data(
        cfg, tokenizer, hf_config, getattr(given, "splits", None)
    )
    processor = None
    if getattr(task, "needs_processor", False):  # images: the model's processor reads them
        processor = load_processor(spec, tokenizer)
        task.use_processor(processor)
    collator = getattr(given, "data_collator", None)
    if collator is not None:
        if not hasattr(datamodule, "data_collator"):
            raise LitFtError("data_collator does not apply to data.streaming=true's blocks")
        datamodule.data_collator = collator
    import datasets  # noqa: F401  (imported here so the timing below is the data's own)

    started = time.perf_counter()
    datamodule.prepare_data()
    datamodule.setup("fit")
    seconds = time.perf_counter() - started
    if model is not None:
        check_given_head(task, model)
    task.configure_model(hf_config)  # labels found in the data: num_labels, id2label
    return PreparedData(tokenizer, hf_config, task, datamodule, seconds, processor)


def check_given_head(task, model) -> None:
    """A given classification model's head must have one unit per label the data has: lit_ft
    builds the head from the data, but a built model's is fixed."""
    labels = getattr(task, "labels", None)
    if labels and model.config.num_labels != len(labels):
        raise LitFtError(
            f"the given {type(model).__name__} has {model.config.num_labels} labels, the data "
            f"{len(labels)} ({', '.join(labels[:10])}); build it with num_labels={len(labels)}"
        )
