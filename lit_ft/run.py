"""Fine-tune a Hugging Face model: `python -m lit_ft.run [overrides]`.

The story: validate -> seed -> data -> model -> callbacks and loggers -> Trainer ->
evaluate the starting model -> fit -> evaluate the best checkpoint -> export -> results.json.
`train(cfg)` is the whole run and is what notebooks call (`lit_ft.train_from_overrides`);
`main()` only adds Hydra's command line and returns the metric a sweep optimizes.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from lit_ft.config import compose, config_dir, validate_config
from lit_ft.errors import EXIT_USER_ERROR, LitFtError


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one fine-tuning job described by a composed config; return what results.json holds."""
    from lit_ft.distributed import is_global_zero
    from lit_ft.run_lock import hold_run_dir

    started = time.perf_counter()
    validate_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    leader = is_global_zero()  # under DDP, only rank 0 writes files and prints the summaries
    with hold_run_dir(output_dir, leader):  # a second live run on this directory is refused
        return _train(cfg, output_dir, leader, started)


def _train(cfg: DictConfig, output_dir: Path, leader: bool, started: float) -> dict[str, Any]:
    import lightning as L

    from lit_ft.checkpoint import (
        AtomicCheckpointIO,
        RngState,
        check_same_data,
        check_same_model,
        resolve_ckpt_path,
    )
    from lit_ft.export import export_checkpoint, export_pretrained
    from lit_ft.hub import check_hub_sources, check_push_to_hub, push_to_hub
    from lit_ft.loggers import finish, log_config
    from lit_ft.mixed_precision import precision_plugins
    from lit_ft.model import ModelSpec, build_model, load_config, load_tokenizer
    from lit_ft.module import FineTuneModule
    from lit_ft.nonfinite import StopOnNonFiniteLoss
    from lit_ft.optim import optimizer_steps
    from lit_ft.peft_adapter import AdapterCheckpoint, prepare_model, quantization_kwargs
    from lit_ft.plots import plot_run
    from lit_ft.precision import resolve_precision
    from lit_ft.preemption import PreemptionCheckpoint
    from lit_ft.recorder import TrainingRecorder
    from lit_ft.speed import compile_model
    from lit_ft.strategy import shards_weights
    from lit_ft.vocab import pad_vocab

    if leader:
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    spec = ModelSpec(task=cfg.task.name, **_plain(cfg.model))
    check_hub_sources(spec.name_or_path, spec.tokenizer_name, cfg.data.path, cfg.data.name)
    hub_upload = _plain(cfg.push_to_hub)
    check_push_to_hub(hub_upload["enabled"], hub_upload["repo_id"])  # now, not after training
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, cfg.paths.checkpoint_dir)

    lora = hydra.utils.instantiate(cfg.peft) if cfg.get("peft") else None  # peft=lora
    recorder = TrainingRecorder()
    # Lightning warns that a mid-epoch resume repeats data unless the loader is stateful; ours
    # resumes through the datamodule's state (lit_ft/sampler.py), so the warning is wrong here.
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")
    # Always on, whatever callbacks/ says: what exact resumption and preemption rely on.
    resumption = [RngState(), PreemptionCheckpoint(cfg.paths.checkpoint_dir)]
    resumption.append(StopOnNonFiniteLoss(cfg.paths.checkpoint_dir))  # no NaN checkpoint
    callbacks = [*_instantiate_all(cfg.callbacks), recorder, *resumption]
    callbacks += [AdapterCheckpoint(lora)] if lora else []  # adapter-only checkpoints
    precision, why = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    if leader:
        print(f"[lit_ft] precision {precision} ({why})", flush=True)
    # The Trainer first: a trainer setting this machine cannot run fails before data work.
    # bf16-/16-mixed come as lit_ft's plugin (clipping with the fused AdamW); a precision
    # plugin and a `precision` flag together are refused by Lightning, so one or the other.
    amp = precision_plugins(precision, cfg.trainer.accelerator, _plain(cfg.trainer).get("strategy"))
    try:
        trainer = hydra.utils.instantiate(
            cfg.trainer,
            precision=None if amp else precision,
            callbacks=callbacks,
            logger=_instantiate_all(cfg.logger) or False,
            plugins=[AtomicCheckpointIO(), *amp],
        )
    except InstantiationException as err:  # e.g. more devices than this machine has
        raise LitFtError(f"trainer: {err.__cause__ or err}") from err
    log_config(trainer.loggers, _plain(cfg))

    L.seed_everything(cfg.seed, workers=True)
    tokenizer, hf_config = load_tokenizer(spec), load_config(spec)
    task, datamodule = build_task_and_data(cfg, tokenizer, hf_config)
    import datasets  # noqa: F401  (imported here so the data timing below is the data's own)

    data_started = time.perf_counter()
    datamodule.prepare_data()
    datamodule.setup("fit")
    data_seconds = time.perf_counter() - data_started  # a cached second run: well under 1 s
    task.configure_model(hf_config)  # labels found in the data: num_labels, id2label
    check_same_model(ckpt_path, hf_config, spec)
    check_same_data(ckpt_path, datamodule.fingerprint(), force=cfg.force_resume)

    # Each of w processes takes ceil(N/w) of the N blocks (lit_ft/sampler.py pads), so
    # ceil(ceil(N/w)/b) batches of b: equal to ceil(ceil(N/b)/w), which this computes
    # (both are ceil(N/(b*w)); e.g. N=101, b=8, w=2: ceil(51/8) = ceil(13/2) = 7).
    num_steps = optimizer_steps(
        batches_per_epoch=None  # a stream's length is unknown: max_steps sizes the schedule
        if cfg.data.get("streaming")
        else math.ceil(len(datamodule.train_dataloader()) / trainer.world_size),
        accumulate_grad_batches=cfg.trainer.accumulate_grad_batches,
        max_epochs=cfg.trainer.get("max_epochs"),
        max_steps=cfg.trainer.get("max_steps", -1),
        limit_train_batches=cfg.trainer.get("limit_train_batches"),
    )
    module = FineTuneModule(
        spec,
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        scheduler=hydra.utils.instantiate(cfg.scheduler) if cfg.scheduler else None,
        num_training_steps=num_steps,
        task=task,
        model=prepare_model(
            pad_vocab(
                build_model(spec, hf_config, **quantization_kwargs(lora)),
                spec.pad_vocab_to_multiple_of,
            ),
            gradient_checkpointing=spec.gradient_checkpointing,
            lora=lora,
        ),
    )
    task.check_model(module.model)  # e.g. packing needs attention that reads position ids
    compile_model(module.model, **_plain(cfg.compile))
    if leader:
        plan_precision = f"{precision} ({why})"
        _print_plan(cfg, datamodule, module, num_steps, trainer.world_size, plan_precision)
        print(f"[lit_ft] data prepared in {data_seconds:.2f}s", flush=True)

    before = _evaluate(trainer, module, datamodule) if cfg.evaluate_before else None
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    after = _evaluate(trainer, module, datamodule)  # the weights training ended with
    best = _better_checkpoint(trainer, after)
    if best is not None:  # an earlier checkpoint beats the end: load and report that one
        after = _evaluate(trainer, module, datamodule, ckpt_path=best)

    test = _test(trainer, module, datamodule) if "test" in datamodule.datasets else None
    predictions = (
        _write_predictions(trainer, module, datamodule, output_dir) if cfg.predict else None
    )

    export_dir = last_export_dir = hub_url = None
    if not trainer.is_global_zero:
        return {"metrics": {"before": before, "after": after}, "output_dir": str(output_dir)}
    if cfg.export and shards_weights(trainer):  # the module holds only this rank's shard
        export_dir = export_checkpoint(best or _last_checkpoint(trainer), output_dir / "hf_model")
    elif cfg.export:
        export_dir = export_pretrained(module.model, tokenizer, output_dir / "hf_model")
    if cfg.export_last and _last_checkpoint(trainer):
        last_export_dir = export_checkpoint(_last_checkpoint(trainer), output_dir / "hf_model_last")
    if hub_upload.pop("enabled") and export_dir is not None:
        hub_url = push_to_hub(export_dir, **hub_upload)

    finish(trainer.loggers)
    plots = plot_run(output_dir)  # from the run's own logs/*/metrics.csv
    training = recorder.summary()
    results = {
        "task": task.name,
        "headline_metric": task.headline,
        "metrics": {"before": before, "after": after, "test": test, "train": training},
        "tokens_per_s": training["tokens_per_s"],
        "throughput": _throughput(trainer),
        "data_prep_s": round(data_seconds, 3),
        "wall_time_s": round(time.perf_counter() - started, 2),
        "best_checkpoint": best or _last_checkpoint(trainer),
        "last_checkpoint": _last_checkpoint(trainer),
        "export_dir": str(export_dir) if export_dir else None,
        "export_last_dir": str(last_export_dir) if last_export_dir else None,
        "predictions": str(predictions) if predictions else None,
        "hub_url": hub_url,
        "plots": [str(path) for path in plots],
        "output_dir": str(output_dir),
        "resumed_from": ckpt_path,
    }
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    _print_summary(results)
    return results


