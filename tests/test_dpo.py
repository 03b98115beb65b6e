"""Preference tuning (task=dpo): each loss on a hand-computed example, the ln 2 start, the
reference without a second copy (LoRA adapters off, precomputed), and TRL's DPOTrainer
step for step on the same model, pairs and optimizer."""

from __future__ import annotations

import copy
import json
import math
from functools import partial

import datasets
import pytest
import torch
from helpers.step_gradients import fit_recording

from lit_ft.tasks import TaskContext
from lit_ft.tasks.dpo import PreferenceTask
from lit_ft.tasks.preference import PairScores, answer_logps, preference_loss

COLUMNS = {"prompt_column": "prompt", "chosen_column": "chosen", "rejected_column": "rejected"}
PAIRS = {
    "prompt": ["Name a colour.", "Say yes.", "Count to three.", "Greet me."],
    "chosen": ["red", "yes", "1 2 3", "hello there"],
    "rejected": ["blue sky", "no", "four", "go away"],
}


# -- the losses, by hand ------------------------------------------------------------------
def _scores(c, r, nc=1, nr=1) -> PairScores:
    t = partial(torch.tensor, dtype=torch.float64)
    return PairScores(t([c]), t([r]), t([nc]), t([nr]))


def test_each_loss_on_a_hand_computed_pair():
    # policy: chosen -4, rejected -9 (5 and 3 tokens); reference: chosen -5, rejected -7
    policy, reference, beta = _scores(-4.0, -9.0, 5, 3), _scores(-5.0, -7.0), 0.1
    # delta = (-4 - -5) - (-9 - -7) = 1 + 2 = 3
    sigmoid, chosen, rejected = preference_loss("sigmoid", beta, policy, reference)
    assert sigmoid.item() == pytest.approx(math.log(1 + math.exp(-0.3)))  # -log sigmoid(0.3)
    assert (chosen.item(), rejected.item()) == pytest.approx((0.1, -0.2))  # beta x ratios
    hinge, _, _ = preference_loss("hinge", beta, policy, reference)
    assert hinge.item() == pytest.approx(0.7)  # max(0, 1 - 0.3)
    # IPO on per-token ratios: 1/5 - (-2)/3 = 0.8667; (0.8667 - 1/(2 x 0.1))^2 = 4.1333^2
    ipo, _, _ = preference_loss("ipo", beta, policy, reference)
    assert ipo.item() == pytest.approx((1 / 5 + 2 / 3 - 5) ** 2)
    # SimPO, no reference: mean log-probs -0.8 and -3; -log sigmoid(0.1 x 2.2 - 0.5)
    simpo, chosen, rejected = preference_loss("simpo", beta, policy, None, gamma=0.5)
    assert simpo.item() == pytest.approx(math.log(1 + math.exp(-(0.22 - 0.5))))
    assert (chosen.item(), rejected.item()) == pytest.approx((-0.08, -0.3))


def test_rewards_within_fp32_rounding_of_the_reference_are_ties():
    """The starting policy is its reference; two forwards of the same weights may round apart
    (1e-5 of a log-probability of -117 on an AMX Xeon). fp32 rounding is no preference: the
    reported rewards are 0 and the pair is not counted as ranked right; the loss is unchanged."""
    from lit_ft.tasks.preference import pair_metrics

    table = [[-117.0, -40.0], [-140.0, -60.0], [9, 4], [9, 4]]
    reference = PairScores(*torch.tensor(table, dtype=torch.float64))
    # pair 1 rounds apart by 2e-5 (chosen) and -3e-5 (rejected): 7e-6 of its log-probabilities;
    # pair 2 really moved: 0.01 of a nat on each side
    policy = PairScores(
        reference.chosen + torch.tensor([2e-5, 0.01], dtype=torch.float64),
        reference.rejected + torch.tensor([-3e-5, -0.01], dtype=torch.float64),
        reference.chosen_tokens,
        reference.rejected_tokens,
    )
    loss, chosen, rejected = preference_loss("sigmoid", 0.1, policy, reference)
    assert chosen.tolist() == pytest.approx([0.0, 0.001]) and chosen[0].item() == 0.0
    assert rejected.tolist() == pytest.approx([0.0, -0.001]) and rejected[0].item() == 0.0
    metrics = pair_metrics(loss, chosen, rejected, policy)
    assert metrics["reward_accuracy"].item() == 0.5  # pair 2 only
    # the loss uses the raw difference: -log sigmoid(0.1 x 5e-5) for pair 1
    assert loss[0].item() == pytest.approx(math.log(1 + math.exp(-0.1 * 5e-5)), rel=1e-6)


