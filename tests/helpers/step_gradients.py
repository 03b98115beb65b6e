"""One optimizer step of a task through Lightning, and the gradients it was about to apply:
what the token-weighting tests (accumulation, processes) compare between batch layouts."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from lit_ft.model.build import ModelSpec
from lit_ft.training.module import FineTuneModule


class GradientsAtStep(FineTuneModule):
    """Saves the gradients the optimizer is about to use (after the token rescale)."""

    def __init__(self, *args, save_to: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.save_to = save_to

    def on_before_optimizer_step(self, optimizer) -> None:
        super().on_before_optimizer_step(optimizer)
        if self.trainer.is_global_zero:
            grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters()}
            torch.save({"grads": grads, "loss": self.step_loss.value}, self.save_to)


def fit_one_step(task, make_model, rows, batch, accumulate, save_to: Path, **trainer_kw) -> dict:
    module = GradientsAtStep(
        ModelSpec(task=task.name, name_or_path="unused"),
        optimizer=partial(torch.optim.SGD, lr=0.0),
        scheduler=None,
        num_training_steps=1,
        task=task,
        model=make_model(),
        targets_per_batch=batch * 64,
        save_to=str(save_to),
    )
    loader = DataLoader(rows, batch_size=batch, shuffle=False, collate_fn=task.collate())
    trainer = L.Trainer(
        max_steps=1, accumulate_grad_batches=accumulate, precision="32-true", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, **trainer_kw,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    return torch.load(save_to, weights_only=True)


def fit_recording(task, model, rows, steps: int, lr: float, metrics: dict[str, str]) -> list:
    """`steps` AdamW steps (constant lr, no weight decay, fp32) on `rows` as one batch of 4,
    and after each the step's loss and the logged train metrics named in `metrics` (our name
    -> lit_ft's logged key): what a comparison with a TRL trainer reads step by step."""
    seen = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            logged = trainer.callback_metrics
            row = {"loss": float(pl_module.step_loss.value)}
            seen.append(row | {ours: float(logged[key]) for ours, key in metrics.items()})

    module = FineTuneModule(
        ModelSpec(task=task.name, name_or_path="unused"),
        optimizer=partial(torch.optim.AdamW, lr=lr, weight_decay=0.0),
        scheduler=None,
        num_training_steps=steps,
        task=task,
        model=model,
    )
    loader = DataLoader(list(rows), batch_size=4, shuffle=False, collate_fn=task.collate())
    trainer = L.Trainer(
        max_steps=steps, precision="32-true", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        callbacks=[Record()],
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    return seen
