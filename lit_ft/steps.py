"""The steps of one run, in the order `lit_ft.run.train` takes them.

`run.py` tells the story and stays light to import, so the command line answers `--help`,
`--cfg job` and config errors before torch is loaded; this module holds each step and is
the one place a run imports the heavy stack (torch, Lightning, transformers, datasets).
Steps take plain values and objects the entry point instantiated, never a config group
to instantiate themselves.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from lit_ft.config import to_plain
from lit_ft.data.datamodule import build_datamodule
from lit_ft.data.sources import clamp_block_size
from lit_ft.distributed import is_global_zero
from lit_ft.errors import LitFtError
from lit_ft.export import export_checkpoint, export_pretrained
from lit_ft.hub import check_hub_sources, check_push_to_hub, push_to_hub
from lit_ft.log import quiet_known_noise, say
from lit_ft.model.build import ModelSpec, build_model, load_config, load_tokenizer, max_positions
from lit_ft.model.chunked_loss import choose_loss, output_layer, unwrapped
from lit_ft.model.compile import compile_model
from lit_ft.model.fsdp2 import FullyShardedStrategy, is_fsdp2
from lit_ft.model.liger import apply_liger
from lit_ft.model.peft import (
    AdapterCheckpoint,
    enable_checkpointing,
    prepare_model,
    quantization_kwargs,
)
from lit_ft.model.precision import resolve_precision
from lit_ft.model.strategy import shards_weights
from lit_ft.model.vocab import grow_vocab, grown_size, pad_vocab
from lit_ft.observe.loggers import finish
from lit_ft.observe.memory import gigabytes
from lit_ft.observe.model_size import model_size
from lit_ft.observe.quiet import quiet_libraries
from lit_ft.observe.recorder import TrainingRecorder
from lit_ft.observe.step_numbers import StepNumbers, without_step
from lit_ft.observe.throughput import ThroughputLogger
from lit_ft.plots import plot_run
from lit_ft.tasks import COLUMN_KEYS, build_task, check_architecture, get_task
from lit_ft.tasks.chat import stop_at_end_of_turn
from lit_ft.training import elastic
from lit_ft.training.amp import precision_plugins
from lit_ft.training.checkpoint import (
    AtomicCheckpointIO,
    ResumePoint,
    check_same_data,
    check_same_model,
    resolve_resume,
)
from lit_ft.training.elastic import GlobalBatch, GlobalBatchRecord
from lit_ft.training.memory_estimate import (
    MemoryEstimate,
    checkpointing_choice,
    estimate_memory,
    free_bytes,
)
from lit_ft.training.nonfinite import StopOnNonFiniteLoss
from lit_ft.training.optim import optimizer_steps
from lit_ft.training.preemption import PreemptionCheckpoint
from lit_ft.training.rng import RngState

# Tasks whose model gives logits over the vocabulary at every token (the estimate counts them).
PER_TOKEN_LOGITS = ("AutoModelForCausalLM", "AutoModelForMaskedLM", "AutoModelForSeq2SeqLM")


@dataclass
class Given:
    """Objects handed to the run instead of what the config names (lit_ft.FineTuner): the raw
    splits (lit_ft/data/given.py) for `data.*`'s source, a built model and its tokenizer for
    `model.name_or_path`, Lightning callbacks beside the configured ones, and a function with
    the HF Trainer's compute_metrics contract (lit_ft/tasks/metrics.py UserMetrics)."""

    splits: dict[str, Any] | None = None
    model: Any = None
    tokenizer: Any = None
    callbacks: list = field(default_factory=list)
    compute_metrics: Callable | None = None


# -- before any long work ----------------------------------------------------------------------
def write_config(cfg: DictConfig, output_dir: Path, leader: bool) -> None:
    """The resolved config, beside everything the run writes (by rank 0)."""
    if leader:
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def check_sources(cfg: DictConfig, spec: ModelSpec, given: Given | None = None) -> None:
    """The Hub, when model or data come from it, and a push_to_hub's token: now, not after.
    What came as objects (`given`) is not looked for anywhere."""
    given = given or Given()
    model = None if given.model is not None else spec.name_or_path
    tokenizer = None if given.tokenizer is not None or model is None else spec.tokenizer_name
    data = (None, None) if given.splits is not None else (cfg.data.path, cfg.data.name)
    check_hub_sources(model, tokenizer, *data)
    check_push_to_hub(cfg.push_to_hub.enabled, cfg.push_to_hub.repo_id)


