"""The loss of an optimizer step, weighted by tokens: every target token of the step counts
the same, whichever micro-batch or process it is in.

Hugging Face models return the mean loss of one micro-batch. Lightning divides each
micro-batch's loss by the accumulation and DDP averages the processes' gradients, so a step
trained on the mean of micro-batch means: with accumulation 4, a micro-batch holding 10
answer tokens weighed as much as one holding 400. The step's true loss is
sum of token losses / number of target tokens, over all its micro-batches and processes;
its denominator is only known once the last micro-batch is in. So each micro-batch
backpropagates its *sum* of token losses divided by a fixed constant `scale` (the same on
every process), and once the step's last backward is done the gradients are multiplied by

    scale x accumulation x processes / targets of the whole step

which undoes Lightning's division, DDP's averaging and the constant, leaving
grad(sum of token losses) / targets: e.g. scale 1,024, accumulation 4, 2 processes, 3,000
targets: x 2.73. The targets and loss sums of the processes are added with one all-reduce of
two numbers per step. The rescale runs in the module's `on_before_optimizer_step`, before
gradient clipping (Lightning calls callbacks' hooks of that name before the module's, so a
callback there sees the gradients before the rescale).
"""

from __future__ import annotations

import torch

from lit_ft.compat import multiply_all_in_place


class StepLoss:
    def __init__(self, scale: float) -> None:
        # The constant each micro-batch's loss sum is divided by: about the targets of one
        # micro-batch (e.g. 8 sequences x 128 tokens = 1,024), so fp16's loss scaling sees
        # gradients of the usual size. Any constant gives the same result after the rescale.
        self.scale = float(max(scale, 1))
        self.value: torch.Tensor | None = None  # the last step's loss, for logs and results
        self._sum: torch.Tensor | int = 0
        self._targets: torch.Tensor | int = 0

    def reset(self) -> None:
        self._sum, self._targets = 0, 0

    def backward_loss(self, mean_loss: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The micro-batch's loss to backpropagate, from the model's mean over `targets`."""
        # where, not a product alone: a micro-batch without targets has a NaN mean (0/0);
        # its gradient is still zero, as cross-entropy gives ignored tokens none.
        total = torch.where(targets > 0, mean_loss * targets, torch.zeros_like(mean_loss))
        self._sum = self._sum + total.detach()
        self._targets = self._targets + targets
        return total / self.scale

    def finish_step(self, parameters, strategy, accumulation: int) -> torch.Tensor:
        """Rescale the step's gradients to the token mean; return the step's loss."""
        both = torch.stack([torch.as_tensor(x, dtype=torch.float32) for x in self.totals()])
        both = strategy.reduce(both.to(strategy.root_device), reduce_op="sum")
        loss_sum, targets = both[0], both[1].clamp(min=1)
        factor = self.scale * accumulation * strategy.world_size / targets
        groups: dict[tuple, list[torch.Tensor]] = {}  # one fused multiply per device and dtype
        for p in parameters:
            if p.grad is not None:
                groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
        for (device, dtype), grads in groups.items():
            multiply_all_in_place(grads, factor.to(device=device, dtype=dtype))
        self.value = loss_sum / targets
        self.reset()
        return self.value

    def totals(self) -> tuple[torch.Tensor | int, torch.Tensor | int]:
        return self._sum, self._targets
