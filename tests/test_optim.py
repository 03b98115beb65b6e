"""Parameter groups, step counting and warmup arithmetic."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from lit_ft.training.optim import build_scheduler, optimizer_steps, weight_decay_groups


def test_no_weight_decay_on_biases_and_norms():
    config = AutoConfig.for_model(
        "gpt2", n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=16
    )
    model = AutoModelForCausalLM.from_config(config)
    decay, no_decay = weight_decay_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert no_decay["weight_decay"] == 0.0 and "weight_decay" not in decay
    assert all(p.ndim >= 2 for p in decay["params"])
    assert {names[id(p)] for p in no_decay["params"]} >= {
        "transformer.ln_f.weight",
        "transformer.h.0.attn.c_attn.bias",
    }
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize(
    ("batches", "accumulate", "epochs", "steps", "limit", "expected"),
    [
        (100, 1, 2, -1, None, 200),
        (100, 3, 1, -1, None, 34),  # the last, incomplete window still steps
        (100, 1, 5, 120, None, 120),  # max_steps wins when it comes first
        (100, 1, 1, 500, None, 100),  # the epoch limit wins when it comes first
        (100, 1, -1, 50, None, 50),
        (100, 2, 1, -1, 0.5, 25),
        (100, 1, 1, -1, 10, 10),
    ],
)
def test_optimizer_steps(batches, accumulate, epochs, steps, limit, expected):
    assert optimizer_steps(batches, accumulate, epochs, steps, limit) == expected


def test_warmup_ratio_becomes_steps():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, num_training_steps=100, warmup_ratio=0.1)
    lrs = []
    for _ in range(12):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    assert lrs[11] < 1.0
