"""Each use of another library's private state (lit_ft/compat.py) against the real library:
these fail loudly when an upgrade moves what they reach."""

from __future__ import annotations

import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from lit_ft.compat import mark_step_as_saved, reopen_epoch, rescale_batch_progress


def _fit(tmp_path, callbacks, max_steps=4, ckpt_path=None):
    trainer = L.Trainer(
        default_root_dir=tmp_path, max_steps=max_steps, accumulate_grad_batches=2,
        logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=callbacks, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(BoringModel(), ckpt_path=ckpt_path)
    return trainer


def test_a_step_marked_saved_is_not_saved_again(tmp_path):
    """Resumed at step 2 with accumulation 2, Lightning's ModelCheckpoint saves step 2 again
    at the first micro-batch (mid-window); marked as saved, it waits for step 3."""

    def resumed_saves(marked: bool) -> list[int]:
        saves: list[int] = []

        class Counting(ModelCheckpoint):
            def on_train_start(self, trainer, pl_module):
                super().on_train_start(trainer, pl_module)
                if marked:
                    mark_step_as_saved(self, trainer.global_step)

            def _save_checkpoint(self, trainer, filepath):
                saves.append(trainer.global_step)
                super()._save_checkpoint(trainer, filepath)

        every = {"dirpath": tmp_path / str(marked), "every_n_train_steps": 1, "save_top_k": -1}
        _fit(tmp_path, [ModelCheckpoint(**every, filename="first")], max_steps=2)
        _fit(tmp_path, [Counting(**every)], max_steps=4, ckpt_path=every["dirpath"] / "first.ckpt")
        return saves

    assert resumed_saves(marked=False)[0] == 2  # the library's behaviour we correct
    assert resumed_saves(marked=True) == [3, 4]


def test_checkpoint_batch_progress_has_the_layout_we_rescale(tmp_path):
    import torch

    _fit(tmp_path, [ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, filename="s")])
    checkpoint = torch.load(tmp_path / "s.ckpt", weights_only=True)
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    assert progress["current"]["ready"] == 6  # 3 steps x accumulation 2
    rescale_batch_progress(checkpoint, old=2, new=1)
    assert progress["current"]["ready"] == 3 and progress["total"]["ready"] == 3


def test_an_epoch_cut_by_max_steps_is_saved_processed_and_reopens(tmp_path):
    import torch

    # no validation: ModelCheckpoint saves at the epoch-end hook that max_steps=3 still runs
    _fit(tmp_path, [ModelCheckpoint(dirpath=tmp_path, filename="s")], max_steps=3)
    checkpoint = torch.load(tmp_path / "s.ckpt", weights_only=True)
    epochs = checkpoint["loops"]["fit_loop"]["epoch_progress"]
    assert epochs["current"]["processed"] == 1 and epochs["current"]["completed"] == 0
    reopen_epoch(checkpoint)
    assert epochs["current"]["processed"] == epochs["current"]["completed"] == 0


def test_the_logging_counter_we_align_exists_and_is_read(tmp_path):
    from lit_ft.compat import align_logging_counter

    trainer = _fit(tmp_path, [], max_steps=3)  # accumulation 2: 6 micro-batches, 3 steps
    trainer.fit_loop.epoch_loop._batches_that_stepped = 99
    align_logging_counter(trainer)
    assert trainer.fit_loop.epoch_loop._batches_that_stepped == trainer.global_step == 3


def test_the_child_process_observer_keeps_the_list_we_empty():
    """Lightning's own observer thread, built as its launcher builds it: its list of rank
    processes is the one stop_child_process_observer hands back and empties."""
    import os
    import subprocess
    import sys

    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    from lit_ft.compat import stop_child_process_observer

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    observer = _ChildProcessObserver(main_pid=os.getpid(), child_processes=[child])
    try:
        assert observer.name == "child-process-observer"
        observer.start()
        assert stop_child_process_observer() == [child]
        assert stop_child_process_observer() == []  # emptied: nothing left to watch
    finally:
        observer._finished = True
        child.wait(timeout=30)


