"""What each task measures on held-out data, as torchmetrics states (so DDP ranks sync).

An evaluator is updated with every validation/test batch and the model's outputs, and
`compute()` returns plain names ("loss", "accuracy"); the module prefixes the stage
("val/accuracy", "test/accuracy").
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

import torch
from torchmetrics import Metric, SumMetric

from lit_ft.tasks.base import target_count
from lit_ft.tasks.rouge import RougeF
from lit_ft.tasks.weighted_mean import WeightedMean


class Evaluator(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # A batch's mean loss weighted by its targets (tokens, rows, pairs); a diverged batch
        # makes the loss NaN instead of being dropped (lit_ft/tasks/weighted_mean.py).
        self.loss = WeightedMean()

    def update(self, batch: Mapping[str, torch.Tensor], outputs, model) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def reset(self) -> None:
        """Every torchmetrics state it holds, also inside containers (a ModuleDict of means)."""
        for module in self.modules():
            if isinstance(module, Metric):
                module.reset()

    def generation_cost(self) -> tuple[int, float] | None:
        """(answers generated, seconds) on this process since the last reset; None when the
        evaluator generates nothing besides its forward passes."""
        return None


class LanguageModelingEvaluator(Evaluator):
    """Token-weighted loss and perplexity: exp(mean loss per token) is the corpus perplexity,
    which a mean of per-batch perplexities is not."""

    def __init__(self, shifted: bool) -> None:
        super().__init__()
        self.shifted = shifted  # causal LMs predict token t+1: the first label is no target

    def update(self, batch, outputs, model) -> None:
        self.loss.update(outputs.loss, weight=target_count(batch["labels"], self.shifted))

    def compute(self) -> dict[str, torch.Tensor]:
        loss = self.loss.compute()
        return {"loss": loss, "ppl": torch.exp(loss)}


class ClassificationEvaluator(Evaluator):
    """Accuracy and macro-F1 (every class counts the same, whatever its frequency)."""

    def __init__(self, num_labels: int) -> None:
        super().__init__()
        from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

        self.accuracy = MulticlassAccuracy(num_classes=num_labels, average="micro")
        self.f1 = MulticlassF1Score(num_classes=num_labels, average="macro")

    def update(self, batch, outputs, model) -> None:
        labels = batch["labels"]
        self.loss.update(outputs.loss, weight=labels.numel())
        predictions = outputs.logits.argmax(dim=-1)
        self.accuracy.update(predictions, labels)
        self.f1.update(predictions, labels)

    def compute(self) -> dict[str, torch.Tensor]:
        return {
            "loss": self.loss.compute(),
            "accuracy": self.accuracy.compute(),
            "f1": self.f1.compute(),
        }


def entity_spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """(type, start, end) of each entity in an IOB tag sequence, as seqeval counts them:
    an entity starts at B-X, or at I-X after O or after another type, and runs over I-X."""
    spans, start, kind = set(), None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-")
        continues = prefix == "I" and label == kind
        if start is not None and not continues:
            spans.add((kind, start, i))
            start = kind = None
        if prefix in ("B", "I") and not continues:
            start, kind = i, label
    return spans


class EntityEvaluator(Evaluator):
    """Entity-level precision/recall/F1 (an entity counts only if type and span both match),
    plus token accuracy. Scored on the first word piece of each word (labels != -100)."""

    def __init__(self, id2label: Mapping[int, str]) -> None:
        super().__init__()
        self.id2label = {int(k): v for k, v in id2label.items()}
        self.correct_entities, self.predicted_entities = SumMetric(), SumMetric()
        self.gold_entities, self.correct_tokens, self.tokens = SumMetric(), SumMetric(), SumMetric()

    def update(self, batch, outputs, model) -> None:
        labels = batch["labels"]
        self.loss.update(outputs.loss, weight=(labels != -100).sum())
        predictions = outputs.logits.argmax(dim=-1)
        scored = labels != -100
        self.correct_tokens.update((predictions == labels)[scored].sum())
        self.tokens.update(scored.sum())
        correct = predicted = gold = 0
        for row_pred, row_gold, row_mask in zip(
            predictions.tolist(), labels.tolist(), scored.tolist(), strict=True
        ):
            pred_tags = [
                self.id2label[p] for p, keep in zip(row_pred, row_mask, strict=True) if keep
            ]
            gold_tags = [
                self.id2label[g] for g, keep in zip(row_gold, row_mask, strict=True) if keep
            ]
            pred_spans, gold_spans = entity_spans(pred_tags), entity_spans(gold_tags)
            correct += len(pred_spans & gold_spans)
            predicted, gold = predicted + len(pred_spans), gold + len(gold_spans)
        self.correct_entities.update(correct)
        self.predicted_entities.update(predicted)
        self.gold_entities.update(gold)

    def _tags(self, ids: list[int], scored: list[bool]) -> list[str]:
        return [self.id2label[i] for i, keep in zip(ids, scored, strict=True) if keep]

    def compute(self) -> dict[str, torch.Tensor]:
        correct = self.correct_entities.compute()
        precision = correct / self.predicted_entities.compute().clamp(min=1)
        recall = correct / self.gold_entities.compute().clamp(min=1)
        f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
        accuracy = self.correct_tokens.compute() / self.tokens.compute().clamp(min=1)
        return {
            "loss": self.loss.compute(),
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "accuracy": accuracy,
        }


class Seq2SeqEvaluator(Evaluator):
    """Token-weighted loss, plus ROUGE-1/2/L and BLEU of generated text against the targets."""

    def __init__(self, tokenizer, max_new_tokens: int, num_beams: int) -> None:
        super().__init__()
        from torchmetrics.text import BLEUScore

        self.tokenizer = tokenizer
        self.generate_kwargs = {"max_new_tokens": max_new_tokens, "num_beams": num_beams}
        self.rouge = RougeF(("rouge1", "rouge2", "rougeL"))  # syncs unequal shares (rouge.py)
        self.bleu = BLEUScore()

    def update(self, batch, outputs, model) -> None:
        labels = batch["labels"]
        self.loss.update(outputs.loss, weight=(labels != -100).sum())
        predictions = generate_text(model, self.tokenizer, batch, **self.generate_kwargs)
        references = decode_labels(self.tokenizer, labels)
        self.rouge.update(predictions, references)
        self.bleu.update(predictions, [[r] for r in references])

    def compute(self) -> dict[str, torch.Tensor]:
        return {"loss": self.loss.compute(), **self.rouge.compute(), "bleu": self.bleu.compute()}


class AnswerEvaluator(LanguageModelingEvaluator):
    """Loss and perplexity on the responses, plus the answers a causal LM generates for the
    first `num_prompts` validation prompts, scored against the references: ROUGE-L (F1 of the
    longest common word subsequence), chrF (character n-gram F-score, n = 1..6, beta = 2) and
    exact match (the same text after trimming and collapsing whitespace).

    The validation loader is not shuffled, so the first prompts are the same ones at every
    validation and the scores compare across validations. Under DDP each of w processes
    generates for its first ceil(num_prompts / w) examples (e.g. 32 over 2: 16 each, rows
    0, 2, 4, ... and 1, 3, 5, ... of the validation split) and torchmetrics sums the states.
    """

    def __init__(
        self, tokenizer, num_prompts: int, max_new_tokens: int, stop: str | None = None
    ) -> None:
        super().__init__(shifted=True)
        from torchmetrics.text import CHRFScore

        self.tokenizer = tokenizer
        self.num_prompts, self.max_new_tokens, self.stop = num_prompts, max_new_tokens, stop
        self.rouge = RougeF(("rougeL",))
        self.chrf = CHRFScore(n_word_order=0)  # chrF, not chrF++ (which adds word n-grams)
        self.exact = WeightedMean()
        self.generated, self.seconds = 0, 0.0

    def update(self, batch, outputs, model) -> None:
        super().update(batch, outputs, model)
        wanted = self._share() - self.generated
        if wanted <= 0:
            return
        from lit_ft.tasks.answers import examples_of, generate_answers, reference_texts

        started = time.perf_counter()
        examples = examples_of(batch)[:wanted]
        prompts = [e.prompt for e in examples]
        # Twice the longest reference (+4) is plenty: a longer answer scores badly anyway,
        # and a tiny model that never says EOS would otherwise decode the full bound.
        references = reference_texts(self.tokenizer, examples, self.stop)  # whole, uncut
        longest = max((len(self.tokenizer(r)["input_ids"]) for r in references), default=0)
        bound = min(self.max_new_tokens, 2 * longest + 4)
        answers = generate_answers(model, self.tokenizer, prompts, bound, self.stop)
        self.score(answers, references)
        self.generated += len(examples)
        self.seconds += time.perf_counter() - started  # decode() read the ids: work is done

    def score(self, answers: list[str], references: list[str]) -> None:
        if not answers:
            return
        self.rouge.update(answers, references)
        self.chrf.update(answers, [[r] for r in references])
        same = [_normalized(a) == _normalized(r) for a, r in zip(answers, references, strict=True)]
        self.exact.update(torch.tensor(same, dtype=torch.float))

    def _share(self) -> int:
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        return math.ceil(self.num_prompts / world)

    def compute(self) -> dict[str, torch.Tensor]:
        return {
            **super().compute(),
            **self.rouge.compute(),
            "chrf": self.chrf.compute(),
            "exact_match": self.exact.compute(),
        }

    def reset(self) -> None:
        super().reset()
        self.generated, self.seconds = 0, 0.0

    def generation_cost(self) -> tuple[int, float] | None:
        return self.generated, self.seconds


class VisionAnswerEvaluator(AnswerEvaluator):
    """AnswerEvaluator for image + text chats: each answer is generated from its chat's
    prompt and images (task=vision_instruction), scored the same way."""

    def __init__(self, task, num_prompts: int, max_new_tokens: int) -> None:
        from lit_ft.tasks.chat import end_of_turn

        super().__init__(task.tokenizer, num_prompts, max_new_tokens, end_of_turn(task.tokenizer))
        self.task = task

    def update(self, batch, outputs, model) -> None:
        LanguageModelingEvaluator.update(self, batch, outputs, model)
        wanted = self._share() - self.generated
        if wanted <= 0:
            return
        from lit_ft.tasks.answers import REFERENCES

        started = time.perf_counter()
        prompts, rows = self.task.prompts_of(batch)
        prompts, rows = prompts[:wanted], rows[:wanted]
        references = [(batch[REFERENCES][r] or [""])[0] for r in rows]
        longest = max((len(self.tokenizer(r)["input_ids"]) for r in references), default=0)
        bound = min(self.max_new_tokens, 2 * longest + 4)
        answers = self.task.generate_answers(model, batch, prompts, rows, bound)
        self.score(answers, references)
        self.generated += len(rows)
        self.seconds += time.perf_counter() - started


def _normalized(text: str) -> str:
    return " ".join(text.split())


def generate_text(model, tokenizer, batch, **generate_kwargs) -> list[str]:
    generated = model.generate(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **generate_kwargs
    )
    return [t.strip() for t in tokenizer.batch_decode(generated, skip_special_tokens=True)]


def decode_labels(tokenizer, labels: torch.Tensor) -> list[str]:
    ids = labels.masked_fill(labels == -100, tokenizer.pad_token_id)
    return [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]


class PreferenceEvaluator(Evaluator):
    """Preference tuning on held-out pairs: the loss, reward accuracy and margin, the chosen
    and rejected rewards and log-probabilities, each a mean over pairs (lit_ft/tasks/dpo.py
    computes them; this keeps the sums across batches and processes)."""

    NAMES = (
        "reward_accuracy",
        "reward_margin",
        "chosen_reward",
        "rejected_reward",
        "chosen_logps",
        "rejected_logps",
    )

    def __init__(self, task) -> None:
        super().__init__()
        self.task = task
        self.means = torch.nn.ModuleDict({name: WeightedMean() for name in self.NAMES})

    def update(self, batch, outputs, model) -> None:
        from lit_ft.tasks.preference import pair_metrics

        loss, chosen, rejected, policy = self.task.scores(model, batch, outputs.logits)
        pairs = loss.shape[0]
        self.loss.update(loss.mean(), weight=pairs)
        for name, value in pair_metrics(loss, chosen, rejected, policy).items():
            self.means[name].update(value, weight=pairs)

    def compute(self) -> dict[str, torch.Tensor]:
        return {"loss": self.loss.compute(), **{k: m.compute() for k, m in self.means.items()}}


class _Gathered(torch.nn.Module):
    """Tensors of every evaluation batch, concatenated over all processes at compute (the
    torchmetrics `cat` state: DDP ranks hand each other their rows).

    Per-token tensors ([rows, tokens, ...]) differ in length from batch to batch: each row
    travels flat with its length, and at compute the rows are padded with -100 to the
    longest, as the Hugging Face Trainer pads what it hands to compute_metrics."""

    PAD = -100

    def __init__(self) -> None:
        super().__init__()
        from torchmetrics import CatMetric

        # nan_strategy disable: a NaN logit stays in place (the default drops it, and every
        # later row would shift)
        self.rows = CatMetric(nan_strategy="disable")
        self.lengths = CatMetric(nan_strategy="disable")
        self.width: tuple[int, ...] = ()  # what follows a row's tokens: (classes,) for logits
        self.per_token = False

    def update(self, value: torch.Tensor, per_token: bool) -> None:
        # CatMetric flattens what it is given: each row travels flat and is reshaped after
        self.per_token = per_token
        self.width = tuple(value.shape[2:] if per_token else value.shape[1:])
        if per_token:
            rows, tokens = value.shape[:2]
            self.lengths.update(torch.full((rows,), float(tokens), device=value.device))
        self.rows.update(value.detach().float().reshape(-1))

    def compute(self):
        import numpy as np

        flat = self.rows.compute().cpu().numpy()
        if not self.per_token:
            return flat.reshape(-1, *self.width)
        lengths = self.lengths.compute().cpu().numpy().astype("int64").reshape(-1)
        per_token = int(np.prod(self.width)) if self.width else 1
        longest = int(lengths.max()) if len(lengths) else 0
        out = np.full((len(lengths), longest, *self.width), self.PAD, dtype=flat.dtype)
        start = 0
        for i, tokens in enumerate(lengths):
            size = tokens * per_token
            out[i, :tokens] = flat[start : start + size].reshape(tokens, *self.width)
            start += size
        return out

    def reset(self) -> None:
        self.rows.reset()
        self.lengths.reset()


def argmax_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The default `preprocess_logits_for_metrics` of tasks whose logits span the vocabulary
    (causal, masked, seq2seq LMs): the predicted token ids. Logits of a whole evaluation set
    would not fit in memory (1,000 rows x 1,024 tokens x 50,257 vocabulary x 4 bytes =
    206 GB); Hugging Face's own language-modelling example passes this function."""
    return logits.argmax(dim=-1)


