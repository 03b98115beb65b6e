"""The pre-flight summary: what one step is, how many there are, the model's size, how the
loss is computed and the memory the run should peak at, printed before training starts.
It prints and decides nothing: the decisions it reports were taken by their own steps
(precision, loss choice, lit_ft/training/memory_plan.py)."""

from __future__ import annotations

from pathlib import Path

from lit_ft.data.datamodule import token_count
from lit_ft.distributed import is_global_zero
from lit_ft.log import say
from lit_ft.observe.model_size import model_size


def print_plan(cfg, data, module, num_steps: int, world_size: int, estimate) -> None:
    """`data`: the prepared data (lit_ft/data/prepare.py); `estimate`: the memory plan's."""
    task = data.task
    length, batch = task.max_length, cfg.data.batch_size
    accumulate = cfg.trainer.accumulate_grad_batches
    sequences = batch * accumulate * world_size  # e.g. 16 x 4 accumulation x 2 devices = 128
    train, validation = data.datamodule.datasets["train"], data.datamodule.datasets["validation"]
    # data.streaming: the length is unknown until the stream has been read
    train_data = "streamed" if train is None else f"{len(train):,}"
    per_epoch = "" if train is None else f" ({token_count(train):,} tokens per epoch)"
    size = model_size(module.model, adapters_only=bool(cfg.get("peft")))  # LoRA: adapters
    rows, per_row = task.row_name, task.sequences_per_row  # dpo: pairs, 2
    say(
        f"task {task.name}: {train_data} train / {len(validation):,} "
        f"validation {rows} of up to {length} tokens{per_epoch}"
    )
    say(
        f"step: {batch} {rows} x {accumulate} accumulation x {world_size} devices = "
        f"{sequences} {rows} = up to {sequences * per_row * length:,} tokens per optimizer step"
    )
    mixture = getattr(data.datamodule, "mixture", None)
    if mixture is not None:  # data=mixture: the realised share of each source in epoch 1
        say(mixture.describe(data.datamodule.train_sampler.order(0)))
    elif getattr(data.datamodule, "source_labels", None):  # a streamed mixture
        weights = [s["weight"] for s in data.datamodule.sources]
        shares = ", ".join(
            f"{label} {w / sum(weights):.0%}"
            for label, w in zip(data.datamodule.source_labels, weights, strict=True)
        )
        say(f"mixture streamed, sources interleaved by weight: {shares}")
    say(f"schedule: {num_steps:,} optimizer steps, {module.warmup_steps:,} warmup")
    say(f"model: {size.text()}")
    say(f"output: {cfg.paths.output_dir}")  # the precision was said when it was chosen
    say(f"data prepared in {data.seconds:.2f}s")
    if task.describe():
        say(f"{task.name}: {task.describe()}")
    if task.loss_choice is not None:
        say(task.loss_choice.text())
    if cfg.model.gradient_checkpointing == "auto":
        say(f"gradient checkpointing {estimate.checkpointing}")
    say(estimate.text())


def show_training_example(task, train, output_dir: Path) -> None:
    """One training example as the model sees it, the trained tokens between « and »: in the
    console (its start) and whole in <run dir>/train_example.txt."""
    example = task.preview(train)
    if example is None:
        return
    if is_global_zero():
        (output_dir / "train_example.txt").write_text(example + "\n", encoding="utf-8")
    shown = example if len(example) <= 600 else example[:600] + " [...]"
    # a reward model scores whole texts: nothing is marked, and the header says so
    marks = ", trained tokens in «»" if "«" in example else " (every token is read)"
    say(f"a training example{marks}:\n{shown}")