def test_the_precision_plugin_runs_the_hooks_and_clipping_we_call(tmp_path):
    """Through lit_ft's 16-mixed plugin (which calls run_before_optimizer_step_hooks): 12
    optimizer steps of accumulation 2 run `on_before_optimizer_step` 12 times, and the
    gradients the optimizer then sees are clipped to norm <= 0.01. (The grad scaler skips
    the first steps while it lowers its scale from 65,536 until fp16 gradients are finite:
    seeded, and enough steps that some are taken.)"""
    import torch

    L.seed_everything(0, verbose=False)

    from lit_ft.training.amp import ClippingMixedPrecision

    hooks, norms = [], []

    class Watch(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            hooks.append(trainer.global_step)

    class Model(BoringModel):
        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=0.1)

            def record(opt, args, kwargs):  # runs after clipping, just before the step
                grads = [p.grad.flatten() for p in self.parameters()]
                norms.append(float(torch.linalg.vector_norm(torch.cat(grads))))

            optimizer.register_step_pre_hook(record)
            return optimizer

    trainer = L.Trainer(
        default_root_dir=tmp_path, max_steps=12, accumulate_grad_batches=2, logger=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        plugins=[ClippingMixedPrecision("16-mixed", "cpu")], gradient_clip_val=0.01,
        callbacks=[Watch()], accelerator="cpu",
    )  # fmt: skip
    trainer.fit(Model())
    assert hooks == list(range(12))
    finite = [n for n in norms if n == n and n != float("inf")]
    assert finite and all(n <= 0.01 + 1e-6 for n in finite), norms


def test_model_parallel_strategy_has_the_size_we_set():
    from lightning.pytorch.strategies import ModelParallelStrategy

    from lit_ft.compat import set_data_parallel_size

    strategy = ModelParallelStrategy(data_parallel_size="auto", tensor_parallel_size=1)
    assert strategy._data_parallel_size == "auto"  # the attribute Lightning resolves later
    set_data_parallel_size(strategy, 4)
    assert strategy._data_parallel_size == 4


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=16, n_head=2, vocab_size=64))


def test_no_split_modules_name_the_transformer_blocks():
    import torch

    from lit_ft.compat import no_split_module_names

    model = _tiny_gpt2()
    blocks = {type(block).__name__ for block in model.transformer.h}  # GPT2Block, by hand
    assert no_split_module_names(torch.nn.ModuleDict({"model": model})) == blocks


def test_the_wrap_policy_decides_its_classes_from_the_root():
    import torch

    from lit_ft.compat import wrap_policy_decided_at_wrap

    model = _tiny_gpt2()
    policy = wrap_policy_decided_at_wrap(lambda root: {type(model.transformer.h[0])})
    wrapped = policy._run_policy(torch.nn.ModuleDict({"m": model}), set(), {"device_id": None})
    assert list(wrapped) == list(model.transformer.h)  # the 3 blocks, nothing else


def test_a_datasets_fingerprint_follows_its_content():
    from datasets import Dataset

    from lit_ft.compat import dataset_fingerprint

    def times(k):
        return lambda row: {"x": row["x"] * k}

    data = Dataset.from_dict({"x": [1, 2, 3]})
    doubled, again, tripled = (data.map(times(k)) for k in (2, 2, 3))
    assert dataset_fingerprint(doubled) == dataset_fingerprint(again)
    assert len({dataset_fingerprint(d) for d in (data, doubled, tripled)}) == 3


def test_the_packaged_builders_we_read_options_from():
    import importlib

    from datasets.packaged_modules.csv.csv import CsvConfig

    from lit_ft.compat import packaged_builder_module

    module = importlib.import_module(packaged_builder_module("csv"))
    assert module.CsvConfig is CsvConfig  # the config class whose fields builder_options reads


def test_foreach_multiply_equals_a_plain_multiply():
    import torch

    from lit_ft.compat import multiply_all_in_place

    tensors = [torch.randn(3, 4), torch.randn(5)]
    expected = [t * 0.25 for t in tensors]
    multiply_all_in_place(tensors, torch.tensor(0.25))
    assert all(torch.equal(t, e) for t, e in zip(tensors, expected, strict=True))


# -- public routes that replaced private state --------------------------------------------