def resume_point(cfg: DictConfig) -> ResumePoint | None:
    return resolve_resume(cfg.ckpt_path, cfg.paths.checkpoint_dir)


# -- callbacks, precision ----------------------------------------------------------------------
def run_callbacks(
    configured: list, checkpoint_dir: str, lora, started: float | None = None
) -> tuple[list, TrainingRecorder]:
    """The configured callbacks plus what exact resumption, preemption and the NaN stop rely
    on (always on, whatever `callbacks/` says), and the recorder behind results.json.
    `started`: the run's start (time.perf_counter()), which time to first step counts from."""
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
    adapters = [AdapterCheckpoint(lora)] if lora else []  # adapter-only checkpoints
    return [*configured, recorder, *always, *adapters], recorder


@dataclass
class PrecisionChoice:
    flag: str | None  # for Trainer(precision=...); None when a plugin carries it
    plugins: list  # checkpoint IO, and lit_ft's mixed precision where it applies
    text: str  # "bf16-mixed (the CPU has avx512_bf16)"


def choose_precision(trainer_cfg: DictConfig) -> PrecisionChoice:
    """`auto` resolved for this machine (printed, so it is never a surprise). bf16-/16-mixed
    come as lit_ft's plugin (clipping with the fused AdamW); Lightning refuses a precision
    plugin and a `precision` flag together, so it is one or the other."""
    precision, why = resolve_precision(trainer_cfg.precision, trainer_cfg.accelerator)
    say(f"precision {precision} ({why})")
    amp = precision_plugins(precision, trainer_cfg.accelerator, to_plain(trainer_cfg)["strategy"])
    flag = None if amp else precision
    return PrecisionChoice(flag, [AtomicCheckpointIO(), *amp], f"{precision} ({why})")


# -- data and model ----------------------------------------------------------------------------
@dataclass
class PreparedData:
    tokenizer: Any
    hf_config: Any  # the model's config, with what the data decided (labels) written in
    task: Any
    datamodule: Any
    seconds: float  # loading + tokenizing (a cached second run: well under 1 s)


def build_task_and_data(cfg: DictConfig, tokenizer, hf_config, given_splits=None):
    """The task (conf/task) and its datamodule (conf/data): the data's column keys and block
    size go to the task, the rest to the datamodule. The benchmarks build their data here too.
    `given_splits`: raw splits handed over as objects, read instead of `data.path`."""
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
    return task, build_datamodule(tokenizer, task, seed=cfg.seed, **data_options)


def prepare_data(
    cfg: DictConfig, spec: ModelSpec, resume: ResumePoint | None, given: Given | None = None
) -> PreparedData:
    """Tokenizer and model config, then the data, loaded and tokenized; a checkpoint to resume
    from must fit both the model and the data (refused here, before any training). A given
    model brings its own config, a given tokenizer replaces loading one."""
    given = given or Given()
    L.seed_everything(cfg.seed, workers=True)
    tokenizer = given.tokenizer if given.tokenizer is not None else load_tokenizer(spec)
    if tokenizer.pad_token is None:  # as load_tokenizer does: padding is masked, EOS is safe
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    hf_config = given.model.config if given.model is not None else load_config(spec)
    check_architecture(get_task(spec.task), hf_config.model_type)  # before the data's work
    task, datamodule = build_task_and_data(cfg, tokenizer, hf_config, given.splits)
    import datasets  # noqa: F401  (imported here so the timing below is the data's own)

    started = time.perf_counter()
    datamodule.prepare_data()
    datamodule.setup("fit")
    seconds = time.perf_counter() - started
    if given.model is not None:
        check_given_head(task, given.model)
    task.configure_model(hf_config)  # labels found in the data: num_labels, id2label
    grown = copy.deepcopy(hf_config)  # the rows the model will have (a chat's end of turn)
    grown.vocab_size = grown_size(hf_config.vocab_size, tokenizer)
    check_same_model(resume, grown, spec)
    check_same_data(resume, datamodule.fingerprint(), force=cfg.force_resume)
    return PreparedData(tokenizer, hf_config, task, datamodule, seconds)


def check_given_head(task, model) -> None:
    """A given classification model's head must have one unit per label the data has: lit_ft
    builds the head from the data, but a built model's is fixed."""
    labels = getattr(task, "labels", None)
    if labels and model.config.num_labels != len(labels):
        raise LitFtError(
            f"the given {type(model).__name__} has {model.config.num_labels} labels, the data "
            f"{len(labels)} ({', '.join(labels[:10])}); build it with num_labels={len(labels)}"
        )


