"""Reward models (task=reward_model): the Bradley-Terry loss by hand, rows tokenized as TRL's
RewardTrainer tokenizes them (checked against the tokenizer's own API), TRL's RewardTrainer step
for step on the same model and pairs, and a run whose export scores pairs as its predictions say.
The held-out figures at every batch size and on 2 processes: tests/test_eval_invariance.py."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import datasets
import pytest
import torch
from helpers.step_gradients import fit_recording

import lit_ft
from lit_ft.errors import LitFtError
from lit_ft.tasks import TaskContext
from lit_ft.tasks.chat import NAMED_TEMPLATES
from lit_ft.tasks.reward_model import MARGIN_KEY, RewardModelTask

COLUMNS = {"prompt_column": "prompt", "chosen_column": "chosen", "rejected_column": "rejected"}
PAIRS = {
    "prompt": ["Name a colour.", "Say yes.", "Count to three.", "Greet me."],
    "chosen": [" red", " yes", " 1 2 3", " hello there"],
    "rejected": [" blue sky", " no", " four", " go away"],
}


@pytest.fixture
def tokenizer(gpt2_tokenizer):
    copied = copy.deepcopy(gpt2_tokenizer)
    copied.chat_template = None
    return copied


def _rows(task, pairs=PAIRS):
    data = datasets.Dataset.from_dict(pairs)
    return task.preprocess(data, "train", TaskContext("t", load_from_cache=False))


def _model(tokenizer, seed: int = 0):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=512, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return GPT2ForSequenceClassification(config)


# -- the loss, by hand ------------------------------------------------------------------------
def test_the_loss_on_hand_computed_pairs(tokenizer):
    task = RewardModelTask(tokenizer, {**COLUMNS, "margin_column": "m"}, 64)
    chosen, rejected = torch.tensor([1.2, 0.0]), torch.tensor([0.2, 0.5])
    loss = task.pair_loss(chosen, rejected, {})
    # -log sigmoid(1.0) = log(1 + e^-1) = 0.3133; -log sigmoid(-0.5) = log(1 + e^0.5) = 0.9741
    assert loss.tolist() == pytest.approx([math.log1p(math.exp(-1.0)), math.log1p(math.exp(0.5))])
    # a margin of 0.5 on the first pair: -log sigmoid(1.0 - 0.5)
    margins = {MARGIN_KEY: torch.tensor([0.5, 0.0])}
    assert task.pair_loss(chosen, rejected, margins)[0].item() == pytest.approx(
        math.log1p(math.exp(-0.5))
    )
    task.center = 0.01  # + 0.01 x (1.2 + 0.2)^2 = 0.0196
    assert task.pair_loss(chosen, rejected, {})[0].item() == pytest.approx(
        math.log1p(math.exp(-1.0)) + 0.01 * 1.4**2
    )


# -- the rows, as TRL's RewardTrainer makes them ------------------------------------------------
def test_string_rows_are_prompt_answer_and_eos(tokenizer):
    rows = _rows(RewardModelTask(tokenizer, COLUMNS, 64))
    eos = tokenizer.eos_token
    for i, row in enumerate(rows):
        for side in ("chosen", "rejected"):
            text = PAIRS["prompt"][i] + PAIRS[side][i] + eos
            assert row[f"{side}_input_ids"] == tokenizer(text)["input_ids"]
    assert rows[0]["chosen_input_ids"][-1] == tokenizer.eos_token_id  # read by the head


def test_chat_rows_are_rendered_by_the_chat_template(tokenizer):
    chats = {
        "prompt": [[{"role": "user", "content": p}] for p in PAIRS["prompt"]],
        "chosen": [[{"role": "assistant", "content": c}] for c in PAIRS["chosen"]],
        "rejected": [[{"role": "assistant", "content": r}] for r in PAIRS["rejected"]],
    }
    task = RewardModelTask(tokenizer, COLUMNS, 64, chat_template="chatml")
    rows = _rows(task, chats)
    reference = copy.deepcopy(tokenizer)
    reference.chat_template = NAMED_TEMPLATES["chatml"]
    for i, row in enumerate(rows):
        messages = chats["prompt"][i] + chats["chosen"][i]
        want = reference.apply_chat_template(messages, tokenize=True, return_dict=True)
        assert row["chosen_input_ids"] == want["input_ids"]
    assert "chat template: chatml" in task.describe()


def test_pairs_past_the_block_size_are_left_out_not_cut(tokenizer, caplog):
    pairs = {k: [*v, v[0]] for k, v in PAIRS.items()}
    pairs["rejected"][-1] = " word" * 80  # 80 tokens and more: past 64
    rows = _rows(RewardModelTask(tokenizer, COLUMNS, 64), pairs)
    assert len(rows) == 4 and "1 of 5 pairs are longer than data.block_size=64" in caplog.text


def test_a_margin_that_is_not_a_number_is_named(tokenizer):
    task = RewardModelTask(tokenizer, {**COLUMNS, "margin_column": "m"}, 64)
    with pytest.raises(LitFtError, match=r"data.margin_column='m' holds 'big', which is not"):
        _rows(task, {**PAIRS, "m": ["0", "1.5", "big", "2"]})


# -- against TRL's RewardTrainer ---------------------------------------------------------------
STEPS, LR = 4, 1e-2


def _lit_ft_steps(tokenizer) -> list[dict]:
    task = RewardModelTask(tokenizer, COLUMNS, 64)
    rows = _rows(task)
    model = _model(tokenizer)
    task.check_model(model)
    names = {"accuracy": "train/accuracy", "margin": "train/margin"}
    return fit_recording(task, model, rows, STEPS, LR, names)


def _trl_steps(tokenizer, tmp_path) -> list[dict]:
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(
        output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, max_steps=STEPS,
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=0.0, logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
        seed=0, max_length=64, dataloader_drop_last=False, bf16=False,
    )  # fmt: skip
    trainer = RewardTrainer(
        model=_model(tokenizer),
        args=args,
        train_dataset=datasets.Dataset.from_dict(PAIRS),
        processing_class=tokenizer,
    )
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss" in e and "accuracy" in e]
    return [{"loss": e["loss"], "accuracy": e["accuracy"], "margin": e["margin"]} for e in logged]


@pytest.mark.slow
def test_per_step_loss_accuracy_and_margin_match_trl(tokenizer, tmp_path):
    """The same tiny GPT-2 classifier, the same 4 pairs as one batch, AdamW at a constant
    learning rate, no clipping: lit_ft's step losses, accuracies and margins equal TRL's."""
    ours = _lit_ft_steps(tokenizer)
    theirs = _trl_steps(copy.deepcopy(tokenizer), tmp_path)
    print("step  lit_ft loss  TRL loss  lit_ft acc  TRL acc  lit_ft margin  TRL margin")
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        print(
            f"{i + 1:>4}  {a['loss']:.6f}  {b['loss']:.6f}  {a['accuracy']:.2f}  "
            f"{b['accuracy']:.2f}  {a['margin']:.6f}  {b['margin']:.6f}"
        )
    assert len(ours) == len(theirs) == STEPS
    for a, b in zip(ours, theirs, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
        assert a["accuracy"] == pytest.approx(b["accuracy"])
        assert a["margin"] == pytest.approx(b["margin"], abs=1e-4)
    assert ours[-1]["loss"] < ours[0]["loss"]  # and it learns


# -- a run, and what it hands on ---------------------------------------------------------------
def test_a_run_exports_a_model_that_scores_as_its_predictions(tokenizer, tiny_overrides, tmp_path):
    """Pairs with margins from a JSONL file: the run trains, predictions.jsonl holds one row
    per held-out pair, and the export (one label, "reward") loaded by plain transformers gives
    the rewards the predictions wrote."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    pairs = tmp_path / "pairs.jsonl"
    with open(pairs, "w") as f:
        for i in range(24):
            good, bad = f" item {i} is fine", f" fine is {i} item"
            f.write(json.dumps({"prompt": f"Say {i}:", "chosen": good, "rejected": bad}) + "\n")
    overrides = [
        *tiny_overrides,
        "task=reward_model",
        "data.path=json",
        f"data.data_files={pairs}",
        "data.validation_split_percentage=25",
        "data.batch_size=4",
        "trainer.max_steps=6",
    ]
    results = lit_ft.train_from_overrides(overrides)
    after = results["metrics"]["after"]
    assert set(after) >= {"val/loss", "val/accuracy", "val/margin", "val/chosen_reward"}
    run_dir = results["output_dir"]
    lines = [json.loads(x) for x in Path(run_dir, "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and {"prompt", "chosen", "rejected", "prediction"} <= set(lines[0])
    model = AutoModelForSequenceClassification.from_pretrained(f"{run_dir}/hf_model").eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(f"{run_dir}/hf_model")
    assert model.config.num_labels == 1 and model.config.id2label == {0: "reward"}
    with torch.no_grad():
        for line in lines:
            for side in ("chosen", "rejected"):
                text = line["prompt"] + line[side] + hf_tokenizer.eos_token
                ids = torch.tensor([hf_tokenizer(text)["input_ids"]])
                reward = float(model(input_ids=ids).logits[0, 0])
                assert reward == pytest.approx(line[f"{side}_reward"], abs=1e-3)
    wins = sum(line["chosen_reward"] > line["rejected_reward"] for line in lines) / len(lines)
    assert wins == pytest.approx(after["val/accuracy"])
