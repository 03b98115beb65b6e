"""The rollouts of one optimizer step's window, kept for `task.num_iterations` steps (GRPO).

With num_iterations = mu > 1 the sampler gives each window of A micro-batches mu times in a
row (lit_ft/data/sampler.py): the first time, each micro-batch's completions are sampled,
rewarded and kept here with their log-probabilities under the policy that sampled them (the
"old" policy of the clipped ratio); the next mu - 1 times the same completions are trained on
again, the ratio now measuring how far the updated policy has moved from the sampling one.
With A = 4 and mu = 2, a step's 4 generations serve steps 1 and 2, the next 4 steps 3 and 4.

A checkpoint saved inside a window (step 3 of mu = 4, say) carries the window, so a resumed
run trains its remaining iterations on the same completions (they could not be sampled again:
the policy that sampled them is gone). Plain tensors, lists and strings, so the checkpoint
still loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from lit_ft.errors import LitFtError


@dataclass
class Rollout:
    """One micro-batch's samples and what was computed from them when they were drawn."""

    prompt_ids: torch.Tensor  # the micro-batch's prompts: a reused one must be the same
    sequences: torch.Tensor  # [b x G, prompt + completion]
    completion_mask: torch.Tensor
    width: int  # the prompts' padded width
    total: torch.Tensor  # weighted reward per completion
    per_function: dict[str, torch.Tensor]
    advantages: torch.Tensor
    completions: list[str]
    old_logps: torch.Tensor | None = None  # under the sampling policy, set at its first step
    reference_logps: torch.Tensor | None = None  # under the reference (task.beta > 0)

    def to(self, device) -> Rollout:
        def move(value):
            if isinstance(value, torch.Tensor):
                return value.to(device)
            if isinstance(value, dict):
                return {k: move(v) for k, v in value.items()}
            return value

        return Rollout(**{f.name: move(getattr(self, f.name)) for f in fields(self)})


class RolloutWindow:
    """The current window's rollouts by micro-batch index (0 .. A-1)."""

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations
        self.rollouts: dict[int, Rollout] = {}

    @staticmethod
    def iteration(step: int, iterations: int) -> int:
        """Which use of its window optimizer step `step` (0-based) is: every epoch has mu x
        windows steps (the sampler pads to whole windows), so it is the step modulo mu."""
        return step % iterations

    def keep(self, micro: int, rollout: Rollout) -> None:
        if micro == 0:
            self.rollouts.clear()  # a new window
        self.rollouts[micro] = rollout

    def reuse(self, micro: int, step: int, prompt_ids: torch.Tensor) -> Rollout:
        rollout = self.rollouts.get(micro)
        if rollout is None:
            raise LitFtError(
                f"task.num_iterations={self.iterations}: step {step + 1} reuses micro-batch "
                f"{micro}'s rollouts, which this process does not have (resumed from a "
                "checkpoint without them, or on another process count or accumulation); "
                "resume from the run's own last checkpoint with the same trainer settings"
            )
        rollout = rollout.to(prompt_ids.device)
        if not torch.equal(rollout.prompt_ids, prompt_ids):
            raise LitFtError(
                f"task.num_iterations={self.iterations}: step {step + 1}'s micro-batch {micro} "
                "holds other prompts than the ones its rollouts were sampled for; the sampler "
                "must repeat each window (trainer.accumulate_grad_batches batches) in order"
            )
        return rollout

    # -- in checkpoints ---------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {str(micro): vars(rollout.to("cpu")) for micro, rollout in self.rollouts.items()}

    def load(self, state: dict[str, Any] | None) -> None:
        self.rollouts = {int(micro): Rollout(**fields_) for micro, fields_ in (state or {}).items()}