def test_answer_log_probabilities_sum_the_labelled_tokens_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 1, 2, 3, 6]])
    sums, counts = answer_logps(logits, labels)
    logp = logits.log_softmax(-1)
    # logits at t predict token t+1
    assert sums[0].item() == pytest.approx((logp[0, 1, 3] + logp[0, 2, 4]).item(), abs=1e-5)
    assert counts.tolist() == [2, 4]


# -- the task on a tiny GPT-2 ----------------------------------------------------------------
def _model(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=512, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


@pytest.fixture
def tokenizer(gpt2_tokenizer):
    copied = copy.deepcopy(gpt2_tokenizer)
    copied.chat_template = None
    return copied


def _task_and_rows(tokenizer, **options):
    task = PreferenceTask(tokenizer, COLUMNS, max_length=64, chat_template="chatml", **options)
    rows = task.preprocess(
        datasets.Dataset.from_dict(PAIRS), "train", TaskContext("t", load_from_cache=False)
    )
    return task, rows


def test_the_answers_alone_are_scored_chosen_first(tokenizer):
    task, rows = _task_and_rows(tokenizer)
    batch = task.collate()([rows[i] for i in range(4)])
    assert batch["input_ids"].shape[0] == 8  # 4 pairs: chosen rows, then rejected rows
    trained = [tokenizer.decode([t for t in row if t != -100]) for row in batch["labels"].tolist()]
    assert trained[:4] == [f"{a}<|im_end|>\n" for a in PAIRS["chosen"]]
    assert trained[4:] == [f"{a}<|im_end|>\n" for a in PAIRS["rejected"]]
    assert "chosen: <|im_start|>user" in task.preview(rows)


def test_the_first_step_loss_is_ln_2_with_a_frozen_copy_as_reference(tokenizer):
    task, rows = _task_and_rows(tokenizer)
    model = _model()
    task.check_model(model)
    assert task.reference_kind == "a frozen copy of the starting model"
    batch = task.collate()([rows[i] for i in range(4)])
    loss, pairs, metrics = task.training_loss(model, batch)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6) and int(pairs) == 4
    assert metrics["reward_margin"].item() == 0.0
    loss.backward()  # the policy gets gradients, the reference none
    assert next(model.parameters()).grad is not None
    assert all(p.grad is None for p in task._reference.parameters())


def test_lora_reference_is_the_base_with_adapters_off(tokenizer):
    from peft import LoraConfig, get_peft_model

    task, rows = _task_and_rows(tokenizer)
    base = _model()
    batch = task.collate()([rows[i] for i in range(4)])
    with torch.no_grad():
        expected = answer_logps(base(input_ids=batch["input_ids"]).logits, batch["labels"])
    peft = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["c_attn"]))
    with torch.no_grad():  # trained adapters: B is no longer zero
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    task.check_model(peft)
    assert task.reference_kind == "the same network with its LoRA adapters off"
    sums, counts = task.reference_logps(peft, batch)
    torch.testing.assert_close(sums, expected[0])
    with torch.no_grad():
        adapted = answer_logps(peft(input_ids=batch["input_ids"]).logits, batch["labels"])[0]
    assert not torch.allclose(adapted, expected[0])  # the adapters do change the policy


def test_precomputed_reference_equals_the_frozen_copy(tokenizer):
    task, rows = _task_and_rows(tokenizer, precompute_reference=True)
    model = _model()
    task.check_model(model)

    class Data:  # what prepare_with_model reads of the datamodule
        datasets = {"train": rows, "validation": None}

    data = Data()
    task.prepare_with_model(model, data)
    assert {"reference_chosen", "reference_rejected"} <= set(data.datasets["train"].column_names)
    batch = task.collate()([data.datasets["train"][i] for i in range(4)])
    with torch.no_grad():
        expected = answer_logps(model(input_ids=batch["input_ids"]).logits, batch["labels"])[0]
    torch.testing.assert_close(batch["_reference_logps"], expected, atol=1e-5, rtol=1e-5)
    loss, _, _ = task.training_loss(model, batch)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)