def test_a_batch_took_a_step_exactly_at_each_windows_end(tmp_path):
    """Accumulation 2, 3 steps: micro-batches 2, 4 and 6 end a window (a hand count)."""
    from lit_ft.observe.step_end import StepEndCallback

    seen = []

    class Watch(StepEndCallback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(self.took_step())

    _fit(tmp_path, [Watch()], max_steps=3)
    assert seen == [False, True] * 3


def test_the_learning_rate_logged_is_the_schedules_rate_of_each_step(tmp_path):
    """LambdaLR at 0.1 x (steps done + 1): step k (counted from 1) runs at k / 10, and is
    logged at k under the name Lightning's monitor gives it."""
    import torch
    from lightning.pytorch.loggers import Logger

    from lit_ft.observe.learning_rate import WarmupAwareLearningRateMonitor

    rows: dict[int, dict] = {}

    class Rows(Logger):
        name, version = "rows", 0

        def log_hyperparams(self, *args, **kwargs):
            pass

        def log_metrics(self, metrics, step=None):
            rows.setdefault(step, {}).update(metrics)

    class Model(BoringModel):
        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=1.0)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: (done + 1) / 10)
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": schedule, "interval": "step"},
            }

    trainer = L.Trainer(
        default_root_dir=tmp_path, max_steps=3, logger=Rows(), log_every_n_steps=1,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        callbacks=[WarmupAwareLearningRateMonitor(logging_interval="step")],
    )  # fmt: skip
    trainer.fit(Model())
    logged = {step: row["lr-SGD"] for step, row in rows.items() if "lr-SGD" in row}
    assert logged == pytest.approx({1: 0.1, 2: 0.2, 3: 0.3})


def test_supported_model_types_are_the_auto_classes_own():
    from transformers import AutoModelForCausalLM, GPT2Config

    from lit_ft.tasks import get_task, supported_model_types

    causal = supported_model_types(get_task("causal_lm"))
    assert "gpt2" in causal and "vit" not in causal  # ViT has no language-model head
    assert "bert" in supported_model_types(get_task("masked_lm"))
    assert "t5" in supported_model_types(get_task("seq2seq"))
    tiny = GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16)
    assert AutoModelForCausalLM.from_config(tiny).config.model_type in causal


def test_the_attention_a_config_records():
    from transformers import GPT2Config

    from lit_ft.compat import attention_implementation

    assert attention_implementation(GPT2Config(attn_implementation="eager")) == "eager"
    assert attention_implementation(GPT2Config(attn_implementation="sdpa")) == "sdpa"


def test_a_model_type_without_the_head_is_refused_naming_the_supported_ones():
    """In process, what tests/test_tasks.py checks through the CLI in the full suite."""
    from lit_ft.errors import LitFtError
    from lit_ft.tasks import check_architecture, get_task

    with pytest.raises(LitFtError, match="model type 'bert' has no AutoModelForSeq2SeqLM") as err:
        check_architecture(get_task("seq2seq"), "bert")
    assert "bart" in str(err.value) and "t5" in str(err.value)


def test_the_fused_kernel_devices_are_where_torch_runs_and_refuses_fused_steps():
    """The list matches what a fused AdamW step does: it runs on the CPU (listed), and torch
    refuses it, at the first step, for a tensor the kernel does not take."""
    import torch

    from lit_ft.compat import fused_kernel_devices

    assert "cpu" in fused_kernel_devices()
    weight = torch.nn.Parameter(torch.ones(3))
    weight.grad = torch.ones(3)
    torch.optim.AdamW([weight], lr=0.1, fused=True).step()
    assert torch.all(weight < 1)  # it stepped
    ints = torch.zeros(3, dtype=torch.long)
    ints.grad = torch.zeros(3, dtype=torch.long)
    refused = torch.optim.AdamW([ints], lr=0.1, fused=True)  # accepted here...
    with pytest.raises(RuntimeError, match="fused=True"):
        refused.step()  # ...refused only now: why lit_ft asks the device list up front


def test_a_checkpoint_callback_records_a_linked_file_as_its_save(tmp_path):
    """BestCheckpoint overrides ModelCheckpoint's one writer (`_save_checkpoint`) to link a
    file instead; what the writer records afterwards is recorded by `record_checkpoint_saved`.
    Lightning's own writer, with its signature, and the two attributes must still exist."""
    import inspect

    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_ft.compat import SAVE_METHOD, record_checkpoint_saved
    from lit_ft.training.best_checkpoint import BestCheckpoint

    writer = getattr(ModelCheckpoint, SAVE_METHOD)
    assert list(inspect.signature(writer).parameters) == ["self", "trainer", "filepath"]
    assert SAVE_METHOD in vars(BestCheckpoint)  # the override is the name Lightning calls
    saved = []

    class Logger:
        def after_save_checkpoint(self, callback):
            saved.append(callback.monitor)

    trainer = type("T", (), {"global_step": 7, "is_global_zero": True, "loggers": [Logger()]})
    callback = ModelCheckpoint(dirpath=tmp_path, monitor="val/loss")
    record_checkpoint_saved(callback, trainer, str(tmp_path / "best.ckpt"))
    assert callback._last_global_step_saved == 7
    assert callback._last_checkpoint_saved == str(tmp_path / "best.ckpt")
    assert saved == ["val/loss"]
