"""Every use of another library's private state, in one place.

Each function names what it reaches, why no public route serves, and the versions it was
checked against; tests/test_compat.py fails loudly when a library changes underneath.
"""

from __future__ import annotations

from typing import Any


def mark_step_as_saved(checkpoint_callback: Any, global_step: int) -> None:
    """Tell a Lightning `ModelCheckpoint` that `global_step` is already saved.

    Reaches `ModelCheckpoint._last_global_step_saved` (lightning 2.5-2.6). Lightning keeps it
    only in memory: a run resumed at step 6 starts with 0, so with accumulation 2 the first
    micro-batch after the resume (global step still 6, 6 % every_n_train_steps == 0) saves a
    checkpoint *inside* the accumulation window, whose gradients no checkpoint holds. A run
    resumed from that file loses the window's first half and drifts from then on; it is also
    why `step000006-v1.ckpt` appeared beside `step000006.ckpt`. No public setting restores it.
    """
    if not hasattr(checkpoint_callback, "_last_global_step_saved"):
        raise AttributeError(
            "lightning's ModelCheckpoint no longer has _last_global_step_saved: "
            "lit_ft.compat.mark_step_as_saved must be updated for this Lightning version"
        )
    checkpoint_callback._last_global_step_saved = global_step


SAVE_METHOD = "_save_checkpoint"  # ModelCheckpoint's one writer of a file (lightning 2.5-2.6)


def record_checkpoint_saved(checkpoint_callback: Any, trainer: Any, filepath: str) -> None:
    """What `ModelCheckpoint._save_checkpoint` does after it wrote `filepath`, for a file the
    callback made another way (lit_ft.training.best_checkpoint links the same step's file).

    Sets `_last_global_step_saved` (so the step is not saved twice) and `_last_checkpoint_saved`
    (what `save_last="link"` points at), then tells the loggers, as Lightning does. Lightning
    offers no public way to add a file to a callback's record (lightning 2.5-2.6).
    """
    for name in ("_last_global_step_saved", "_last_checkpoint_saved"):
        if not hasattr(checkpoint_callback, name):
            raise AttributeError(
                f"lightning's ModelCheckpoint no longer has {name}: "
                "lit_ft.compat.record_checkpoint_saved must be updated for this Lightning version"
            )
    from weakref import proxy

    checkpoint_callback._last_global_step_saved = trainer.global_step
    checkpoint_callback._last_checkpoint_saved = filepath
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.after_save_checkpoint(proxy(checkpoint_callback))


def rescale_batch_progress(checkpoint: dict[str, Any], old: int, new: int) -> None:
    """Lightning's micro-batch counters of a checkpoint, recounted for accumulation `new`.

    Reaches the layout of `checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]`
    (lightning 2.5-2.6: `total`/`current` of `ready`/`started`/`processed`/`completed`).
    Lightning ends an accumulation window when the epoch's micro-batch count is a multiple of
    the accumulation; the checkpoint counts micro-batches of the *old* one. Saved after k
    optimizer steps of this epoch it holds k x old micro-batches; a resume at accumulation
    `new` must continue from k x new, or its windows would end mid-step (e.g. 7 steps at
    accumulation 1 = 7 micro-batches; at accumulation 2 the next window would close after
    one micro-batch). No public API sets these counters.
    """
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    if progress.get("is_last_batch"):  # saved at the epoch's end: the next epoch starts at 0
        return
    done = progress["current"]["ready"]
    if done % old:
        raise ValueError(
            f"the checkpoint was saved inside an accumulation window ({done} micro-batches at "
            f"accumulation {old}): it cannot be resumed at another accumulation"
        )
    shift = done // old * new - done
    for counts in (progress["current"], progress["total"]):
        for key in counts:
            counts[key] += shift


def align_logging_counter(trainer) -> None:
    """Set Lightning's logging counter to the optimizer steps done.

    Reaches `trainer.fit_loop.epoch_loop._batches_that_stepped` (lightning 2.5-2.6): the
    counter `should_update_logs` reads for the `log_every_n_steps` cadence. It is saved and
    restored apart from global_step and no public setting sets it.
    """
    loop = trainer.fit_loop.epoch_loop
    if not hasattr(loop, "_batches_that_stepped"):
        raise AttributeError(
            "lightning's training epoch loop no longer has _batches_that_stepped: "
            "lit_ft.compat.align_logging_counter must be updated"
        )
    loop._batches_that_stepped = trainer.global_step