def build_task_and_data(cfg: DictConfig, tokenizer, hf_config):
    """The task (conf/task) and its datamodule (conf/data): the data's column keys and block
    size go to the task, the rest to the datamodule. The benchmarks build their data here too."""
    from lit_ft.data import build_datamodule, clamp_block_size
    from lit_ft.model import max_positions
    from lit_ft.tasks import COLUMN_KEYS, build_task

    data_options, task_options = _plain(cfg.data), _plain(cfg.task)
    task = build_task(
        task_options.pop("name"),
        tokenizer,
        columns={key: data_options.pop(key) for key in COLUMN_KEYS},
        max_length=clamp_block_size(data_options.pop("block_size"), max_positions(hf_config)),
        add_eos=data_options.pop("add_eos"),
        **task_options,
    )
    return task, build_datamodule(tokenizer, task, seed=cfg.seed, **data_options)


def train_from_overrides(overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """`train(compose(overrides))`: the CLI's run from Python, e.g. in a notebook."""
    return train(compose(overrides))


# -- pieces of the story ---------------------------------------------------------------------
def _plain(node: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True)


def _instantiate_all(group: DictConfig | None) -> list:
    """Instantiate every entry of a group like `callbacks` or `logger` (a name -> config map).

    A factory may return None for "not in this run" (e.g. the progress bar when it is off).
    """
    if not group:
        return []
    made = [hydra.utils.instantiate(node) for node in group.values() if node and "_target_" in node]
    return [obj for obj in made if obj is not None]


def _evaluate(trainer, module, datamodule, ckpt_path: str | None = None) -> dict[str, float]:
    (metrics,) = trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    return {key: float(value) for key, value in metrics.items()}


def _test(trainer, module, datamodule) -> dict[str, float]:
    (metrics,) = trainer.test(module, datamodule=datamodule, verbose=False)
    return {key: float(value) for key, value in metrics.items()}


def _write_predictions(trainer, module, datamodule, output_dir: Path) -> Path | None:
    """predictions.jsonl: input, prediction and label for each row of the test split (or of
    validation when there is no labelled test split). Tasks with nothing to predict skip it."""
    if not module.task.predicts:
        return None
    batches = trainer.predict(module, datamodule=datamodule)
    path = output_dir / "predictions.jsonl"
    with open(path, "w", encoding="utf-8") as out:
        for row in (row for batch in batches for row in batch):
            out.write(json.dumps({"split": datamodule.predict_split, **row}) + "\n")
    return path


def _better_checkpoint(trainer, final: dict[str, float]) -> str | None:
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
    return (
        callback.best_model_path if (best < end if callback.mode == "min" else best > end) else None
    )


def _last_checkpoint(trainer) -> str | None:
    paths = [getattr(cb, "last_model_path", "") for cb in trainer.checkpoint_callbacks]
    return next((p for p in paths if p), None)


def _throughput(trainer) -> dict[str, Any] | None:
    """The ThroughputLogger's summary (tokens/s, MFU after warm-up), when one is configured."""
    from lit_ft.throughput import ThroughputLogger

    found = [cb for cb in trainer.callbacks if isinstance(cb, ThroughputLogger)]
    return found[0].summary() if found else None


def _print_plan(
    cfg: DictConfig, datamodule, module, num_steps: int, world_size: int, precision: str
) -> None:
    """The pre-flight summary: what one step is, how many there are, what a checkpoint costs."""
    from lit_ft.data import token_count
    from lit_ft.optim import warmup_steps_for

    length, batch = module.task.max_length, cfg.data.batch_size
    accumulate = cfg.trainer.accumulate_grad_batches
    sequences = batch * accumulate * world_size  # e.g. 16 x 4 accumulation x 2 devices = 128
    train, validation = datamodule.datasets["train"], datamodule.datasets["validation"]
    # data.streaming: the length is unknown until the stream has been read
    train_data = "streamed" if train is None else f"{len(train):,}"
    per_epoch = "" if train is None else f" ({token_count(train):,} tokens per epoch)"
    warmup = 0
    if cfg.scheduler:
        warmup = warmup_steps_for(num_steps, cfg.scheduler.warmup_steps, cfg.scheduler.warmup_ratio)
    params = sum(p.numel() for p in module.model.parameters())
    # fp32 weights + AdamW's two moments: 12 bytes per parameter (plus small loop state)
    checkpoint_mb = params * 12 / 2**20
    print(
        f"[lit_ft] task {module.task.name}: {train_data} train / {len(validation):,} "
        f"validation sequences of up to {length} tokens{per_epoch}\n"
        f"[lit_ft] step: {batch} sequences x {accumulate} accumulation x {world_size} devices = "
        f"{sequences} sequences = up to {sequences * length:,} tokens per optimizer step\n"
        f"[lit_ft] schedule: {num_steps:,} optimizer steps, {warmup:,} warmup; "
        f"{params / 1e6:.2f}M parameters; checkpoint ~{checkpoint_mb:,.0f} MB\n"
        f"[lit_ft] precision: {precision}; output: {cfg.paths.output_dir}",
        flush=True,
    )


# How the end-of-run line names each task's headline metric (Task.headline).
HEADLINE_NAMES = {
    "val/ppl": "validation perplexity",
    "val/accuracy": "validation accuracy",
    "val/f1": "validation entity F1",
    "val/rougeL": "validation ROUGE-L",
    "val/loss": "validation loss",
}


def _print_summary(results: dict[str, Any]) -> None:
    before, after = results["metrics"]["before"], results["metrics"]["after"]
    name = results["headline_metric"]
    digits = 2 if name == "val/ppl" else 4
    headline = f"{HEADLINE_NAMES[name]} {after[name]:.{digits}f}"
    if before and name in before:
        headline = f"{HEADLINE_NAMES[name]} {before[name]:.{digits}f} -> {after[name]:.{digits}f}"
    print(
        f"[lit_ft] done in {results['wall_time_s']:.1f}s: {headline}; "
        f"{results['tokens_per_s']} tokens/s; model: {results['export_dir']}; "
        f"results: {results['output_dir']}/results.json",
        flush=True,
    )


# -- command line ----------------------------------------------------------------------------
@contextmanager
def _user_errors_exit(keep_going: bool = False):
    """A LitFtError is the user's to fix: print its message, no traceback, exit non-zero.

    In a multirun the error is re-raised instead, so Hydra marks this job failed and the
    sweep's other jobs still run.
    """
    try:
        yield
    except LitFtError as err:
        print(f"lit_ft: error: {err}", file=sys.stderr, flush=True)
        if keep_going:
            raise
        sys.exit(EXIT_USER_ERROR)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from lit_ft.distributed import (
        end_processes,
        launched_externally,
        require_one_output_dir,
        share_run_with_child_ranks,
    )

    # The job's own directory (per job in a multirun) is where everything of this run goes,
    # for every rank that Lightning launches from here too.
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    cfg.paths.output_dir = hydra_cfg.runtime.output_dir
    share_run_with_child_ranks(hydra_cfg, multirun)
    launched_here = not launched_externally()
    # Lightning attaches its own console handlers when imported; without this every Lightning
    # message prints twice, once in each format.
    import lightning.pytorch  # noqa: F401  (import first, so there is something to remove)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True  # to Hydra's handlers: console and run.log
    try:
        with _user_errors_exit(keep_going=multirun):
            require_one_output_dir(hydra_cfg)
            results = train(cfg)
    finally:
        if multirun:  # the next job launches its own ranks
            end_processes(launched_here)
    metric = results["metrics"]["after"].get(cfg.optimized_metric)
    return float(metric) if metric is not None else None


if __name__ == "__main__":
    main()
