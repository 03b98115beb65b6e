"""Optimizer parameter groups, the scheduler, and the number of optimizer steps that sizes it."""

from __future__ import annotations

import math

import torch

from lit_ft.compat import fused_kernel_devices
from lit_ft.errors import LitFtError
from lit_ft.log import say
from lit_ft.problems import Problems
from lit_ft.training.elastic import GlobalBatch, saved_global_batch


def weight_decay_groups(model: torch.nn.Module) -> list[dict]:
    """Two AdamW groups: matrices decay; biases, norm weights and 1-d params do not.

    The optimizer partial's own `weight_decay` applies to the first group.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_norm = any(tag in name.lower() for tag in ("norm", "ln_", "layernorm"))
        (no_decay if param.ndim < 2 or name.endswith(".bias") or is_norm else decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(
    params,
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    fused: bool | str = "auto",
) -> torch.optim.AdamW:
    """`torch.optim.AdamW`, fused where the parameters' device has the fused kernel.

    The fused kernel updates every tensor in one pass (CUDA, CPU, XPU, MPS, ...); torch's own
    default is the multi-tensor `foreach` path on CUDA and a per-tensor Python loop elsewhere.
    The update is the same AdamW either way, and so is the checkpointed state.
    `fused="auto"` picks it when every parameter is a floating tensor on a supported device.
    """
    groups = list(params)
    if fused == "auto":
        fused = _fused_supported(groups)
    return torch.optim.AdamW(
        groups, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps, fused=bool(fused)
    )


def _fused_supported(groups: list) -> bool:
    supported = set(fused_kernel_devices())
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    return bool(tensors) and all(
        p.device.type in supported and torch.is_floating_point(p) for p in tensors
    )


def warmup_steps_for(
    num_training_steps: int, warmup_steps: int = 0, warmup_ratio: float = 0.0
) -> int:
    """Warmup in optimizer steps: `warmup_steps` when set (it wins over the ratio, as in the
    HF Trainer), else the ratio of all steps rounded up: 1,000 steps x 0.06 = 60."""
    return warmup_steps or math.ceil(warmup_ratio * num_training_steps)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    num_training_steps: int,
    name: str = "linear",
    warmup_steps: int = 0,
    warmup_ratio: float = 0.0,
    scheduler_specific_kwargs: dict | None = None,
):
    """`transformers.get_scheduler` with warmup given as steps or as a ratio of all steps."""
    from transformers import get_scheduler

    warmup = warmup_steps_for(num_training_steps, warmup_steps, warmup_ratio)
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=num_training_steps,
        scheduler_specific_kwargs=dict(scheduler_specific_kwargs or {}),
    )


def optimizer_steps(
    batches_per_epoch: int | None,  # None: unknown (a stream), max_steps decides
    accumulate_grad_batches: int,
    max_epochs: int | None,
    max_steps: int,
    limit_train_batches: int | float | None = None,
) -> int:
    """How many times the optimizer will step, computed before the Trainer exists.

    Reading `trainer.estimated_stepping_batches` inside `configure_optimizers` drops the
    stateful dataloader's position on resume (Lightning #20550), so the run computes this
    from the datamodule instead and hands the number to the module.

    Lightning steps the optimizer on the last batch of an epoch even when the accumulation
    window is incomplete, so an epoch is ceil(batches / accumulation) steps:
    e.g. 100 batches / 3 accumulation -> 34 steps per epoch.
    """
    if batches_per_epoch is None:
        if not max_steps or max_steps <= 0:
            raise ValueError("data of unknown length (streaming) needs trainer.max_steps")
        return max_steps
    if isinstance(limit_train_batches, int):
        batches_per_epoch = min(batches_per_epoch, limit_train_batches)
    elif isinstance(limit_train_batches, float):
        batches_per_epoch = int(batches_per_epoch * limit_train_batches)
    per_epoch = math.ceil(batches_per_epoch / accumulate_grad_batches)
    by_epochs = per_epoch * max_epochs if max_epochs and max_epochs > 0 else None
    by_steps = max_steps if max_steps and max_steps > 0 else None
    candidates = [n for n in (by_epochs, by_steps) if n is not None]
    if not candidates:
        raise ValueError("set trainer.max_steps or trainer.max_epochs to a positive number")
    return max(1, min(candidates))


def optimizer_problems(optimizer) -> Problems:
    """The rules of `optimizer.*` (conf/optimizer), checked before any work."""
    problems = Problems()
    lr, wd = optimizer.lr, optimizer.weight_decay
    problems.need(
        isinstance(lr, int | float) and lr > 0 and math.isfinite(lr),
        f"optimizer.lr must be a positive number, got {lr!r}",
    )
    problems.need(
        isinstance(wd, int | float) and wd >= 0, f"optimizer.weight_decay must be >= 0, got {wd!r}"
    )
    fused = optimizer.get("fused", "auto")
    problems.need(
        fused in ("auto", True, False), f"optimizer.fused must be auto, true or false: {fused!r}"
    )
    return problems


def scheduler_problems(scheduler) -> Problems:
    """The rules of `scheduler.*` (conf/scheduler); `warmup_steps` wins over `warmup_ratio`
    (see warmup_steps_for), so setting both is allowed."""
    from transformers import SchedulerType

    problems = Problems()
    if scheduler is None:
        return problems
    names = [s.value for s in SchedulerType]
    problems.need(
        scheduler.name in names,
        f"scheduler.name='{scheduler.name}' is unknown; available: {', '.join(names)}",
    )
    steps, ratio = scheduler.warmup_steps, scheduler.warmup_ratio
    problems.need(
        isinstance(steps, int) and steps >= 0, f"scheduler.warmup_steps must be >= 0, got {steps!r}"
    )
    problems.need(
        isinstance(ratio, int | float) and 0 <= ratio < 1,
        f"scheduler.warmup_ratio must be in [0, 1), got {ratio!r}",
    )
    return problems


def step_problems(trainer) -> Problems:
    """What makes an optimizer step and how many there are (`trainer.*`)."""
    problems = Problems()
    max_steps, max_epochs = trainer.get("max_steps", -1), trainer.get("max_epochs")
    for key, value in (("max_steps", max_steps), ("max_epochs", max_epochs)):
        problems.need(
            value is None or (isinstance(value, int) and not isinstance(value, bool)),
            f"trainer.{key} must be an integer (-1: no limit), got {value!r}",
        )
    problems.need(
        (isinstance(max_steps, int) and max_steps > 0)
        or (isinstance(max_epochs, int) and max_epochs > 0),
        "set trainer.max_steps or trainer.max_epochs to a positive integer",
    )
    problems.positive_int("trainer.accumulate_grad_batches", trainer.accumulate_grad_batches)
    clip = trainer.gradient_clip_val
    problems.need(
        clip is None or (isinstance(clip, int | float) and clip >= 0),
        f"trainer.gradient_clip_val must be >= 0 or null, got {clip!r}",
    )
    return problems


def count_optimizer_steps(cfg, datamodule, world_size: int, resume=None) -> int:
    """The run's step count: sizes the schedule and the progress line (`optimizer_steps`
    from the datamodule's length and the config's limits).

    A run resumed with another split of the same global batch (elastic.py) keeps the
    original run's count: the epoch's last, padded step can round differently (753 blocks
    are 95 steps of 8 on 1 process, but 377 + 376 blocks in batches of 4 on 2).

    Each of w processes takes ceil(N/w) of the N blocks (lit_ft/data/sampler.py pads), so
    ceil(ceil(N/w)/b) batches of b: equal to ceil(ceil(N/b)/w), which this computes
    (both are ceil(N/(b*w)); e.g. N=101, b=8, w=2: ceil(51/8) = ceil(13/2) = 7).
    """
    streamed = cfg.data.get("streaming")  # a stream's length is unknown: max_steps decides
    batches = None if streamed else math.ceil(len(datamodule.train_dataloader()) / world_size)
    if batches is not None:
        check_validation_interval(cfg.trainer, batches, cfg.data.batch_size)
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
    if saved and saved != counted and saved_global_batch(checkpoint) not in (None, here):
        say(f"the schedule keeps the original run's {saved} steps (this layout counts {counted})")
        return saved
    return counted


def check_validation_interval(trainer, batches: int, batch_size: int) -> None:
    """`trainer.val_check_interval` as a whole number counts training batches within an epoch;
    one past the epoch's batches would stop Lightning when training starts, with a traceback.
    Refused here, before the model loads, saying what would do: e.g. 1,440 rows in batches of
    16 are 90 batches, so 100 is refused."""
    interval = trainer.get("val_check_interval")
    within_epoch = trainer.get("check_val_every_n_epoch", 1) is not None
    limit = trainer.get("limit_train_batches")
    if isinstance(limit, int) and not isinstance(limit, bool):
        batches = min(batches, limit)
    elif isinstance(limit, float):
        batches = int(batches * limit)
    whole = isinstance(interval, int) and not isinstance(interval, bool)
    if whole and within_epoch and interval > batches:
        raise LitFtError(
            f"trainer.val_check_interval={interval} batches is more than an epoch holds: "
            f"{batches} training batches of data.batch_size={batch_size} (per process). Set "
            f"it to at most {batches}, to a fraction of the epoch (e.g. 0.5), or set "
            "trainer.check_val_every_n_epoch=null to count batches across epochs"
        )
