"""The LightningModule: an Auto-resolved Hugging Face model with AdamW and a warmup schedule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torchmetrics import MeanMetric

from lit_ft.model import ModelSpec, build_model
from lit_ft.optim import weight_decay_groups

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


class FineTuneModule(L.LightningModule):
    """Wraps `AutoModelFor<task>`; logs train loss, validation loss and perplexity.

    `optimizer` and `scheduler` are partials (Hydra `_partial_: true`): the module supplies
    the parameter groups and the number of optimizer steps that sizes the schedule.
    """

    def __init__(
        self,
        spec: ModelSpec,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None,
        num_training_steps: int,
        model=None,
    ):
        super().__init__()
        self.spec = spec
        self.model = model if model is not None else build_model(spec)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.num_training_steps = num_training_steps
        # Token-weighted mean: exp(mean loss per token) is the corpus perplexity, which a
        # mean of per-batch perplexities is not.
        # nan_strategy="disable": a diverged batch makes val/loss NaN instead of being dropped.
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.last_train_loss: torch.Tensor | None = None

    def forward(self, **batch: torch.Tensor):
        return self.model(**batch)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model(**batch).loss
        self.last_train_loss = loss.detach()
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        # Reset here, inside the loop's own grad context: trainer.validate() runs under
        # inference mode and validation during fit may not, and a metric state created in one
        # cannot be updated in place in the other.
        self.val_loss.reset()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss = self.model(**batch).loss
        # Causal LMs predict token t+1 from tokens <= t: the first token of each row is no target.
        targets = (batch["labels"][:, 1:] != -100).sum()
        self.val_loss.update(loss, weight=targets)

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.log_dict({"val/loss": loss, "val/ppl": torch.exp(loss)}, prog_bar=True)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(weight_decay_groups(self.model))
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, num_training_steps=self.num_training_steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain containers only, so the file loads with torch.load(weights_only=True) and
        # `python -m lit_ft.export` can rebuild the network without the original config.
        checkpoint["lit_ft"] = {
            "model_spec": self.spec.to_dict(),
            "hf_config": self.model.config.to_dict(),
        }