def keep_global_batch(cfg: DictConfig, resume: ResumePoint | None, trainer) -> None:
    """On resume, the batch and accumulation that keep the checkpoint's global batch on this
    many processes (lit_ft/training/elastic.py); said in the pre-flight when they change."""
    here = GlobalBatch(cfg.data.batch_size, cfg.trainer.accumulate_grad_batches, trainer.world_size)
    saved = elastic.saved_global_batch(resume.checkpoint if resume else None)
    kept, change = elastic.keep_global_batch(saved, here)
    limit, limit_change = elastic.keep_epoch_limit(trainer.limit_train_batches, saved, kept)
    if change:
        say(change)
        cfg.data.batch_size = kept.batch_size
        cfg.trainer.accumulate_grad_batches = trainer.accumulate_grad_batches = kept.accumulation
    if limit_change:  # an epoch of the same sequences (the step count reads the config)
        say(limit_change)
        cfg.trainer.limit_train_batches = trainer.limit_train_batches = limit


def count_optimizer_steps(
    cfg: DictConfig, datamodule, world_size: int, resume: ResumePoint | None = None
) -> int:
    """How many optimizer steps the run takes: sizes the schedule and the progress line.

    A run resumed with another split of the same global batch (elastic.py) keeps the
    original run's count: the epoch's last, padded step can round differently (753 blocks
    are 95 steps of 8 on 1 process, but 377 + 376 blocks in batches of 4 on 2).

    Each of w processes takes ceil(N/w) of the N blocks (lit_ft/data/sampler.py pads), so
    ceil(ceil(N/w)/b) batches of b: equal to ceil(ceil(N/b)/w), which this computes
    (both are ceil(N/(b*w)); e.g. N=101, b=8, w=2: ceil(51/8) = ceil(13/2) = 7).
    """
    streamed = cfg.data.get("streaming")  # a stream's length is unknown: max_steps decides
    batches = None if streamed else math.ceil(len(datamodule.train_dataloader()) / world_size)
    counted = optimizer_steps(
        batches_per_epoch=batches,
        accumulate_grad_batches=cfg.trainer.accumulate_grad_batches,
        max_epochs=cfg.trainer.get("max_epochs"),
        max_steps=cfg.trainer.get("max_steps", -1),
        limit_train_batches=cfg.trainer.get("limit_train_batches"),
    )
    checkpoint = resume.checkpoint if resume else {}
    saved = checkpoint.get("lit_ft", {}).get("num_training_steps")
    here = GlobalBatch(cfg.data.batch_size, cfg.trainer.accumulate_grad_batches, world_size)
    if saved and saved != counted and elastic.saved_global_batch(checkpoint) not in (None, here):
        say(f"the schedule keeps the original run's {saved} steps (this layout counts {counted})")
        return saved
    return counted


def build_network(
    spec: ModelSpec,
    data: PreparedData,
    lora,
    compile_options: dict,
    batch_size: int,
    strategy=None,
    given_model=None,
):
    """The Auto-class model, its vocabulary padded, LoRA and gradient checkpointing applied,
    checked against the task (e.g. packing), its training loss chosen (chunked or plain, for
    causal tasks: printed by `print_plan`), compiled when asked. `given_model`: a model built
    by the caller (lit_ft.FineTuner(model=...)), prepared the same way instead of loaded."""
    model = given_model
    if model is None:
        model = build_model(
            spec, data.task.model_class(), data.hf_config, **quantization_kwargs(lora)
        )
    model = grow_vocab(model, data.tokenizer)  # tokens the task added, e.g. <|im_end|>
    model = pad_vocab(model, spec.pad_vocab_to_multiple_of)
    # generate() stops at EOS or the chat's end of turn: validation answers, generations.jsonl
    stop_at_end_of_turn(getattr(model, "generation_config", None), data.tokenizer)
    if spec.liger_kernel:  # on the bare model, before LoRA wraps its modules
        say(apply_liger(model))
    # `auto` is decided by the memory estimate (plan_memory), once the whole network exists
    model = prepare_model(
        model, gradient_checkpointing=spec.gradient_checkpointing is True, lora=lora
    )
    data.task.check_model(model)  # e.g. packing needs attention that reads position ids
    if data.task.shifted_labels:  # causal: before compiling, the probe runs a small forward
        # e.g. 4 x 1,024 = 4,096 tokens per micro-batch; dpo: 4 pairs x 2 x 1,024 = 8,192
        tokens = batch_size * data.task.sequences_per_row * data.task.max_length
        data.task.loss_choice = choose_loss(
            spec.chunked_loss,
            model,
            tokens,
            spec.loss_chunk_tokens,
            compiled=bool(compile_options.get("enabled")),
            liger=spec.liger_kernel,
            fully_sharded=isinstance(strategy, FullyShardedStrategy),
        )
    data.task.prepare_with_model(model, data.datamodule)  # e.g. DPO's reference log-probs
    compile_model(model, **compile_options)
    return model