def reopen_epoch(checkpoint: dict[str, Any]) -> None:
    """Mark a checkpoint's epoch as still running.

    Reaches `checkpoint["loops"]["fit_loop"]["epoch_progress"]` (lightning 2.5-2.6). A run
    stopped by `max_steps` mid-epoch still runs the epoch-end hooks, and a checkpoint saved
    there (Lightning's ModelCheckpoint saves at train-epoch end when no validation ran)
    counts the epoch as processed: resumed with a larger `max_steps`, Lightning would close
    the epoch, reach `max_epochs` and train nothing more. Rewinding `processed` to
    `completed` makes Lightning continue the epoch from the batch it stopped at, as it does
    for any mid-epoch checkpoint.
    """
    for counts in checkpoint["loops"]["fit_loop"]["epoch_progress"].values():
        counts["processed"] = counts["completed"]


def stop_child_process_observer() -> list:
    """End the watch Lightning's launcher keeps on the ranks it started; return their Popens.

    Reaches the `_child_processes` list of Lightning's "child-process-observer" thread
    (lightning 2.5-2.6, `lightning.fabric.strategies.launchers.subprocess_script`). The thread
    polls the ranks every 5 s and, when one exits non-zero, SIGKILLs them and this process:
    right for a single run, but in a sweep the failed job's ranks (ended by lit_ft, so
    non-zero) would take the sweep down during the next job. Emptying its list ends the
    thread's watch; Lightning offers no public handle on the thread or its list.
    """
    import threading

    launched = []
    for thread in threading.enumerate():
        if thread.name != "child-process-observer":
            continue
        watched = getattr(thread, "_child_processes", None)
        if not isinstance(watched, list):
            raise AttributeError(
                "lightning's child-process-observer thread no longer keeps a "
                "_child_processes list: lit_ft.compat.stop_child_process_observer must be "
                "updated"
            )
        launched += watched
        watched.clear()
    return launched


def run_before_optimizer_step_hooks(precision_plugin: Any, model: Any, optimizer: Any) -> None:
    """Run what Lightning's precision plugin runs between the closure and the optimizer step.

    Reaches `Precision._after_closure(model, optimizer)` (lightning 2.5-2.6): it calls the
    `on_before_optimizer_step` hooks of the callbacks and the module, then clips the
    gradients. lit_ft's `ClippingMixedPrecision.optimizer_step` replaces Lightning's
    (to unscale before the hooks) and must run these in the same place; the public
    `optimizer_step` cannot be called without also stepping.
    """
    after_closure = getattr(precision_plugin, "_after_closure", None)
    if after_closure is None:
        raise AttributeError(
            "lightning's Precision plugin no longer has _after_closure: "
            "lit_ft.compat.run_before_optimizer_step_hooks must be updated"
        )
    after_closure(model, optimizer)


def set_data_parallel_size(strategy: Any, size: int) -> None:
    """Make Lightning's `ModelParallelStrategy` shard over `size` processes.

    Reaches `ModelParallelStrategy._data_parallel_size` (lightning 2.5-2.6). The public
    `data_parallel_size="auto"` means the number of nodes (it pairs with tensor parallelism
    inside a node), and an integer cannot be given at construction: the process count is
    known only once the Trainer has set the strategy up (1 node x 4 GPUs -> 4).
    """
    if not hasattr(strategy, "_data_parallel_size"):
        raise AttributeError(
            "lightning's ModelParallelStrategy no longer has _data_parallel_size: "
            "lit_ft.compat.set_data_parallel_size must be updated"
        )
    strategy._data_parallel_size = size


