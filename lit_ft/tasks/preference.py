"""The preference losses: DPO and its common variants, on summed answer log-probabilities.

Each takes, per pair, the policy's and the reference's log-probability of the chosen and the
rejected answer (summed over the answer's tokens) and the answers' token counts:

- sigmoid (DPO, Rafailov et al. 2023): -log sigmoid(beta x delta), where delta =
  (policy - reference) on chosen minus the same on rejected. A policy equal to its reference
  has delta 0: loss ln 2 = 0.693.
- ipo (Azar et al. 2023): (delta' - 1 / (2 beta))^2, with delta' from log-probabilities
  averaged over each answer's tokens, as TRL computes it (confirmed with the IPO authors,
  TRL's note says): without it the square grows with answer length.
- hinge (SLiC): max(0, 1 - beta x delta).
- simpo (Meng et al. 2024): no reference; -log sigmoid(beta x (mean chosen log-prob - mean
  rejected log-prob) - gamma), mean over each answer's tokens.

Rewards, as TRL logs them: beta x (policy - reference) log-probability of an answer (SimPO:
beta x its mean log-probability); reward accuracy is the share of pairs whose chosen reward is
above the rejected one, margin their mean difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSSES = ("sigmoid", "ipo", "hinge", "simpo")
NEEDS_REFERENCE = {"sigmoid": True, "ipo": True, "hinge": True, "simpo": False}


@dataclass
class PairScores:
    """Per pair (chosen, rejected): summed answer log-probabilities and answer lengths."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor


def preference_loss(
    kind: str,
    beta: float,
    policy: PairScores,
    reference: PairScores | None,
    gamma: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss per pair, chosen reward, rejected reward)."""
    if kind == "simpo":
        chosen = policy.chosen / policy.chosen_tokens.clamp(min=1)
        rejected = policy.rejected / policy.rejected_tokens.clamp(min=1)
        loss = -F.logsigmoid(beta * (chosen - rejected) - gamma)
        return loss, beta * chosen.detach(), beta * rejected.detach()
    chosen_ratio = policy.chosen - reference.chosen
    rejected_ratio = policy.rejected - reference.rejected
    delta = chosen_ratio - rejected_ratio
    if kind == "sigmoid":
        loss = -F.logsigmoid(beta * delta)
    elif kind == "hinge":
        loss = torch.relu(1 - beta * delta)
    elif kind == "ipo":
        averaged = chosen_ratio / policy.chosen_tokens.clamp(min=1) - rejected_ratio / (
            policy.rejected_tokens.clamp(min=1)
        )
        loss = (averaged - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown preference loss '{kind}'; available: {', '.join(LOSSES)}")
    chosen_ratio = resolved(chosen_ratio.detach(), policy.chosen.detach())
    rejected_ratio = resolved(rejected_ratio.detach(), policy.rejected.detach())
    return loss, beta * chosen_ratio, beta * rejected_ratio


# fp32 carries ~7 digits: a summed answer log-probability of -117 is rounded to ~1e-5. The
# starting policy and its reference are separate copies of the same weights; on CI's Intel
# Xeon with AMX their forwards rounded apart (mean margin -8.1e-7 at beta 0.1, ~8e-6 nats,
# where exact arithmetic gives 0), and 5 of 160 held-out pairs counted as ranked right; on
# another Xeon the two forwards were bit-identical. A log-ratio under 1e-5 of the
# log-probability (1.2e-3 nats at -117) is that rounding, not a preference: reported as 0, so
# the starting policy shows reward accuracy 0 and margin 0 on every CPU. The loss keeps the
# raw difference.
RESOLUTION = 1e-5


def resolved(ratio: torch.Tensor, logps: torch.Tensor) -> torch.Tensor:
    """`ratio` (policy - reference log-probability), with differences within fp32 rounding of
    `logps` set to exactly 0."""
    return torch.where(ratio.abs() <= RESOLUTION * logps.abs(), torch.zeros_like(ratio), ratio)


def answer_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each row's labelled tokens, and how many there are.

    A causal LM's logits at t predict token t+1, so logits[:, :-1] meet labels[:, 1:]. In
    fp32 whatever the training precision: a sum over hundreds of tokens in bf16 would lose
    the small differences DPO learns from. log p = logit - logsumexp(logits), gathered, so
    the [rows, tokens, vocab] log-softmax is never stored besides the logits.
    """
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != -100
    picked = logits.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    token_logps = (picked - torch.logsumexp(logits, dim=-1)) * mask
    return token_logps.sum(-1), mask.sum(-1)


def split_pairs(sums: torch.Tensor, counts: torch.Tensor) -> PairScores:
    """A batch holds the chosen answers first, then the rejected ones (one forward for both)."""
    chosen, rejected = sums.chunk(2)
    chosen_tokens, rejected_tokens = counts.chunk(2)
    return PairScores(chosen, rejected, chosen_tokens, rejected_tokens)


def pair_metrics(
    loss: torch.Tensor, chosen_reward: torch.Tensor, rejected_reward: torch.Tensor, policy
) -> dict[str, torch.Tensor]:
    """Means over the batch's pairs, named as lit_ft logs them (train/..., val/...)."""
    return {
        "reward_accuracy": (chosen_reward > rejected_reward).float().mean(),
        "reward_margin": (chosen_reward - rejected_reward).mean(),
        "chosen_reward": chosen_reward.mean(),
        "rejected_reward": rejected_reward.mean(),
        "chosen_logps": policy.chosen.detach().mean(),
        "rejected_logps": policy.rejected.detach().mean(),
    }