def print_plan(
    cfg: DictConfig, data: PreparedData, module, num_steps: int, world_size: int, precision: str
) -> MemoryEstimate:
    """The pre-flight summary: what one step is, how many there are, what a checkpoint costs,
    how the loss is computed and the memory the run should peak at (returned, for the end)."""
    from lit_ft.data.datamodule import token_count

    length, batch = data.task.max_length, cfg.data.batch_size
    accumulate = cfg.trainer.accumulate_grad_batches
    sequences = batch * accumulate * world_size  # e.g. 16 x 4 accumulation x 2 devices = 128
    train, validation = data.datamodule.datasets["train"], data.datamodule.datasets["validation"]
    # data.streaming: the length is unknown until the stream has been read
    train_data = "streamed" if train is None else f"{len(train):,}"
    per_epoch = "" if train is None else f" ({token_count(train):,} tokens per epoch)"
    size = model_size(module.model, adapters_only=bool(cfg.get("peft")))  # LoRA: adapters
    rows, per_row = data.task.row_name, data.task.sequences_per_row  # dpo: pairs, 2
    say(
        f"task {data.task.name}: {train_data} train / {len(validation):,} "
        f"validation {rows} of up to {length} tokens{per_epoch}"
    )
    say(
        f"step: {batch} {rows} x {accumulate} accumulation x {world_size} devices = "
        f"{sequences} {rows} = up to {sequences * per_row * length:,} tokens per optimizer step"
    )
    say(f"schedule: {num_steps:,} optimizer steps, {module.warmup_steps:,} warmup")
    say(f"model: {size.text()}")
    say(f"output: {cfg.paths.output_dir}")  # the precision was said when it was chosen
    say(f"data prepared in {data.seconds:.2f}s")
    if data.task.describe():
        say(f"{data.task.name}: {data.task.describe()}")
    choice = data.task.loss_choice
    if choice is not None:
        say(choice.text())
    estimate = plan_memory(cfg, data, module, world_size, precision)
    show_training_example(data.task, train, Path(cfg.paths.output_dir))
    return estimate


