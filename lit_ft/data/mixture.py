"""data=mixture: several sources trained on in chosen proportions.

    python -m lit_ft.run data=mixture \
        'data.sources=[{path: json, data_files: a.jsonl, weight: 0.8},
                       {path: csv, data_files: b.csv, weight: 0.2, columns: {text_column: body}}]'

Each source is read as `data.*` reads one (a Hub name or a local builder with files), with its
own column names (`columns`: data-config key -> this source's column) or a `template` that
builds a column from its own (`{text_column: "Q: {question}\\nA: {answer}"}`), and its own
validation split (its `validation` split, else `data.validation_split_percentage` of it, with
`data.split_seed`). Each is processed by the task on its own (a text block never spans two
sources), and the processed sources are laid end to end.

An epoch is `data.mixture_size` examples (null: as many as the sources hold together) drawn by
weight: `data.mixture_mode=with_replacement` picks a source by weight for every example, then
a row of it at random; `without_replacement` gives each source its share of the epoch
(weight / total x size, rounded so the shares add up), taken from a fresh permutation of the
source (passing through it again only when its share is larger than it), and shuffles them
together. Either way the order is a pure function of (seed, epoch), like lit_ft's sampler's
(lit_ft/data/sampler.py), so a resumed run continues the same mixture exactly.

E.g. weights 0.8 / 0.2 over sources of 1,000 and 5,000 rows, size null: 6,000 examples an
epoch, 4,800 from the first (each row ~4.8 times) and 1,200 from the second.

Validation reports the whole mixture (`val/loss`, ...) and each source (`val/<label>/loss`,
...): every validation batch is split by source, one forward per part, both kept. The
validation rows are interleaved in proportion, so `trainer.limit_val_batches` scores a part
of every source, not the first source alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lit_ft.errors import LitFtError
from lit_ft.problems import Problems

MODES = ("with_replacement", "without_replacement")
SOURCE_KEY = "_source"  # each processed row's source, by position in data.sources


@dataclass(frozen=True)
class Source:
    label: str
    path: str
    weight: float
    name: str | None = None
    data_files: Any = None
    corpus: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    template: dict[str, str] = field(default_factory=dict)
    load_kwargs: dict[str, Any] = field(default_factory=dict)


SOURCE_KEYS = ("label", "path", "weight", "name", "data_files", "corpus", "columns", "template")


def parse_sources(sources: Sequence[Mapping[str, Any]]) -> list[Source]:
    """data.sources as Source records; a source without a label is named by its position."""
    parsed = []
    for i, raw in enumerate(sources):
        raw = dict(raw)
        label = str(raw.pop("label", None) or f"source{i}")
        kwargs = {k: raw[k] for k in SOURCE_KEYS if k in raw}
        kwargs.pop("label", None)
        kwargs["load_kwargs"] = dict(raw.get("load_kwargs") or {})
        for key in ("columns", "template"):
            kwargs[key] = dict(kwargs.get(key) or {})
        parsed.append(Source(label=label, **kwargs))
    return parsed


def mixture_problems(data) -> Problems:
    """The rules of data=mixture, every problem at once."""
    from lit_ft.preflight import data_path_problem

    problems = Problems()
    sources = data.get("sources")
    if data.get("path") != "mixture":
        problems.need(
            not sources, "data.sources is set but data.path is not 'mixture': use data=mixture"
        )
        return problems
    if not sources:
        problems.add("data=mixture needs data.sources: a list of {path, data_files, weight}")
        return problems
    problems.need(
        data.get("mixture_mode") in MODES,
        f"data.mixture_mode='{data.get('mixture_mode')}' is unknown; use one of {', '.join(MODES)}",
    )
    size = data.get("mixture_size")
    if size is not None:
        problems.positive_int("data.mixture_size", size)
    weights, labels = [], []
    for i, raw in enumerate(sources):
        where = f"data.sources[{i}]"
        unknown = sorted(set(raw) - {*SOURCE_KEYS, "load_kwargs"})
        problems.need(not unknown, f"{where} has unknown keys {unknown}; keys: {SOURCE_KEYS}")
        problems.need(bool(raw.get("path")), f"{where} needs a path (a builder or Hub name)")
        if raw.get("path"):
            problems.add(data_path_problem(str(raw["path"])))
        weight = raw.get("weight")
        good = isinstance(weight, int | float) and not isinstance(weight, bool) and weight >= 0
        problems.need(good, f"{where}.weight must be a number >= 0, got {weight!r}")
        weights.append(weight if good else 0)
        labels.append(str(raw.get("label") or f"source{i}"))
    problems.need(
        sum(weights) > 0, f"the weights of data.sources sum to {sum(weights)}; give a positive one"
    )
    repeated = sorted({lab for lab in labels if labels.count(lab) > 1})
    problems.need(not repeated, f"data.sources labels repeat: {repeated}; give each its own")
    return problems


def load_source_splits(source: Source, corpus_dir: str | None, streaming: bool = False):
    """One source's splits as `data.*` would load them (lit_ft.data.sources.load_source); a
    source without a train split is refused naming it."""
    from lit_ft.data.sources import load_source

    loaded = load_source(
        source.path, source.name, source.data_files, source.corpus, corpus_dir,
        source.load_kwargs, streaming=streaming,
    )  # fmt: skip
    splits = {name: loaded[name] for name in loaded}
    if "train" not in splits:
        raise LitFtError(
            f"data.sources '{source.label}' ({source.path}) has no 'train' split; "
            f"splits: {', '.join(splits)}"
        )
    return splits


def to_task_columns(dataset, source: Source, targets: Mapping[str, str]):
    """The source's rows with the columns the task reads, named as the data config names them
    (`targets`: data-config key -> column name), from its own columns or templates; only
    those columns are kept, so sources with other columns can be laid end to end."""
    for key, target in targets.items():
        if key in source.template:
            template = source.template[key]

            def fill(row, template=template, target=target, key=key):
                try:
                    return {target: template.format(**row)}
                except KeyError as err:
                    raise LitFtError(
                        f"data.sources '{source.label}': template {key}='{template}' names "
                        f"column {err}, which it lacks; columns: {', '.join(row)}"
                    ) from None

            dataset = dataset.map(fill, desc=f"Template {source.label}")
        elif key in source.columns and source.columns[key] != target:
            if source.columns[key] not in dataset.column_names:
                raise LitFtError(
                    f"data.sources '{source.label}': columns {key}='{source.columns[key]}' is "
                    f"not a column; columns: {', '.join(dataset.column_names)}"
                )
            if target in dataset.column_names:
                dataset = dataset.remove_columns(target)
            dataset = dataset.rename_column(source.columns[key], target)
    missing = [f"{k}='{t}'" for k, t in targets.items() if t not in dataset.column_names]
    if missing:
        raise LitFtError(
            f"data.sources '{source.label}' ({source.path}) has no column for "
            f"{', '.join(missing)}; columns: {', '.join(dataset.column_names)}. Name its own "
            "with columns: {text_column: <column>}, or build one with template:"
        )
    return dataset.select_columns(list(dict.fromkeys(targets.values())))


def interleaved(sizes: Sequence[int]) -> list[int]:
    """Indices into sources laid end to end, ordered so that every stretch holds each source
    in proportion to its size: sources of 2 and 4 rows -> [2, 0, 3, 4, 1, 5] (row i of a source
    of n rows stands at (i + 0.5) / n of the way)."""
    starts = [sum(sizes[:s]) for s in range(len(sizes))]
    keyed = [((i + 0.5) / n, s, starts[s] + i) for s, n in enumerate(sizes) for i in range(n)]
    return [index for _, _, index in sorted(keyed)]


def laid_end_to_end(parts: Sequence[Any], sources: Sequence[Source]):
    """The sources' rows (each already with the task's columns) as one dataset. Column types
    that differ only in storage (a JSON file's large_string, a CSV's string) are cast to the
    first source's; types that differ in kind (int labels in one, strings in another) are
    refused, naming the sources and the types."""
    import datasets

    first = parts[0].features
    aligned = [parts[0]]
    for part, source in zip(parts[1:], sources[1:], strict=True):
        if part.features != first:
            try:
                part = part.cast(first)
            except (ValueError, TypeError) as err:
                clash = {
                    k: (first[k], part.features[k]) for k in first if first[k] != part.features[k]
                }
                said = "; ".join(
                    f"{k}: {a} in '{sources[0].label}', {b} in '{source.label}'"
                    for k, (a, b) in clash.items()
                )
                raise LitFtError(
                    f"data.sources: the columns the task reads have other types in other sources "
                    f"({said}); give them the same kind of values ({err})"
                ) from None
        aligned.append(part)
    return datasets.concatenate_datasets(aligned)


@dataclass(frozen=True)
class MixturePlan:
    """Where each source's processed rows lie (sources laid end to end) and how an epoch
    draws from them."""

    labels: tuple[str, ...]
    sizes: tuple[int, ...]
    weights: tuple[float, ...]
    mode: str
    size: int | None = None

    @property
    def epoch_size(self) -> int:
        return self.size or sum(self.sizes)

    @property
    def offsets(self) -> list[int]:
        out, start = [], 0
        for n in self.sizes:
            out.append(start)
            start += n
        return out

    def quotas(self) -> list[int]:
        """Examples an epoch takes from each source without replacement: weight shares of the
        epoch, rounded by largest remainder so they add up (0.8 / 0.2 of 6,000: 4,800, 1,200)."""
        total = sum(self.weights)
        exact = [self.epoch_size * w / total for w in self.weights]
        quotas = [int(x) for x in exact]
        by_remainder = sorted(range(len(exact)), key=lambda i: quotas[i] - exact[i])
        for i in by_remainder[: self.epoch_size - sum(quotas)]:
            quotas[i] += 1
        return quotas

    def order(self, generator: torch.Generator) -> list[int]:
        """One epoch's indices into the laid-out rows."""
        n, offsets = self.epoch_size, self.offsets
        if self.mode == "with_replacement":
            weights = torch.tensor(self.weights, dtype=torch.float64)
            which = torch.multinomial(weights, n, replacement=True, generator=generator)
            sizes = torch.tensor(self.sizes, dtype=torch.float64)[which]
            within = (torch.rand(n, generator=generator, dtype=torch.float64) * sizes).long()
            return (torch.tensor(offsets)[which] + within).tolist()
        picked: list[int] = []
        for offset, size, quota in zip(offsets, self.sizes, self.quotas(), strict=True):
            passes = -(-quota // size) if size else 0
            rows = [
                offset + i
                for _ in range(passes)
                for i in torch.randperm(size, generator=generator).tolist()
            ]
            picked += rows[:quota]
        shuffle = torch.randperm(len(picked), generator=generator).tolist()
        return [picked[i] for i in shuffle]

    def source_of(self, index: int) -> int:
        for s, offset in reversed(list(enumerate(self.offsets))):
            if index >= offset:
                return s
        return 0

    def shares(self, order: Sequence[int]) -> list[float]:
        counts = [0] * len(self.sizes)
        for index in order:
            counts[self.source_of(index)] += 1
        return [c / max(len(order), 1) for c in counts]

    def describe(self, order: Sequence[int]) -> str:
        """The pre-flight's line: each source's weight, rows and realised share of epoch 1."""
        total = sum(self.weights)
        parts = [
            f"{label} {share:.1%} (weight {w / total:.1%}, {n:,} rows)"
            for label, share, w, n in zip(
                self.labels, self.shares(order), self.weights, self.sizes, strict=True
            )
        ]
        return f"mixture of {self.epoch_size:,} examples an epoch, {self.mode}: " + "; ".join(parts)


class SourceTagged:
    """A collate that hands the task's collate its rows without their source tag and puts
    the tags beside the batch (`_source`: the model never sees it; validation splits by it)."""

    def __init__(self, collate) -> None:
        self.collate = collate

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        sources = torch.tensor([row[SOURCE_KEY] for row in rows])
        batch = self.collate([{k: v for k, v in row.items() if k != SOURCE_KEY} for row in rows])
        batch[SOURCE_KEY] = sources
        return batch
