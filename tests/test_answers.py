"""Answers scored while training (task=instruction): which prompts, how they are generated,
the scores on hand-made examples, and what a short tiny-GPT-2 run logs and writes."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
from helpers.config import tiny_model_overrides

import lit_ft
from lit_ft.tasks import TaskContext, build_task
from lit_ft.tasks.answers import examples_of, generate_answers, split_example
from lit_ft.tasks.metrics import AnswerEvaluator

COLUMNS = {"prompt_column": "prompt", "response_column": "response", "messages_column": None}
PROMPTS, RESPONSES = ["Say yes.", "Name a colour.", "Count to three."], ["yes", "red", "1 2 3"]


def _rows():
    return datasets.Dataset.from_dict({"prompt": PROMPTS, "response": RESPONSES})


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=512, eos_token_id=0
    )
    return GPT2LMHeadModel(config).eval()


# -- unit: scores, prompts, batched generation ------------------------------------------------
def test_scores_of_hand_made_answers(gpt2_tokenizer):
    def scores(answers, references):
        evaluator = AnswerEvaluator(gpt2_tokenizer, num_prompts=8, max_new_tokens=8)
        evaluator.score(answers, references)
        return {k: float(v) for k, v in evaluator.compute().items() if k != "loss"}

    same = scores(["the cat sat"], ["the  cat sat "])  # whitespace does not count
    assert same["exact_match"] == 1.0 and same["rougeL"] == 1.0 and same["chrf"] == 1.0
    # ROUGE-L: the longest common word subsequence is 3 words; precision 3/3, recall 3/4,
    # F1 = 2 x 1 x 0.75 / 1.75 = 6/7 = 0.857
    shorter = scores(["the cat sat"], ["the cat sat on"])
    assert shorter["rougeL"] == pytest.approx(6 / 7, abs=1e-4) and shorter["exact_match"] == 0
    # chrF, beta = 2, n = 1..6 character n-grams of "abcdefg" against "abcdefgh": every n-gram
    # of the answer is in the reference (precision 1), recall (8 - n) / (9 - n), so
    # F_n = 5 R / (4 + R) = 0.897, 0.882, 0.862, 0.833, 0.789, 0.714; mean 0.8298
    recall = [(8 - n) / (9 - n) for n in range(1, 7)]
    expected = sum(5 * r / (4 + r) for r in recall) / 6
    assert scores(["abcdefg"], ["abcdefgh"])["chrf"] == pytest.approx(expected, abs=1e-4)
    # Two answers, one right: exact match is the mean, 0.5
    assert scores(["yes", "no"], ["yes", "maybe"])["exact_match"] == 0.5


def test_prompts_hold_the_prompt_tokens_only_packed_or_not(gpt2_tokenizer):
    context = TaskContext("t", load_from_cache=False)
    plain = build_task("instruction", gpt2_tokenizer, COLUMNS, max_length=64)
    rows = plain.preprocess(_rows(), "validation", context)
    examples = examples_of(plain.collate()([rows[i] for i in range(len(rows))]))
    for example, prompt, response in zip(examples, PROMPTS, RESPONSES, strict=True):
        assert gpt2_tokenizer.decode(example.prompt) == f"user: {prompt}\nassistant:"
        assert gpt2_tokenizer.decode(example.reference) == f" {response}<|endoftext|>"
    # Packed: examples share blocks and come apart at the position-id restarts; the padding
    # of the shorter block (position ids 0, not real tokens) is no example
    packed = build_task("instruction", gpt2_tokenizer, COLUMNS, max_length=64, packing=True)
    blocks = packed.preprocess(_rows(), "validation", context)
    assert len(blocks) < len(PROMPTS)
    unpacked = examples_of(packed.collate()([blocks[i] for i in range(len(blocks))]))
    key = lambda e: (e.prompt, e.reference)  # noqa: E731  (best fit reorders the examples)
    assert sorted(unpacked, key=key) == sorted(examples, key=key)
    # A chat's last trained span is the reference; earlier answers are part of the prompt
    ids, labels = [1, 2, 3, 4, 5, 6, 7], [-100, -100, 3, -100, -100, 6, 7]
    assert split_example(ids, labels).prompt == [1, 2, 3, 4, 5]
    assert split_example(ids, labels).reference == [6, 7]
    assert split_example([1, 2], [1, 2]) is None  # nothing to prompt with


def test_batched_answers_are_the_answers_each_prompt_gets_alone(gpt2_tokenizer):
    model = _tiny_gpt2()
    prompts = [gpt2_tokenizer(p)["input_ids"] for p in ("Say yes.", "Name a colour of the sky.")]
    assert len(prompts[0]) != len(prompts[1])  # left padding has something to do
    batched = generate_answers(model, gpt2_tokenizer, prompts, max_new_tokens=6)
    alone = [generate_answers(model, gpt2_tokenizer, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == alone and all(batched)


# -- a short run ------------------------------------------------------------------------------
def _instruction_run(tmp_path: Path, tiny_tokenizer_dir, reference_text, *extra) -> list[str]:
    words = reference_text.split()[:2000]
    rows = [
        {"prompt": f"First word of: {' '.join(words[i : i + 6])}", "response": words[i]}
        for i in range(0, 1200, 6)
    ]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [
        "task=instruction",
        *tiny_model_overrides(tiny_tokenizer_dir),
        "data=text_files",
        "data.path=json",
        f"data.data_files={data}",
        "data.prompt_column=prompt",
        "data.response_column=response",
        "data.block_size=64",
        "data.batch_size=8",
        "data.validation_split_percentage=20",
        "trainer.max_steps=6",
        "trainer.limit_val_batches=2",
        "trainer.enable_progress_bar=false",
        "trainer.precision=32-true",  # stated: not the host's `auto`
        "callbacks.generations.num_prompts=0",
        "export=false",
        f"paths.output_dir={tmp_path / 'run'}",
        *extra,
    ]


@pytest.mark.slow
def test_a_run_scores_its_answers_and_writes_them(
    tmp_path, tiny_tokenizer_dir, reference_text, capsys
):
    overrides = _instruction_run(
        tmp_path, tiny_tokenizer_dir, reference_text, "task.eval_generations=4"
    )
    results = lit_ft.train_from_overrides(overrides)
    for when in ("before", "after"):
        metrics = results["metrics"][when]
        assert {"val/loss", "val/ppl", "val/rougeL", "val/chrf", "val/exact_match"} <= set(metrics)
        assert 0.0 <= metrics["val/rougeL"] <= 1.0 and 0.0 <= metrics["val/chrf"] <= 1.0
    assert results["headline_metric"] == "val/rougeL"
    assert "generated answers in" in capsys.readouterr().out  # the cost, printed once
    rows = [json.loads(line) for line in Path(results["predictions"]).read_text().splitlines()]
    assert len(rows) == 40  # every validation example (20% of 200), not just the scored 4
    for row in rows:
        assert row["input"].startswith("user: First word of: ")
        assert row["label"] == row["input"].split("First word of: ")[1].split()[0]
        assert isinstance(row["prediction"], str)


def test_eval_generations_0_scores_loss_and_perplexity_only(
    tmp_path, tiny_tokenizer_dir, reference_text, capsys
):
    overrides = _instruction_run(
        tmp_path,
        tiny_tokenizer_dir,
        reference_text,
        "task.eval_generations=0",
        "evaluate_before=false",
    )
    results = lit_ft.train_from_overrides(overrides)
    after = results["metrics"]["after"]
    assert "val/rougeL" not in after and "val/ppl" in after
    assert results["headline_metric"] == "val/ppl" and results["predictions"] is None
    assert "generated answers in" not in capsys.readouterr().out


def test_generation_options_are_checked():
    from lit_ft.config import compose
    from lit_ft.errors import ConfigError
    from lit_ft.validate import validate_config

    cfg = compose(["task=instruction", "task.eval_generations=-1"])
    with pytest.raises(ConfigError, match="task.eval_generations must be 0"):
        validate_config(cfg)
    cfg = compose(["task=instruction", "task.eval_max_new_tokens=0"])
    with pytest.raises(ConfigError, match="task.eval_max_new_tokens must be a positive"):
        validate_config(cfg)


# -- answers scored against the whole reference -------------------------------------------
LONG = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"


def test_answers_are_scored_against_the_whole_reference_not_the_cut_one(
    gpt2_tokenizer, monkeypatch
):
    """A block of 24 tokens cuts the long answer; the score compares with the row's text."""
    import lit_ft.tasks.answers as answers

    rows = datasets.Dataset.from_dict(
        {"prompt": ["Say yes.", "Count on."], "response": ["yes", LONG]}
    )
    context = TaskContext("t", load_from_cache=False)
    for packing in (False, True):
        task = build_task("instruction", gpt2_tokenizer, COLUMNS, max_length=24, packing=packing)
        processed = task.preprocess(rows, "validation", context)
        batch = task.eval_collate()([processed[i] for i in range(len(processed))])
        examples = sorted(examples_of(batch), key=lambda e: len(e.prompt))
        cut = gpt2_tokenizer.decode(examples[-1].reference, skip_special_tokens=True).strip()
        assert cut != LONG and LONG.startswith(cut)  # the block size did cut it
        assert sorted(e.text for e in examples) == sorted(["yes", LONG])  # the rows' own text

        # a model that answers exactly what the data says: exact match only against the whole
        by_prompt = {tuple(e.prompt): e.text for e in examples}
        monkeypatch.setattr(
            answers,
            "generate_answers",
            lambda model, tok, prompts, *a, known=by_prompt, **k: [
                known[tuple(p)] for p in prompts
            ],
        )
        evaluator = AnswerEvaluator(gpt2_tokenizer, num_prompts=8, max_new_tokens=8)
        evaluator.update(batch, _Logits(batch), model=None)
        assert float(evaluator.compute()["exact_match"]) == 1.0
        rows_out = task.predict(None, batch)
        assert sorted(r["label"] for r in rows_out) == sorted(["yes", LONG])


