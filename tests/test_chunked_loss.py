"""Chunked cross-entropy (lit_ft/model/chunked_loss.py): the same loss and gradients as the
model's own loss, without the full logits; architectures it cannot follow fall back, saying
why. fp32 unless stated (bf16 under autocast, with a looser tolerance)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config

from lit_ft.model.chunked_loss import causal_logps, causal_loss, choose_loss, chunked_loss_problem
from lit_ft.tasks.base import Task, model_inputs
from lit_ft.tasks.preference import answer_logps

VOCAB = 512


def tiny_gpt2(**overrides):
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=32,
        n_positions=64,
        vocab_size=VOCAB,
        bos_token_id=0,
        eos_token_id=0,
        # no dropout: the two paths must see the same network
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        **overrides,
    )
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").train()


def padded_batch():
    torch.manual_seed(1)
    ids = torch.randint(0, VOCAB, (3, 20))
    mask = torch.ones_like(ids)
    mask[2, 14:] = 0  # right padding
    labels = ids.masked_fill(mask == 0, -100)
    labels[0, :6] = -100  # a prompt, as in SFT
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def packed_batch():
    """Two rows of packed examples: position ids restart, no attention mask (as SFT packs)."""
    torch.manual_seed(2)
    ids = torch.randint(0, VOCAB, (2, 16))
    positions = torch.tensor([list(range(7)) + list(range(9)), list(range(10)) + list(range(6))])
    labels = ids.clone()
    labels[0, :3] = labels[0, 7:10] = -100
    return {"input_ids": ids, "position_ids": positions, "labels": labels, "use_cache": False}


def losses_and_grads(model, batch, chunk_tokens, autocast=False):
    """(plain mean loss, its grads), (chunked mean loss, its grads) on one model."""
    count = (batch["labels"][:, 1:] != -100).sum()
    results = []
    for chunked in (False, True):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if chunked:
                loss = causal_loss(model, model_inputs(batch), chunk_tokens) / count
            else:
                loss = model(**model_inputs(batch)).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    return results


def assert_same(plain, chunked, tolerance):
    (loss_a, grads_a), (loss_b, grads_b) = plain, chunked
    assert torch.allclose(loss_a.float(), loss_b.float(), rtol=tolerance, atol=tolerance)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        a, b = grads_a[name].float(), grads_b[name].float()
        scale = a.abs().max().clamp(min=1e-6)
        assert (a - b).abs().max() / scale < tolerance, name


@pytest.mark.parametrize("chunk_tokens", [1, 7, 512])  # one token, uneven chunks, one chunk
def test_equal_to_the_plain_loss_with_padding_and_prompts(chunk_tokens):
    model = tiny_gpt2()
    assert chunked_loss_problem(model) is None
    assert_same(*losses_and_grads(model, padded_batch(), chunk_tokens), tolerance=1e-5)


def test_equal_to_the_plain_loss_with_packing():
    model = tiny_gpt2()
    assert_same(*losses_and_grads(model, packed_batch(), chunk_tokens=5), tolerance=1e-5)


def test_equal_with_lora_and_only_the_adapters_get_gradients():
    from lit_ft.model.peft import LoraSettings, apply_lora

    model = apply_lora(tiny_gpt2(), LoraSettings(r=4, dropout=0.0))
    assert chunked_loss_problem(model) is None  # peft's wrapper is looked through
    plain, chunked = losses_and_grads(model, padded_batch(), chunk_tokens=8)
    assert all("lora_" in name for name in chunked[1])
    assert_same(plain, chunked, tolerance=1e-5)


def test_bf16_autocast_stays_close():
    # bf16 keeps 8 bits of mantissa: the two paths round differently, within ~1%
    model = tiny_gpt2()
    assert_same(*losses_and_grads(model, padded_batch(), 8, autocast=True), tolerance=3e-2)


def test_head_with_a_bias_is_followed():
    model = tiny_gpt2(tie_word_embeddings=False)
    head = model.get_output_embeddings()
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.normal_()
    model.set_output_embeddings(biased)
    assert chunked_loss_problem(model) is None
    assert_same(*losses_and_grads(model, padded_batch(), 8), tolerance=1e-5)


def logps_and_grads(model, batch, chunk_tokens, autocast=False):
    """Per-row log-probability sums and the gradients of a loss that weighs each row
    differently (as DPO's does), plain then chunked."""
    weights = torch.tensor([0.7, -1.3, 2.1])[: batch["input_ids"].shape[0]]
    results = []
    for chunked in (False, True):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if chunked:
                sums, counts = causal_logps(model, model_inputs(batch), chunk_tokens)
            else:
                inputs = {k: v for k, v in model_inputs(batch).items() if k != "labels"}
                sums, counts = answer_logps(model(**inputs).logits, batch["labels"])
        (sums * weights).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((sums.detach(), counts, grads))
    return results


@pytest.mark.parametrize("chunk_tokens", [1, 7, 512])
@pytest.mark.parametrize("batch", [padded_batch, packed_batch])
def test_per_row_log_probabilities_equal_the_plain_ones(chunk_tokens, batch):
    (sums_a, counts_a, grads_a), (sums_b, counts_b, grads_b) = logps_and_grads(
        tiny_gpt2(), batch(), chunk_tokens
    )
    assert torch.equal(counts_a, counts_b)
    assert torch.allclose(sums_a, sums_b, rtol=1e-5, atol=1e-4)
    assert_same((sums_a[0], grads_a), (sums_b[0], grads_b), tolerance=1e-5)


def test_per_row_log_probabilities_with_lora_and_bf16():
    from lit_ft.model.peft import LoraSettings, apply_lora

    model = apply_lora(tiny_gpt2(), LoraSettings(r=4, dropout=0.0))
    plain, chunked = logps_and_grads(model, padded_batch(), chunk_tokens=8)
    assert all("lora_" in name for name in chunked[2])
    assert_same((plain[0][0], plain[2]), (chunked[0][0], chunked[2]), tolerance=1e-5)
    # bf16 matmuls, fp32 sums: within bf16's rounding
    plain, chunked = logps_and_grads(tiny_gpt2(), padded_batch(), 8, autocast=True)
    assert torch.allclose(plain[0], chunked[0], rtol=3e-2, atol=0.5)
    assert_same((plain[0][0], plain[2]), (chunked[0][0], chunked[2]), tolerance=3e-2)
    # under no_grad (the reference) it computes without keeping anything for backward
    with torch.no_grad():
        sums, _ = causal_logps(tiny_gpt2(), model_inputs(padded_batch()), 8)
    assert sums.grad_fn is None and sums.shape == (3,)


def test_the_task_hook_returns_the_mean_and_the_target_count():
    model, batch = tiny_gpt2(), padded_batch()
    task = Task.__new__(Task)
    task.shifted_labels = True
    task.loss_choice = choose_loss(True, model, tokens_per_batch=60, chunk_tokens=8)
    assert task.loss_choice.chunked
    loss, count, _ = task.training_loss(model, batch)
    assert count == (batch["labels"][:, 1:] != -100).sum()
    assert torch.allclose(loss, model(**model_inputs(batch)).loss, atol=1e-6)


def test_auto_decides_from_the_size_of_the_logits():
    model = tiny_gpt2()
    small = choose_loss("auto", model, tokens_per_batch=2_048, chunk_tokens=512)
    assert not small.chunked and "<= 256 MB" in small.why
    # 100,000 tokens x 512 vocab x 8 bytes = 391 MB: on
    large = choose_loss("auto", model, tokens_per_batch=100_000, chunk_tokens=512)
    assert large.chunked and "391 MB" in large.text()
    assert not choose_loss(False, model, 100_000, 512).chunked


def test_soft_capped_logits_fall_back_with_the_reason():
    from transformers import Gemma2Config

    config = Gemma2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
    )
    model = AutoModelForCausalLM.from_config(config)
    choice = choose_loss(True, model, tokens_per_batch=100_000, chunk_tokens=512)
    assert not choice.chunked
    assert "final_logit_softcapping=30.0" in choice.text() and "plain" in choice.text()


