"""The LightningModule: an Auto-resolved Hugging Face model, AdamW with a warmup schedule, and
the task's evaluation metrics (`lit_ft.tasks.metrics`) for validation and test."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch

from lit_ft.data.eval_rows import PADDING_KEY
from lit_ft.data.mixture import SOURCE_KEY
from lit_ft.data.row_index import ROW_KEY
from lit_ft.log import say
from lit_ft.model.build import ModelSpec, build_model
from lit_ft.tasks import Task
from lit_ft.tasks.base import model_inputs
from lit_ft.tasks.chat import chat_settings
from lit_ft.training.optim import warmup_steps_for, weight_decay_groups
from lit_ft.training.step_loss import StepLoss

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


class FineTuneModule(L.LightningModule):
    """Wraps `AutoModelFor<task>`; logs the training loss and the task's evaluation metrics.

    `optimizer` and `scheduler` are partials (Hydra `_partial_: true`): the module supplies
    the parameter groups and the number of optimizer steps that sizes the schedule.
    """

    def __init__(
        self,
        spec: ModelSpec,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None,
        num_training_steps: int,
        task: Task,
        model=None,
        targets_per_batch: int = 1,
        sources: list[str] | None = None,
    ):
        super().__init__()
        self.spec = spec
        self.task = task
        self.model = model if model is not None else build_model(spec, task.model_class())
        # from_pretrained returns the model in eval mode, and Lightning (>= 2.2) keeps each
        # submodule's mode: without this, dropout would be off for the whole fine-tune.
        self.model.train()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.num_training_steps = num_training_steps
        # The warmup in optimizer steps, computed once (the schedule, the pre-flight summary
        # and the learning-rate log read it): e.g. 180 steps x warmup_ratio 0.05 = 9.
        warmup = getattr(scheduler, "keywords", {}) if scheduler is not None else {}
        self.warmup_steps = warmup_steps_for(
            num_training_steps, warmup.get("warmup_steps", 0), warmup.get("warmup_ratio", 0.0)
        )
        self.evaluator = task.evaluator()  # a Module: its metric states follow the device
        # data=mixture: one more evaluator per source, fed the same forwards (val/<label>/...)
        self.source_evaluators = torch.nn.ModuleDict(
            {label: task.evaluator() for label in sources or []}
        )
        self.last_train_loss: torch.Tensor | None = None  # the micro-batch's mean (NaN check)
        # The step's loss weighted by tokens (lit_ft/training/step_loss.py); off under
        # DeepSpeed, whose engine owns backward and the gradient buffers.
        self.step_loss = StepLoss(scale=targets_per_batch)
        self.token_weighted = True
        self._validation_started = time.perf_counter()
        self._generation_cost_said = False
        self.before_metrics: dict[str, float] | None = None  # training/evaluation.py

    def configure_model(self) -> None:
        # trainer=fsdp2 (lit_ft/model/fsdp2.py): Lightning hands over the process mesh here,
        # before the optimizer exists; each fit/validate/test calls it, the model shards once.
        from lit_ft.model.fsdp2 import is_fully_sharded, shard_model

        if self.device_mesh is not None and not is_fully_sharded(self.model):
            shard_model(self.model, self.device_mesh["data_parallel"])

    def forward(self, **batch: torch.Tensor):
        return self.model(**model_inputs(batch))

    def on_fit_start(self) -> None:
        from lightning.pytorch.strategies import DeepSpeedStrategy

        self.token_weighted = not isinstance(self.trainer.strategy, DeepSpeedStrategy)
        self.step_loss.reset()  # a resumed run starts on a step boundary

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # A task that samples (GRPO's rollouts) draws from a stream seeded by where it is:
        # the same (seed, step, batch, rank) after a resume gives the same samples.
        self.task.step_seed = _step_seed(self.trainer.global_step, batch_idx, self.global_rank)
        self.task.window_position = (
            self.trainer.global_step,
            batch_idx % self.trainer.accumulate_grad_batches,
        )
        loss, targets, metrics = self.task.training_loss(self.model, batch)
        self.last_train_loss = loss.detach()
        rows = batch["input_ids"].shape[0]
        if metrics:  # e.g. preference tuning's reward accuracy and margins
            self.log_dict({f"train/{k}": v for k, v in metrics.items()}, batch_size=rows)
        if not self.token_weighted:
            self.log("train/loss", loss, prog_bar=True, batch_size=rows)
            self.step_loss.value = self.last_train_loss
            return loss
        return self.step_loss.backward_loss(loss, targets)

    def on_before_optimizer_step(self, optimizer) -> None:
        if not self.token_weighted:
            return
        loss = self.step_loss.finish_step(
            self.model.parameters(), self.trainer.strategy, self.trainer.accumulate_grad_batches
        )
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)

    # -- evaluation: the same evaluator for validation and test, logged with the stage -----
    # Reset at the start of each loop, inside the loop's own grad context: trainer.validate()
    # runs under inference mode and validation during fit may not, and a metric state created
    # in one cannot be updated in place in the other.
    def on_validation_epoch_start(self) -> None:
        # the optimizer steps the weights have taken: a task whose sampling engine holds a
        # copy of them (GRPO's task.rollout=vllm) refreshes it when this moved
        self.task.window_position = (self.trainer.global_step, 0)
        self.evaluator.reset()
        for evaluator in self.source_evaluators.values():
            evaluator.reset()
        self._validation_started = time.perf_counter()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch)

    def _evaluate(self, batch: dict[str, torch.Tensor]) -> None:
        """Score the batch's real rows: DDP's repeats of the split's first rows, which pad
        the last batches to one count per process (lit_ft/data/eval_rows.py), are left out,
        so 2 processes report the figures of 1 over the same rows."""
        padding = batch.pop(PADDING_KEY, None)
        if padding is not None and bool(padding.any()):
            if not bool((~padding).any()):  # only repeats: a forward keeps the ranks in step
                self(**batch)
                return
            batch = self.task.select_rows(batch, ~padding)
        sources = batch.get(SOURCE_KEY)
        if sources is None or not len(self.source_evaluators):
            self.evaluator.update(batch, self(**batch), self.model)
            return
        # data=mixture: a forward per source's rows, each counted for the mixture and its source
        for index, evaluator in enumerate(self.source_evaluators.values()):
            keep = sources == index
            if bool(keep.any()):
                part = self.task.select_rows(batch, keep)
                outputs = self(**part)
                self.evaluator.update(part, outputs, self.model)
                evaluator.update(part, outputs, self.model)

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")
        if not self.trainer.sanity_checking:
            self._say_generation_cost(time.perf_counter() - self._validation_started)

    def _say_generation_cost(self, validation_seconds: float) -> None:
        """Once per run: what generating answers adds to a validation pass (this process's
        share; the pass's seconds include them, e.g. 1.2 s of a 3.4 s pass)."""
        cost = self.evaluator.generation_cost()
        if cost is None or not cost[0] or self._generation_cost_said:
            return
        self._generation_cost_said = True
        answers, seconds = cost
        say(
            f"scored {answers} generated answers in {seconds:.2f} s of a "
            f"{validation_seconds:.2f} s validation pass ({seconds / validation_seconds:.0%})"
        )

    def on_test_epoch_start(self) -> None:
        self.evaluator.reset()

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch)

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    def _log_evaluation(self, stage: str) -> None:
        metrics = self.evaluator.compute()
        self.log_dict({f"{stage}/{name}": value for name, value in metrics.items()}, prog_bar=True)
        if stage == "val":  # data=mixture: each source's figures (the test split is not mixed)
            for label, evaluator in self.source_evaluators.items():
                figures = evaluator.compute()
                self.log_dict({f"val/{label}/{name}": v for name, v in figures.items()})

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> list[dict[str, Any]]:
        # The rows' indices in the split (lit_ft/data/row_index.py): for the writer, not the model.
        indices = batch.pop(ROW_KEY, None)
        rows = self.task.predict(self.model, batch)
        # one prediction per batch row (a packed instruction row holds several: no index)
        if indices is not None and len(rows) == len(indices):
            for row, index in zip(rows, indices.tolist(), strict=True):
                row[ROW_KEY] = index
        return rows

    def on_train_start(self) -> None:
        # A resume restores each parameter group's learning rate as the checkpoint left it,
        # from the schedule of *that* run: resumed with a larger max_steps, the first step
        # would train at the old schedule's end (0.0 after linear decay). The rate of the
        # step about to run is recomputed from this run's schedule (identical when unchanged).
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                groups, step = scheduler.optimizer.param_groups, scheduler.last_epoch
                rates = zip(groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
                for group, base, rate in rates:
                    group["lr"] = base * rate(step)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(weight_decay_groups(self.model))
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, num_training_steps=self.num_training_steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        # Lightning's FSDP precision plugin refuses to clip by norm: with sharded gradients
        # the total norm needs every rank's shard, which the root FSDP module's own
        # clip_grad_norm_ gathers. Every other strategy clips through its precision plugin.
        from lightning.pytorch.strategies import FSDPStrategy

        strategy = self.trainer.strategy
        if (
            gradient_clip_val
            and gradient_clip_algorithm in (None, "norm")
            and isinstance(strategy, FSDPStrategy)
        ):
            strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain containers only, so the file loads with torch.load(weights_only=True) and
        # `python -m lit_ft.export` can rebuild the network without the original config.
        checkpoint["lit_ft"] = {
            "model_spec": self.spec.to_dict(),
            "hf_config": self.model.config.to_dict(),
            # the starting model's metrics, so a resumed life reports them without validating
            "before": self.before_metrics,
            # the schedule's length: a resume on other hardware keeps it (training/optim.py)
            "num_training_steps": self.num_training_steps,
            # the chat template and end-of-turn token the task set on the tokenizer
            "tokenizer": chat_settings(self.task.tokenizer),
        }
        state = self.task.checkpoint_state()
        if state is not None:
            # Under DDP only rank 0 writes the file, but every rank dumps the checkpoint
            # (training/rng.py does the same): each rank's state is gathered, each takes its own.
            states = [state]
            if self.trainer.world_size > 1:
                import torch.distributed as dist

                states = [None] * self.trainer.world_size
                dist.all_gather_object(states, state)
            checkpoint["lit_ft"]["task_state_per_rank"] = states

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("lit_ft", {}).get("task_state_per_rank")
        if states is not None:
            rank = self.global_rank
            self.task.load_checkpoint_state(states[rank] if rank < len(states) else None)


def _step_seed(step: int, batch_idx: int, rank: int) -> int:
    """A seed for (the run's seed, optimizer step, batch index, rank): e.g. seed 42, step 7,
    batch 15, rank 1 -> one 63-bit number; hash() of a tuple of ints is stable across runs."""
    base = int(os.environ.get("PL_GLOBAL_SEED", 0))  # lightning.seed_everything sets it
    return hash((base, step, batch_idx, rank)) & (2**63 - 1)
