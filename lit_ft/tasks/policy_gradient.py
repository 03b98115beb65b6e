"""GRPO's arithmetic: group-relative advantages and the clipped policy-gradient loss of each
loss type, as plain functions of tensors (lit_ft/tasks/grpo.py runs the rollouts).

Advantages. Each prompt gets G completions (a group); a completion's advantage is its reward
against its group's: A = r - mean(group), divided by the group's standard deviation
(`scale_rewards=group`, GRPO), by the micro-batch's (`batch`), or not at all (`none`, as
Dr. GRPO recommends). E.g. a group's rewards (1, 0, 0, 1): mean 0.5, std 0.577 (unbiased, as
TRL), advantages (0.866, -0.866, -0.866, 0.866). A group whose rewards are all equal teaches
nothing: every advantage is 0.

Loss per completion token t, with ratio rho = exp(logp_now - logp_old) (1 while a batch's
samples are used once) and eps / eps_high the clip range:

    l_t = -min(rho A, clip(rho, 1 - eps, 1 + eps_high) A) + beta KL_t,
    KL_t = exp(ref - logp) - (ref - logp) - 1        (k3; 0 when the policy is the reference)

How a step averages the l_t decides how each completion weighs, and it has to hold the same
across micro-batches and processes. lit_ft's module weighs each micro-batch by the count a
task returns (lit_ft/training/step_loss.py), so each loss type returns the count that makes
the step's loss its own definition over the whole step:

- grpo:    mean over completions of each completion's token mean; count = completions.
           (A short completion's tokens weigh more than a long one's.)
- dr_grpo: sum of all l_t / (completions x max_new_tokens); returned per micro-batch as
           sum / (n x T) with count n, so the step gives sum_all / (N x T). No length bias.
- dapo:    sum of all l_t / all completion tokens of the step; count = tokens.

E.g. two micro-batches, completions of 2 and 6 tokens in the first, 4 in the second, all
l_t = 1 except 3 in the second: grpo (1 + 1 + 3) / 3 = 1.67; dapo (2 + 6 + 12) / 12 = 1.67
too here, but with the 3s on the 2-token completion instead, dapo gives (6 + 6 + 4) / 12 =
1.33 and grpo (3 + 1 + 1) / 3 = 1.67. Accumulation 1 vs 4 and 1 vs 2 processes give the same
step loss either way (tests/test_grpo.py).
"""

from __future__ import annotations

import torch

LOSS_TYPES = ("grpo", "dr_grpo", "dapo")
SCALINGS = ("group", "batch", "none")


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: str, batch: torch.Tensor | None = None
) -> torch.Tensor:
    """Advantages of completions laid out group after group (prompt 0's G, then prompt 1's).
    `batch`: the rewards whose spread scale="batch" divides by (every process's), else
    `rewards`'."""
    grouped = rewards.view(-1, group_size)
    centred = (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)
    if scale == "group":
        spread = grouped.std(dim=1).repeat_interleave(group_size) if group_size > 1 else None
    elif scale == "batch":
        batch = rewards if batch is None else batch
        spread = batch.std().expand_as(rewards) if batch.numel() > 1 else None
    else:
        spread = None
    # 1e-4, as TRL: a group of equal rewards has centred 0 and stays 0
    return centred if spread is None else centred / (spread + 1e-4)


def clipped_token_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float,
    eps_high: float,
    reference_logps: torch.Tensor | None = None,
    beta: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(l_t per completion token, where the clip bound, KL_t or None); [completions, tokens]."""
    ratio = torch.exp(logps - old_logps)
    advantage = advantages.unsqueeze(1)
    unclipped = ratio * advantage
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * advantage
    loss = -torch.min(unclipped, clipped)
    kl = None
    if reference_logps is not None and beta:
        diff = reference_logps - logps
        kl = torch.exp(diff) - diff - 1
        loss = loss + beta * kl
    return loss, (clipped < unclipped), kl


def aggregate(
    token_loss: torch.Tensor, mask: torch.Tensor, loss_type: str, max_new_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(this micro-batch's loss, the count the step weighs it by): see the module docstring."""
    mask = mask.to(token_loss.dtype)
    completions = torch.tensor(token_loss.shape[0], device=token_loss.device)
    if loss_type == "grpo":
        per_completion = (token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return per_completion.mean(), completions
    if loss_type == "dr_grpo":
        return (token_loss * mask).sum() / (token_loss.shape[0] * max_new_tokens), completions
    if loss_type == "dapo":
        tokens = mask.sum()
        return (token_loss * mask).sum() / tokens.clamp(min=1), tokens.long()
    raise ValueError(f"unknown loss type '{loss_type}'; available: {', '.join(LOSS_TYPES)}")
