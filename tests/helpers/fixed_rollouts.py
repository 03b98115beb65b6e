"""GRPO with rollouts that are a pure function of the prompt, so batch layouts (accumulation,
processes) can be compared on the very same completions; a module-level class, so ddp_spawn's
processes receive it."""

from __future__ import annotations

import torch

from lit_ft.tasks.base import pad_rows
from lit_ft.tasks.grpo import GRPOTask

EOS = 0


def completion(prompt_last: int, k: int) -> list[int]:
    """Completion k of a prompt ending in id p: 1 to 6 ids, ending in EOS when k is even
    (odd ones run on: to max_new_tokens when long enough)."""
    length = 1 + (prompt_last + 3 * k) % 6
    ids = [(prompt_last + 7 * k + j) % 500 + 1 for j in range(length)]
    return ids + [EOS] if k % 2 == 0 else ids


class FixedRolloutGRPO(GRPOTask):
    def generate(self, model, ids, mask, sample: bool, seed: int) -> torch.Tensor:
        g = self.num_generations if ids.shape[0] % self.num_generations == 0 else 1
        rows = [completion(int(row[-1]), i % g) for i, row in enumerate(ids.tolist())]
        rows = [r[: self.max_new_tokens] for r in rows]
        completions = pad_rows(rows, EOS, max(len(r) for r in rows))
        return torch.cat([ids, completions.to(ids.device)], dim=1)