def no_split_module_names(root: Any) -> set[str]:
    """The block class names the Hugging Face models inside `root` list as never to split.

    Reaches `PreTrainedModel._no_split_modules` (transformers 4.40-5.25): the classes
    `device_map="auto"` keeps whole, which are the transformer blocks FSDP should wrap.
    transformers has no public accessor (its `_get_no_split_modules` is private too).
    """
    return {
        name
        for module in root.modules()
        for name in (getattr(module, "_no_split_modules", None) or ())
    }


def wrap_policy_decided_at_wrap(classes_of: Any) -> Any:
    """A torch FSDP `ModuleWrapPolicy` whose classes are `classes_of(root)`, found at wrap time.

    Reaches `ModuleWrapPolicy._run_policy` (the hook FSDP calls with the root module) and its
    `_module_classes` / `_module_classes_str` (torch 2.4-2.13). The public `ModuleWrapPolicy`
    takes its classes up front, but the config names the policy before the model exists;
    `CustomPolicy` would decide module by module without seeing the root.
    """
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    class RootDecidedPolicy(ModuleWrapPolicy):
        def __init__(self) -> None:
            super().__init__(())
            if not hasattr(self, "_module_classes"):
                raise AttributeError(
                    "torch's ModuleWrapPolicy no longer has _module_classes: "
                    "lit_ft.compat.wrap_policy_decided_at_wrap must be updated"
                )

        def _run_policy(self, root_module, ignored_modules, root_kwargs):
            self._module_classes = set(classes_of(root_module))
            self._module_classes_str = str(self._module_classes)
            return super()._run_policy(root_module, ignored_modules, root_kwargs)

    return RootDecidedPolicy()


def dataset_fingerprint(dataset: Any) -> str:
    """The content hash `datasets` keeps for a `Dataset` through its map/filter chain.

    Reaches `Dataset._fingerprint` (datasets 2.x-5.2): the key of its own cache files, which
    lit_ft uses to key its tokenization cache and to tell a resumed run its data changed.
    `datasets` sets it (`new_fingerprint=`) publicly but has no public reader.
    """
    fingerprint = getattr(dataset, "_fingerprint", None)
    if not isinstance(fingerprint, str):
        raise AttributeError(
            "datasets' Dataset no longer has a _fingerprint string: "
            "lit_ft.compat.dataset_fingerprint must be updated"
        )
    return fingerprint


def packaged_builder_module(builder: str) -> str:
    """The module of one of `datasets`' packaged builders ("text", "csv", "json", ...).

    Reaches `datasets.packaged_modules._PACKAGED_DATASETS_MODULES` (datasets 2.x-5.2), the
    table `load_dataset` resolves those names with; lit_ft reads the builder's config class
    there to know which `load_kwargs` belong to it. No public table lists them.
    """
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    return _PACKAGED_DATASETS_MODULES[builder][0]


def multiply_all_in_place(tensors: list, factor: Any) -> None:
    """Multiply every tensor of `tensors` (one device and dtype) by the 0-d tensor `factor`.

    Reaches `torch._foreach_mul_` (torch 2.1-2.13): one fused kernel for the whole list, the
    path torch's own optimizers and `clip_grad_norm_` take. A Python loop of `mul_` is the
    public route but launches one kernel per tensor (GPT-2 small: 148 gradients per step).
    """
    import torch

    torch._foreach_mul_(tensors, factor)


def attention_implementation(config: Any) -> str | None:
    """The attention a Hugging Face config asks for ("eager", "sdpa", ...; None: not chosen).

    Reaches `PretrainedConfig._attn_implementation` (transformers 4.40-5.25), where
    `from_pretrained(attn_implementation=...)` and `from_config` record it; the config offers
    no public reader (`attn_implementation` is only a constructor argument).
    """
    return getattr(config, "_attn_implementation", None)


def fused_kernel_devices() -> list[str]:
    """The device types torch's fused optimizer kernels run on ("cuda", "cpu", "mps", ...).

    Reaches `torch.utils._foreach_utils._get_fused_kernels_supported_devices` (torch
    2.4-2.13). Trying `AdamW(..., fused=True)` is no public substitute: torch 2.13's
    constructor accepts any tensor and refuses an unsupported one only at the first step,
    when the optimizer state is made (`_device_dtype_check_for_fused`), far into a run.
    """
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    return list(_get_fused_kernels_supported_devices())