class _Logits:
    """Model outputs of the right shape for the loss part of the evaluator."""

    def __init__(self, batch):
        self.logits = torch.zeros(*batch["input_ids"].shape, 512)
        self.loss = torch.tensor(1.0)


def test_a_chat_cut_before_its_last_turn_is_scored_on_the_last_answer_left(gpt2_tokenizer):
    import copy

    tokenizer = copy.deepcopy(gpt2_tokenizer)
    tokenizer.chat_template = None
    chat = [
        {"role": "user", "content": "What does len do?"},
        {"role": "assistant", "content": "It counts."},
        {"role": "user", "content": LONG},  # the block ends inside this question
        {"role": "assistant", "content": "Fourteen words."},
    ]
    columns = {"messages_column": "messages", "prompt_column": None, "response_column": None}
    whole = build_task("instruction", tokenizer, columns, 512, chat_template="plain")
    ids, labels = whole.encode_row({"messages": chat})
    first_end = next(i for i in range(1, len(labels)) if labels[i - 1] != -100 == labels[i])
    # the block ends 3 tokens into the second question
    task = build_task("instruction", tokenizer, columns, first_end + 3, chat_template="plain")
    processed = task.preprocess(
        datasets.Dataset.from_dict({"messages": [chat]}),
        "validation",
        TaskContext("t", load_from_cache=False),
    )
    (example,) = examples_of(task.eval_collate()([processed[0]]))
    assert example.text == "It counts."
    assert tokenizer.decode(example.reference).strip() == "It counts.<|endoftext|>"
    assert example.prompt == ids[: len(example.prompt)]  # the first question
