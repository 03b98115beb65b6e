"""ROUGE F-measures averaged over answers, kept as sums so processes can hold unequal shares.

torchmetrics 1.9's `ROUGEScore` keeps one list entry per answer with `dist_reduce_fx=None`,
and its sync gathers list entries one collective each: a process that scored 6 answers runs
6 all-gathers, one that scored 5 runs 5, and the next collective pairs a float32 ROUGE entry
with the float64 loss state (gloo aborts: "Received data size doesn't match expected size 4
vs 2"). Unequal shares are the normal case: 11 validation rows on 2 processes are 6 and 5
real rows once DDP's padding row is left out (lit_ft/data/eval_rows.py).

Here each key is two sums (F-measure total and answers), one all-reduce each whatever the
share; per answer the score is torchmetrics' own `rouge_score`, so the figure is the same
mean over answers:

    batch 1: 3 answers with mean F 0.5, batch 2: 1 answer with F 0.9 -> (1.5 + 0.9) / 4 = 0.6
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric


class RougeF(Metric):
    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, keys: Sequence[str], **kwargs) -> None:
        super().__init__(**kwargs)
        self.keys = tuple(keys)
        # float64: a sum over many answers in float32 would drift from the mean
        self.add_state("totals", torch.zeros(len(self.keys), dtype=torch.float64), "sum")
        self.add_state("answers", torch.tensor(0.0, dtype=torch.float64), "sum")

    def update(self, predictions: Sequence[str], references: Sequence[str]) -> None:
        from torchmetrics.functional.text import rouge_score

        if not predictions:
            return
        scores = rouge_score(list(predictions), list(references), rouge_keys=self.keys)
        means = torch.stack([scores[f"{key}_fmeasure"] for key in self.keys])
        self.totals += means.to(self.totals) * len(predictions)  # the batch's mean x answers
        self.answers += len(predictions)

    def compute(self) -> dict[str, torch.Tensor]:
        # No answer scored is NaN (0/0), never a made-up 0.
        means = (self.totals / self.answers).to(torch.float32)
        return dict(zip(self.keys, means, strict=True))