def plan_memory(
    cfg: DictConfig, data: PreparedData, module, world_size: int, precision: str
) -> MemoryEstimate:
    """The peak memory estimate, printed; `model.gradient_checkpointing=auto` is decided
    here, from the estimates with and without it against the memory free for the run."""
    from functools import partial

    import torch

    choice, per_row = data.task.loss_choice, data.task.sequences_per_row
    head = output_layer(module.model)
    per_token_logits = data.task.auto_class in PER_TOKEN_LOGITS and head is not None
    estimate = partial(
        estimate_memory,
        module.model,
        batch_size=cfg.data.batch_size * per_row,  # dpo: b pairs are 2b sequences
        seq_len=data.task.max_length,
        mixed_precision="mixed" in precision,
        chunk_tokens=choice.chunk_tokens if choice is not None and choice.chunked else None,
        vocab=head.weight.shape[0] if per_token_logits else None,
        held=data.task.held_models(),
        shards=world_size if is_fsdp2(cfg.trainer.get("strategy")) else 1,
    )
    setting = cfg.model.gradient_checkpointing
    without, with_it = estimate(gradient_checkpointing=False), estimate(gradient_checkpointing=True)
    on_cuda = torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda")
    # CPU processes of one host share its memory; a GPU process has its device
    here = 1 if on_cuda else max(world_size // max(int(cfg.trainer.get("num_nodes", 1)), 1), 1)
    free = free_bytes(on_cuda, here) if setting == "auto" else None
    checkpointing, why = checkpointing_choice(setting, without, with_it, free)
    if setting == "auto":
        say(f"gradient checkpointing {why}")
        if checkpointing:
            enable_checkpointing(unwrapped(module.model))
    chosen = with_it if checkpointing else without
    chosen.checkpointing = why
    say(chosen.text())
    return chosen


def show_training_example(task, train, output_dir: Path) -> None:
    """One training example as the model sees it, the trained tokens between « and »: in the
    console (its start) and whole in <run dir>/train_example.txt."""
    example = task.preview(train)
    if example is None:
        return
    if is_global_zero():
        (output_dir / "train_example.txt").write_text(example + "\n", encoding="utf-8")
    shown = example if len(example) <= 600 else example[:600] + " [...]"
    say(f"a training example, trained tokens in «»:\n{shown}")


# -- evaluation --------------------------------------------------------------------------------
def use_compute_metrics(module, compute_metrics: Callable | None) -> None:
    """Validation and test report what `compute_metrics` (the HF Trainer's contract) returns
    beside the task's metrics (lit_ft/tasks/metrics.py UserMetrics)."""
    if compute_metrics is None:
        return
    from lit_ft.tasks.metrics import UserMetrics

    module.evaluator = UserMetrics(module.evaluator, compute_metrics)


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
    from lit_ft.data.row_index import ROW_KEY

    batches = trainer.predict(module, dataloaders=datamodule.eval_loader(split, indexed=True))
    lines = []
    for row in (row for batch in batches for row in batch):
        index = row.pop(ROW_KEY, None)
        raw = datamodule.raw_row(split, index) if index is not None else {}
        lines.append({"split": split, **module.task.prediction_inputs(raw), **row})
    return lines


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


def last_checkpoint(trainer) -> str | None:
    paths = [getattr(cb, "last_model_path", "") for cb in trainer.checkpoint_callbacks]
    return next((p for p in paths if p), None)


# -- after training ----------------------------------------------------------------------------
def export(
    cfg: DictConfig, trainer, model, tokenizer, output_dir: Path, best: str | None
) -> dict[str, str | None]:
    """hf_model/ (the weights the run hands on), hf_model_last/ on request, the Hub upload."""
    done: dict[str, str | None] = {"export_dir": None, "export_last_dir": None, "hub_url": None}
    last = last_checkpoint(trainer)
    if cfg.export:
        exported = export_model(trainer, model, tokenizer, output_dir / "hf_model", best)
        done["export_dir"] = str(exported)
    if cfg.export_last and last:
        done["export_last_dir"] = str(export_checkpoint(last, output_dir / "hf_model_last"))
    upload = to_plain(cfg.push_to_hub)
    if upload.pop("enabled") and done["export_dir"]:
        done["hub_url"] = push_to_hub(done["export_dir"], **upload)
    return done


def export_model(trainer, model, tokenizer, out_dir: Path, best: str | None) -> Path:
    """The weights the run hands on in Hugging Face format (from_pretrained loads them)."""
    if shards_weights(trainer):  # the module holds only this rank's shard
        return export_checkpoint(best or last_checkpoint(trainer), out_dir)
    return export_pretrained(model, tokenizer, out_dir)


def results(
    task,
    metrics: dict[str, Any],
    trainer,
    recorder: TrainingRecorder,
    data_seconds: float,
    started: float,
    paths: dict[str, Any],
    memory_estimate: MemoryEstimate | None = None,
) -> dict[str, Any]:
    """What results.json holds, built in one place; loggers are closed and plots drawn first
    (the plots read the run's own logs/*/metrics.csv)."""
    finish(trainer.loggers)
    plots = plot_run(paths["output_dir"])
    training = recorder.summary()
    last = last_checkpoint(trainer)
    found = [cb for cb in trainer.callbacks if isinstance(cb, ThroughputLogger)]
    return {
        "task": task.name,
        **task.report(),
        "headline_metric": task.headline,
        "training_loss": task.loss_choice.text() if task.loss_choice else None,
        "metrics": {**metrics, "train": training},
        "tokens_per_s": training["tokens_per_s"],
        "memory": {
            "estimated_mb": round(memory_estimate.total / 2**20, 1) if memory_estimate else None,
            "estimate_parts_mb": {k: round(v / 2**20, 1) for k, v in memory_estimate.parts.items()}
            if memory_estimate
            else None,
            "measured_peak_mb": training["peak_memory_mb"],
            "measured_by": training["peak_memory_measured_by"],
            "gradient_checkpointing": memory_estimate.checkpointing if memory_estimate else None,
        },
        "throughput": found[0].summary() if found else None,  # tokens/s, MFU after warm-up
        "data_prep_s": round(data_seconds, 3),
        "wall_time_s": round(time.perf_counter() - started, 2),
        "best_checkpoint": paths.pop("best") or last,
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