def test_chunked_log_probabilities_give_the_same_loss_and_gradients(tokenizer):
    from lit_ft.model.chunked_loss import choose_loss

    task, rows = _task_and_rows(tokenizer)
    model = _model()
    task.check_model(model)  # the frozen copy: the reference goes through the same path
    batch = task.collate()([rows[i] for i in range(4)])
    with torch.no_grad():  # a policy unlike its reference, so the loss is not ln 2
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    results = []
    for chunked in (False, True):
        task.loss_choice = choose_loss(chunked, model, tokens_per_batch=10**6, chunk_tokens=5)
        assert task.loss_choice.chunked is chunked
        model.zero_grad(set_to_none=True)
        loss, _, metrics = task.training_loss(model, batch)
        loss.backward()
        results.append((loss.detach(), metrics, [p.grad.clone() for p in model.parameters()]))
    (loss_a, metrics_a, grads_a), (loss_b, metrics_b, grads_b) = results
    assert loss_a.item() != pytest.approx(math.log(2), abs=1e-4)
    torch.testing.assert_close(loss_a, loss_b, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(metrics_a["reward_margin"], metrics_b["reward_margin"])
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_bad_dpo_options_are_reported_together():
    from lit_ft.config import compose
    from lit_ft.errors import LitFtError
    from lit_ft.validate import validate_config

    cfg = compose(["task=dpo", "task.loss=kto", "task.beta=0"])
    with pytest.raises(LitFtError) as err:
        validate_config(cfg)
    assert "task.loss='kto'" in str(err.value) and "task.beta must be a positive" in str(err.value)


# -- against TRL's DPOTrainer ---------------------------------------------------------------
STEPS, LR, BETA = 4, 1e-2, 0.1


def _lit_ft_steps(tokenizer) -> list[dict]:
    task, rows = _task_and_rows(tokenizer, beta=BETA)
    model = _model()
    task.check_model(model)
    names = {"accuracy": "train/reward_accuracy", "margin": "train/reward_margin"}
    return fit_recording(task, model, rows, STEPS, LR, names)


def _trl_steps(tokenizer, tmp_path) -> list[dict]:
    from trl import DPOConfig, DPOTrainer

    conversational = datasets.Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": p}] for p in PAIRS["prompt"]],
            "chosen": [[{"role": "assistant", "content": c}] for c in PAIRS["chosen"]],
            "rejected": [[{"role": "assistant", "content": r}] for r in PAIRS["rejected"]],
        }
    )
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, max_steps=STEPS,
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=0.0, beta=BETA, loss_type=["sigmoid"], logging_steps=1, report_to=[],
        use_cpu=True, save_strategy="no", seed=0, max_length=64, dataloader_drop_last=False,
        bf16=False,  # TRL defaults to bf16 autocast; lit_ft runs this at 32-true
    )  # fmt: skip
    trainer = DPOTrainer(  # the reference: the same starting weights (TRL reloads by path)
        model=_model(),
        ref_model=_model(),
        args=args,
        train_dataset=conversational,
        processing_class=tokenizer,
    )
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss" in e and "rewards/accuracies" in e]
    return [
        {"loss": e["loss"], "accuracy": e["rewards/accuracies"], "margin": e["rewards/margins"]}
        for e in logged
    ]