def test_logits_changed_in_code_are_caught_by_the_probe(monkeypatch):
    # stands for an architecture that scales its logits in its forward, not in its config
    model = tiny_gpt2()
    forward = type(model).forward

    def scaled(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        out.logits = out.logits * 0.5
        return out

    monkeypatch.setattr(type(model), "forward", scaled)
    problem = chunked_loss_problem(model)
    assert problem and "not its output embedding of the last hidden states" in problem


def test_config_rule_names_bad_values():
    from omegaconf import OmegaConf

    from lit_ft.model.chunked_loss import chunked_loss_problems

    bad = OmegaConf.create({"chunked_loss": "sometimes", "loss_chunk_tokens": 0})
    problems = chunked_loss_problems(bad)
    assert len(problems) == 2 and "model.chunked_loss" in problems[0]
    assert not chunked_loss_problems(OmegaConf.create({"chunked_loss": "auto"}))


@pytest.mark.slow
def test_a_run_with_chunked_loss_says_so_trains_and_reports_memory(tiny_overrides, capsys):
    import lit_ft

    overrides = [*tiny_overrides, "model.chunked_loss=true", "trainer.max_steps=4"]
    results = lit_ft.train_from_overrides(overrides)
    out = capsys.readouterr().out
    assert "training loss chunked, 512 tokens a chunk (model.chunked_loss=true:" in out
    assert results["training_loss"].startswith("training loss chunked")
    train = results["metrics"]["train"]
    assert train["steps"] == 4 and train["loss_first_step"] > train["loss_last_10_steps"] > 0
    # the memory measured (peak RSS on this CPU) and estimated, side by side
    memory = results["memory"]
    assert memory["measured_peak_mb"] > 0 and "peak RSS" in memory["measured_by"]
    assert memory["estimated_mb"] > 0 and memory["estimate_parts_mb"]["logits"] > 0
    assert "memory estimate: " in out and "memory: estimated " in out


def test_auto_keeps_the_plain_loss_under_compile():
    choice = choose_loss("auto", tiny_gpt2(), 100_000, 512, compiled=True)
    assert not choice.chunked and "compile.enabled=true" in choice.why
    forced = choose_loss(True, tiny_gpt2(), 100_000, 512, compiled=True)
    assert forced.chunked and "uncompiled" in forced.why
