"""A weighted mean kept as two sums, so no weight can be lost on the way.

torchmetrics 1.9's `MeanMetric(nan_strategy="disable")` replaces every weight with 1
(`_cast_and_nan_check_input`; torchmetrics #3434, fix #3433 not released): a loss "weighted"
by its target count became a plain mean of batch means, and lit_ft's validation loss moved
with the batch size (5.56 at batch 1, 6.18 at batch 8, 6.32 true, on one instruction set).

Here the states are the weighted sum and the sum of weights, each summed across processes
(`dist_reduce_fx="sum"`), and `compute()` divides once:

    batches (loss 2.0, 3 targets) and (loss 4.0, 1 target): (2·3 + 4·1) / (3 + 1) = 2.5

NaN is kept on purpose: a diverged batch makes the mean NaN instead of being dropped, so a
broken run never reports a good-looking figure.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric


class WeightedMean(Metric):
    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("total", "weight"):
            zero = torch.tensor(0.0, dtype=torch.float64)
            self.add_state(name, default=zero, dist_reduce_fx="sum")

    def update(self, value, weight=1.0) -> None:
        """`value`: a scalar or a tensor of values; `weight`: one weight per value (broadcast).

        Sums in float64: a validation pass over millions of tokens adds many float32 batch
        losses, and float32 sums drift past the 1e-5 the invariance tests ask of the mean."""
        value = torch.as_tensor(value, device=self.total.device).detach().to(torch.float64)
        weight = torch.as_tensor(weight, device=self.total.device).detach().to(torch.float64)
        weight = weight.expand_as(value) if weight.dim() < value.dim() else weight
        self.total += (value * weight).sum()
        self.weight += weight.sum()

    def compute(self) -> torch.Tensor:
        # No weight at all (nothing evaluated) is NaN too: 0/0, never a made-up 0.
        return (self.total / self.weight).to(torch.float32)
