"""GRPO's validation: the mean reward of one completion per validation prompt."""

from __future__ import annotations

import os

import torch

from lit_ft.log import say
from lit_ft.tasks.metrics import Evaluator
from lit_ft.tasks.prompt_batch import COLUMNS_KEY
from lit_ft.tasks.weighted_mean import WeightedMean


class RolloutEvaluator(Evaluator):
    """Validation prompts, one completion each (greedy, or sampled from a fixed seed): the
    mean weighted reward and each function's, as sums across batches and processes."""

    def __init__(self, task) -> None:  # a GRPOTask (lit_ft/tasks/grpo.py)
        super().__init__()
        self.task = task
        names = ["reward", *(f"rewards/{n}" for n in task.reward_names), "completion_length"]
        self.means = torch.nn.ModuleDict({n.replace("/", "__"): WeightedMean() for n in names})
        self._shown = False

    def update(self, batch, outputs, model) -> None:
        task = self.task
        sequences, completion_mask, width = task.rollout(
            model, batch, 1, not task.eval_greedy, int(os.environ.get("PL_GLOBAL_SEED", 0))
        )
        completions = task.completion_texts(sequences, completion_mask, width)
        total, per_function = task.score(batch, completions, 1)
        n = total.shape[0]
        self.means["reward"].update(total.mean(), weight=n)
        for name, scores in per_function.items():
            self.means[f"rewards__{name}"].update(scores.mean(), weight=n)
        self.means["completion_length"].update(completion_mask.sum(-1).float().mean(), weight=n)
        if not self._shown and task.eval_samples:
            self._shown = True
            prompts = batch[COLUMNS_KEY]["_prompt"]
            for i in range(min(task.eval_samples, n)):
                say(f"sample: {prompts[i]!r} -> {completions[i]!r} (reward {float(total[i]):.3g})")

    def compute(self) -> dict[str, torch.Tensor]:
        return {k.replace("__", "/"): m.compute() for k, m in self.means.items()}

    def reset(self) -> None:
        super().reset()
        self._shown = False