class UserMetrics(Evaluator):
    """The task's own figures plus those of a function with the Hugging Face Trainer's
    `compute_metrics` contract: called once per evaluation with an `EvalPrediction` of numpy
    arrays for the whole evaluation set, it returns a dict of name -> number.

    `.label_ids` are the batch labels as the task builds them: [rows] for one label per row
    (sequence classification), [rows, tokens] per token (token classification, language
    models: -100 where no token is scored, and where rows were padded to the longest).
    `.predictions` are the logits ([rows, classes] or [rows, tokens, classes]), or what
    `preprocess_logits` (HF's `preprocess_logits_for_metrics(logits, labels)`) makes of each
    batch's; tasks whose logits span the vocabulary take `argmax_logits` by default.
    Its names are logged beside the task's (`val/<name>`), and replace a task metric of the
    same name; `loss` is refused, the checkpoints and the best-model choice read it."""

    def __init__(self, task_evaluator: Evaluator, compute_metrics, preprocess_logits=None):
        super().__init__()
        self.task_evaluator = task_evaluator
        self.compute_metrics = compute_metrics
        self.preprocess_logits = preprocess_logits
        self.predictions, self.labels = _Gathered(), _Gathered()

    def update(self, batch, outputs, model) -> None:
        self.task_evaluator.update(batch, outputs, model)
        labels = batch["labels"]
        per_token = labels.ndim > 1
        predictions = outputs.logits
        if self.preprocess_logits is not None:
            predictions = self.preprocess_logits(predictions, labels)
        self.predictions.update(predictions, per_token)
        self.labels.update(labels, per_token)

    def compute(self) -> dict[str, torch.Tensor]:
        from transformers import EvalPrediction

        metrics = self.task_evaluator.compute()
        labels = self.labels.compute().astype("int64")
        predictions = self.predictions.compute()
        preprocessed = self.preprocess_logits is not None and predictions.dtype.kind == "f"
        if preprocessed and (predictions == predictions.round()).all():  # ids travel as floats
            predictions = predictions.astype("int64")
        found = self.compute_metrics(EvalPrediction(predictions=predictions, label_ids=labels))
        return {**metrics, **user_metric_values(found)}

    def reset(self) -> None:
        self.task_evaluator.reset()
        self.predictions.reset()
        self.labels.reset()

    def generation_cost(self) -> tuple[int, float] | None:
        return self.task_evaluator.generation_cost()


def user_metric_values(found) -> dict[str, torch.Tensor]:
    """What a compute_metrics function returned, checked: a dict of str -> a number."""
    from numbers import Real

    from lit_ft.errors import LitFtError

    def number(value) -> bool:  # numpy's scalars count as numbers.Real; 0-d arrays too
        if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
            value = value.item()
        return isinstance(value, Real) and not isinstance(value, bool)

    if not isinstance(found, Mapping):
        raise LitFtError(
            f"compute_metrics returned a {type(found).__name__}; it must return a dict of "
            "metric name -> number, e.g. {'accuracy': 0.9}"
        )
    bad = [f"{key!r}: {value!r}" for key, value in found.items() if not number(value)]
    bad += [f"{key!r} (not a str)" for key in found if not isinstance(key, str)]
    if bad:
        raise LitFtError(
            f"compute_metrics must return a dict of metric name -> number; got {', '.join(bad)}"
        )
    if "loss" in found:
        raise LitFtError(
            "compute_metrics returned 'loss': lit_ft logs its own token-weighted val/loss, "
            "which checkpoints and the best model are chosen by; name yours otherwise"
        )
    return {key: torch.tensor(float(value)) for key, value in found.items()}
