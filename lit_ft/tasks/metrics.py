"""What each task measures on held-out data, as torchmetrics states (so DDP ranks sync).

An evaluator is updated with every validation/test batch and the model's outputs, and
`compute()` returns plain names ("loss", "accuracy"); the module prefixes the stage
("val/accuracy", "test/accuracy").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torchmetrics import MeanMetric, SumMetric

from lit_ft.tasks.base import target_count


class Evaluator(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # nan_strategy="disable": a diverged batch makes the loss NaN instead of being dropped.
        self.loss = MeanMetric(nan_strategy="disable")

    def update(self, batch: Mapping[str, torch.Tensor], outputs, model) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def reset(self) -> None:
        for metric in self.children():
            metric.reset()


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
        from torchmetrics.text import BLEUScore, ROUGEScore

        self.tokenizer = tokenizer
        self.generate_kwargs = {"max_new_tokens": max_new_tokens, "num_beams": num_beams}
        self.rouge = ROUGEScore(rouge_keys=("rouge1", "rouge2", "rougeL"))
        self.bleu = BLEUScore()

    def update(self, batch, outputs, model) -> None:
        labels = batch["labels"]
        self.loss.update(outputs.loss, weight=(labels != -100).sum())
        predictions = generate_text(model, self.tokenizer, batch, **self.generate_kwargs)
        references = decode_labels(self.tokenizer, labels)
        self.rouge.update(predictions, references)
        self.bleu.update(predictions, [[r] for r in references])

    def compute(self) -> dict[str, torch.Tensor]:
        rouge = self.rouge.compute()
        return {
            "loss": self.loss.compute(),
            **{key: rouge[f"{key}_fmeasure"] for key in ("rouge1", "rouge2", "rougeL")},
            "bleu": self.bleu.compute(),
        }


def generate_text(model, tokenizer, batch, **generate_kwargs) -> list[str]:
    generated = model.generate(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **generate_kwargs
    )
    return [t.strip() for t in tokenizer.batch_decode(generated, skip_special_tokens=True)]


def decode_labels(tokenizer, labels: torch.Tensor) -> list[str]:
    ids = labels.masked_fill(labels == -100, tokenizer.pad_token_id)
    return [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