@pytest.mark.slow
def test_per_step_loss_and_reward_accuracy_match_trl(tokenizer, tmp_path):
    """Same tiny GPT-2, the same 4 pairs as one batch, AdamW at a constant learning rate, no
    clipping: lit_ft's step losses, reward accuracies and margins equal TRL's."""
    from lit_ft.tasks.chat import NAMED_TEMPLATES

    ours = _lit_ft_steps(tokenizer)
    trl_tokenizer = copy.deepcopy(tokenizer)
    trl_tokenizer.chat_template = NAMED_TEMPLATES["chatml"]
    theirs = _trl_steps(trl_tokenizer, tmp_path)
    print("step  lit_ft loss  TRL loss  lit_ft acc  TRL acc")
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        row = f"{a['loss']:.6f}  {b['loss']:.6f}  {a['accuracy']:.2f}  {b['accuracy']:.2f}"
        print(f"{i + 1:>4}  {row}")
    assert len(ours) == len(theirs) == STEPS
    assert ours[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    for a, b in zip(ours, theirs, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
        assert a["accuracy"] == pytest.approx(b["accuracy"])
        assert a["margin"] == pytest.approx(b["margin"], abs=1e-4)
    assert ours[-1]["loss"] < ours[0]["loss"]  # and it learns


# -- the offline example -------------------------------------------------------------------
def test_offline_pairs_reject_the_chosen_words_shuffled(monkeypatch):
    """The built-in pairs, on hand-made docstring rows: the rejected answer is the chosen
    summary's own words in another order; short summaries and repeats are left out."""
    from lit_ft.data import corpora

    def row(name, summary):
        return {"module": "m", "name": name, "signature": "(x)", "summary": summary}

    rows = [
        row("f", "Return the number of items in x."),
        row("g", "Too short here."),  # 3 words: left out
        row("f", "Return the number of items in x."),  # the same prompt and answer again
        row("h", "Read a line from the stream and return it."),
    ]
    monkeypatch.setattr(corpora, "docstring_rows", lambda min_paragraphs: iter(rows))
    pairs = [json.loads(line) for line in corpora.CORPORA["python_docstring_preferences"]()]
    assert [p["prompt"] for p in pairs] == [
        "One-line docstring for m.f(x):",
        "One-line docstring for m.h(x):",
    ]
    for pair in pairs:
        assert sorted(pair["rejected"].split()) == sorted(pair["chosen"].split())
        assert pair["rejected"] != pair["chosen"]
    again = [json.loads(line) for line in corpora.CORPORA["python_docstring_preferences"]()]
    assert again == pairs  # seeded by the name: the same pairs on every run


@pytest.mark.slow
def test_offline_example_runs_and_reports_reward_accuracy(run_cli, tmp_path):
    """`experiment=tiny_gpt2_docstring_dpo` on a tiny budget (4 steps, 2 validation batches of
    16 pairs): it runs, and the reward accuracy and margin it reports equal a plain HF count
    with its exported weights against the bundled model on the same 32 held-out pairs."""
    from helpers.preference_check import held_out_rows, reward_margins

    from lit_ft.config.compose import asset_path
    from lit_ft.data.corpora import corpus_file

    corpora, run_dir = tmp_path / "corpora", tmp_path / "run"
    result = run_cli(
        [
            "experiment=tiny_gpt2_docstring_dpo",
            "trainer.max_steps=4",
            "trainer.limit_val_batches=2",
            "trainer.precision=32-true",  # stated: auto depends on the host's CPU
            "trainer.enable_progress_bar=false",
            f"data.corpus_dir={corpora}",  # written here: the test sees the pairs it trained on
            f"paths.output_dir={run_dir}",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    before, after = results["metrics"]["before"], results["metrics"]["after"]
    # Before training the policy is the reference: every reward is 0 and no pair is won.
    assert before["val/reward_accuracy"] == 0.0
    assert before["val/loss"] == pytest.approx(math.log(2))
    assert results["metrics"]["train"]["steps"] == 4
    assert "validation reward accuracy 0.0000 ->" in result.stdout

    rows = held_out_rows(corpus_file("python_docstring_preferences", corpora), 0.1, 42, 2 * 16)
    margins = reward_margins(run_dir / "hf_model", asset_path("tiny-gpt2-pystdlib"), rows)
    won = sum(m > 0 for m in margins) / len(margins)
    assert after["val/reward_accuracy"] == pytest.approx(won)
    beta = 0.1  # the example's task.beta
    assert after["val/reward_margin"] == pytest.approx(beta * sum(margins) / len(margins), rel=1e-3)
    # Measured: 1.0 (margin 1.58) after these 4 steps; the shuffled words are told apart early.
    assert won > 0.5
