"""Hugging Face `TrainerCallback` objects under the Lightning Trainer.

An HF user's callbacks (early stopping on a custom rule, a notifier, a logger of their own)
are written against the HF Trainer's events and its `TrainingArguments` / `TrainerState` /
`TrainerControl`. `HFCallbacks` is one Lightning callback that holds them all, as the HF
Trainer's CallbackHandler does, keeps a `TrainerState` in step with the Lightning run and
calls each event where its HF counterpart happens:

    HF event          when (Lightning)
    on_train_begin    fit starts (after a resume: with the restored step)
    on_epoch_begin/end  a training epoch starts / ends
    on_step_begin     the first micro-batch of an optimizer step starts
    on_substep_end    a micro-batch that did not step the optimizer ends (accumulation)
    on_step_end       the micro-batch that stepped the optimizer ends
    on_log            every `trainer.log_every_n_steps` optimizer steps, and after each
                      validation, with the logged dict
    on_evaluate       a validation ends, with its metrics (`val/loss`, ...)
    on_save           a checkpoint was written (lit_ft's streams, or one `should_save` asked)
    on_train_end      fit ends

The logged dict has lit_ft's names (`train/loss`) and the HF Trainer's for the same figures
(`loss`, `learning_rate`, `epoch`), so a callback that reads `logs["loss"]` keeps working.
`control.should_training_stop` stops the run at the end of the step (Lightning's
`trainer.should_stop`: checkpoints, the final evaluation and the export still happen);
`control.should_save` writes a resumable checkpoint of that step into the checkpoint
directory (`hf-step=<N>.ckpt`). The other flags (should_evaluate, should_log) have no
counterpart in a Lightning run and are reset unread, as the HF Trainer resets them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Callback

from lit_ft.errors import LitFtError


def is_hf_callback(obj) -> bool:
    """A transformers TrainerCallback instance or class (the HF Trainer takes both)."""
    from transformers import TrainerCallback

    if isinstance(obj, type):
        return issubclass(obj, TrainerCallback)
    return isinstance(obj, TrainerCallback)


class HFCallbacks(Callback):
    """`callbacks`: TrainerCallback instances or classes (a class is instantiated with no
    arguments, as the HF Trainer does). `output_dir`, `seed`, `batch_size`: what the
    `TrainingArguments` handed to them say (the rest comes from the Trainer at fit start);
    `checkpoint_dir`: where a save that `control.should_save` asks for goes. Under several
    processes a callback must set the flags alike on every one (a save is collective)."""

    def __init__(
        self, callbacks: list, output_dir: str, seed: int, batch_size: int, checkpoint_dir: str
    ):
        self.callbacks = [cb() if isinstance(cb, type) else cb for cb in callbacks]
        self.output_dir, self.seed, self.batch_size = output_dir, seed, batch_size
        self.checkpoint_dir = Path(checkpoint_dir)
        self.args = self.state = self.control = None
        self._stepped_at = -1  # the optimizer step last reported by on_step_end
        self._in_step = False  # on_step_begin sent for the step under way

    # -- the HF objects ----------------------------------------------------------------------
    def _call(self, event: str, trainer, pl_module, **kwargs) -> None:
        extra = {
            "model": pl_module.model,
            "processing_class": getattr(pl_module.task, "tokenizer", None),
            "optimizer": trainer.optimizers[0] if trainer.optimizers else None,
            "lr_scheduler": trainer.lr_scheduler_configs[0].scheduler
            if trainer.lr_scheduler_configs
            else None,
            **kwargs,
        }
        for callback in self.callbacks:
            answer = getattr(callback, event)(self.args, self.state, self.control, **extra)
            if answer is not None:  # the HF contract: an event may return a new control
                self.control = answer
        self._follow_control(trainer, pl_module)

    def _follow_control(self, trainer, pl_module) -> None:
        if self.control.should_training_stop:
            trainer.should_stop = True  # Lightning ends the fit after this step
        if self.control.should_save:
            self.control.should_save = False
            path = self.checkpoint_dir / f"hf-step={trainer.global_step}.ckpt"
            trainer.save_checkpoint(path)  # on_save follows (on_save_checkpoint below)
        self.control.should_evaluate = self.control.should_log = False

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or self.args is not None:
            return
        from transformers import TrainerControl, TrainerState, TrainingArguments

        accumulation = trainer.accumulate_grad_batches
        self.args = TrainingArguments(
            output_dir=self.output_dir,
            per_device_train_batch_size=self.batch_size,
            gradient_accumulation_steps=accumulation,
            max_steps=getattr(pl_module, "num_training_steps", -1) or -1,
            num_train_epochs=trainer.max_epochs if trainer.max_epochs else 1,
            logging_steps=trainer.log_every_n_steps,
            seed=self.seed,
            report_to=[],  # lit_ft's loggers report; the args only describe the run
        )
        self.state = TrainerState(
            max_steps=self.args.max_steps,
            logging_steps=trainer.log_every_n_steps,
            train_batch_size=self.batch_size,
            num_train_epochs=self.args.num_train_epochs,
            is_local_process_zero=trainer.local_rank == 0,
            is_world_process_zero=trainer.is_global_zero,
        )
        self.control = TrainerControl()
        for callback in self.callbacks:
            callback.on_init_end(self.args, self.state, self.control)

    def _sync_state(self, trainer) -> None:
        self.state.global_step = trainer.global_step
        batches = trainer.num_training_batches
        epoch_part = 0.0
        if isinstance(batches, int) and batches > 0:  # a stream's length is unknown: inf
            done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
            epoch_part = min(done / batches, 1.0)
        self.state.epoch = trainer.current_epoch + epoch_part

    # -- Lightning's hooks -> HF events ------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        self._sync_state(trainer)
        self._stepped_at = trainer.global_step
        loader = trainer.train_dataloader
        self._call("on_train_begin", trainer, pl_module, train_dataloader=loader)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._sync_state(trainer)
        self.control.should_epoch_stop = False
        self._call("on_epoch_begin", trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self._in_step:
            self._in_step = True
            self._sync_state(trainer)
            self._call("on_step_begin", trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync_state(trainer)
        if trainer.global_step == self._stepped_at:  # accumulating: no optimizer step yet
            self._call("on_substep_end", trainer, pl_module)
            return
        self._stepped_at, self._in_step = trainer.global_step, False
        self._call("on_step_end", trainer, pl_module)
        if trainer.global_step % trainer.log_every_n_steps == 0:
            self._log(trainer, pl_module, self._train_logs(trainer))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._sync_state(trainer)
        self._call("on_epoch_end", trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.state is None or trainer.state.fn != "fit":
            return  # only the fit's validations: lit_ft's before/after evaluations are its own
        self._sync_state(trainer)
        metrics = _floats(trainer.callback_metrics, ("val/",))
        self._call("on_evaluate", trainer, pl_module, metrics=metrics)
        self._log(trainer, pl_module, metrics)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self.state is not None and trainer.state.fn == "fit":
            self._call("on_save", trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._sync_state(trainer)
        self._call("on_train_end", trainer, pl_module)

    # -- what on_log gets ----------------------------------------------------------------------
    def _train_logs(self, trainer) -> dict[str, float]:
        logs = _floats(trainer.callback_metrics, ("train/",))
        if "train/loss" in logs:
            logs["loss"] = logs["train/loss"]
        if trainer.optimizers:
            logs["learning_rate"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        return logs

    def _log(self, trainer, pl_module, logs: dict[str, float]) -> None:
        logs = {**logs, "epoch": round(self.state.epoch, 4)}
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self._call("on_log", trainer, pl_module, logs=logs)


def _floats(metrics, prefixes: tuple[str, ...]) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in metrics.items()
        if key.startswith(prefixes) and getattr(value, "numel", lambda: 1)() == 1
    }


def split_callbacks(callbacks) -> tuple[list, list]:
    """(Lightning callbacks, HF TrainerCallbacks) of a FineTuner's `callbacks`; anything
    else is refused with what is accepted."""
    from lightning.pytorch import Callback as LightningCallback

    lightning, hf, other = [], [], []
    for callback in callbacks or []:
        if isinstance(callback, LightningCallback):
            lightning.append(callback)
        elif is_hf_callback(callback):
            hf.append(callback)
        else:
            other.append(type(callback).__name__)
    if other:
        raise LitFtError(
            f"callbacks must be Lightning callbacks (lightning.pytorch.Callback) or Hugging "
            f"Face TrainerCallbacks; got {', '.join(other)}"
        )
    return lightning, hf
