"""The LightningDataModule: load -> split -> task preprocessing -> dataloaders.

Sources are anything `datasets.load_dataset` takes: a Hub name (`wikitext`) or a local builder
(`text`, `csv`, `json`, `parquet`) with `data_files`. What rows become (blocks of tokens,
labelled sequences, prompt/response pairs) is the task's business (`lit_ft.tasks`); its
batched `map` calls carry explicit fingerprints, so a second run with the same data, tokenizer
and options loads the processed Arrow files from the `datasets` cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from lit_ft.compat import dataset_fingerprint
from lit_ft.data.eval_rows import marked_for_evaluation
from lit_ft.data.mixture import (
    SOURCE_KEY,
    MixturePlan,
    SourceTagged,
    interleaved,
    laid_end_to_end,
    load_source_splits,
    parse_sources,
    to_task_columns,
)
from lit_ft.data.row_index import IndexedRows, collate_with_rows
from lit_ft.data.sampler import ResumableRandomSampler
from lit_ft.data.sources import DataFiles, data_dirs, load_source, tokenizer_fingerprint
from lit_ft.errors import LitFtError
from lit_ft.tasks import Task, TaskContext
from lit_ft.tasks.base import example_lengths

SPLITS = ("train", "validation")  # what a mixture's sources give (no test split)


class FineTuneDataModule(L.LightningDataModule):
    def __init__(
        self,
        tokenizer,
        task: Task,
        path: str,
        name: str | None = None,
        data_files: DataFiles = None,
        corpus: str | None = None,
        corpus_dir: str | None = None,
        validation_split_percentage: float = 5.0,
        test_split: str | None = "test",
        batch_size: int = 8,
        group_by_length: bool = False,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        preprocessing_num_workers: int | None = None,
        overwrite_cache: bool = False,
        load_kwargs: Mapping[str, Any] | None = None,
        seed: int = 42,
        split_seed: int = 42,
        given: Mapping[str, Any] | None = None,
        sources: list[Mapping[str, Any]] | None = None,
        mixture_mode: str = "with_replacement",
        mixture_size: int | None = None,
        repeat_windows: tuple[int, int] | None = None,
    ):
        super().__init__()
        self.tokenizer, self.task = tokenizer, task
        self.path, self.name, self.data_files, self.corpus = path, name, data_files, corpus
        self.corpus_dir = corpus_dir  # where a built-in corpus is written when data_files is null
        self.validation_split_percentage = validation_split_percentage
        self.test_split = test_split  # evaluated and predicted after training, when labelled
        self.batch_size = batch_size
        self.group_by_length = group_by_length
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.preprocessing_num_workers = preprocessing_num_workers
        self.overwrite_cache = overwrite_cache
        self.load_kwargs = dict(load_kwargs or {})
        self.seed = seed  # the training order
        self.split_seed = split_seed  # which rows are held out; fixed apart from `seed` so a
        # sweep over seeds compares validation losses on the same rows
        self.datasets: dict[str, Any] | None = None
        self.raw_splits: dict[str, Any] = {}  # memory-mapped Arrow: no copy in memory
        self._sampler: ResumableRandomSampler | None = None
        self._position = (0, 0)  # (epoch, training samples consumed in it, all processes)
        self._fingerprint: dict[str, Any] | None = None
        # Raw splits handed over as objects (lit_ft/data/given.py): read instead of `path`.
        self.given = dict(given) if given is not None else None
        self.tokenized = False  # rows already tokenized (set when the data is read)
        # A collator of the user's (FineTuner(data_collator=...)) instead of the task's
        self.data_collator = None
        # data=mixture (lit_ft/data/mixture.py): the sources, and where their rows lie
        self.sources = [dict(s) for s in sources] if sources else None
        self.mixture_mode, self.mixture_size = mixture_mode, mixture_size
        self.mixture: MixturePlan | None = None
        # (batches per optimizer step, times each step's window is given): GRPO's
        # task.num_iterations (lit_ft/data/sampler.py)
        self.repeat_windows = repeat_windows

    @property
    def train_sampler(self) -> ResumableRandomSampler:
        """One sampler for the whole run, so a restored position survives new dataloaders."""
        if self._sampler is None:
            self.setup("fit")
            train = self.datasets["train"]
            self._sampler = ResumableRandomSampler(
                len(train) if self.mixture is None else self.mixture.epoch_size,
                seed=self.seed,
                lengths=example_lengths(train).to_pylist() if self.group_by_length else None,
                batch_size=self.batch_size,
                mixture=self.mixture,
                repeat_windows=self.repeat_windows,
            )
        return self._sampler

    # -- Lightning hooks -------------------------------------------------------------------
    def prepare_data(self) -> None:
        # Rank 0 does the slow part; other ranks then hit the cache in setup. Lightning calls
        # both again for every fit/validate, so the work happens once per process.
        if self.datasets is None:
            self._build()

    def setup(self, stage: str | None = None) -> None:
        if self.datasets is None:
            self._build()

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, sampler=self.train_sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        # Each batch carries its rows' indices: predictions.jsonl shows the rows' own text.
        return self._loader(self.predict_split, self.eval_batch_size, indexed=True)

    def raw_row(self, split: str, index: int) -> dict[str, Any]:
        """Row `index` of `split` as the data holds it (preprocessing maps rows one to one)."""
        return self.raw_splits[split][index]

    def add_split(self, split: str, raw, labelled: bool = True) -> None:
        """Preprocess one more raw split (rows as the data gives them) with this run's task
        and tokenizer, e.g. a dataset handed to FineTuner.evaluate or .predict.

        Its labels must be ones the train split has (the model has no unit for another);
        `labelled=False` accepts rows without a label column, for predictions only."""
        from lit_ft.tasks.labelled import fit_label_map

        self.setup("fit")
        key = getattr(self.task, "label_key", None)
        label = "labels" if self.tokenized else self.task.column.get("label_column")
        if not labelled and key and label not in raw.column_names:  # to predict, not score
            per_token = key == "tags_column"
            if per_token and self.tokenized:  # a label per token, none scored
                raw = raw.add_column(label, [[-100] * len(ids) for ids in raw["input_ids"]])
            elif not per_token:
                raw = raw.add_column(label, [None if not self.tokenized else -100] * len(raw))
        if not self.tokenized:
            self.task.check_columns(raw, split)
        if key and labelled:  # refused as for a file's validation split: labels train never shows
            column = label if self.tokenized else self.task.column[key]
            fit_label_map({"train": self.raw_splits["train"], split: raw}, column, split)
        context = TaskContext(tokenizer_hash=self._tokenizer_hash, num_proc=None)
        self.datasets[split] = self._preprocess(raw, split, context)
        self.raw_splits[split] = raw

    def eval_loader(self, split: str, indexed: bool = False) -> DataLoader:
        """The evaluation loader of any split (indexed: each batch carries its rows' indices,
        as the predict loader does)."""
        return self._loader(split, self.eval_batch_size, indexed=indexed)

    @property
    def predict_split(self) -> str:
        """Predictions are written for the test split when there is a labelled one."""
        return "test" if "test" in self.datasets else "validation"

    # -- exact resumption ------------------------------------------------------------------
    # Lightning saves `state_dict()` in every checkpoint and calls `load_state_dict()` before
    # the training loop creates its first iterator: the sampler then skips what was trained.
    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        trainer = self.trainer
        if trainer is not None and trainer.training:
            if self._position[0] != trainer.current_epoch:
                self._position = (trainer.current_epoch, 0)
            # Counted over all processes: each of the world-size ranks took one batch.
            taken = self.batch_size * trainer.world_size
            self._position = (self._position[0], self._position[1] + taken)
        return batch

    def state_dict(self) -> dict[str, Any]:
        epoch, samples = self._position
        return {"epoch": epoch, "samples_done": samples, "fingerprint": self.fingerprint()}

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must share with its checkpoint for the data position to mean the
        same examples: the processed training data (raw data, split, tokenization, blocks),
        the tokenizer, and the sampler's seed and order. Computed once: every checkpoint
        stores it."""
        if self._fingerprint is None:
            self.setup("fit")
            self._fingerprint = {
                "train_data": dataset_fingerprint(self.datasets["train"]),
                "tokenizer": self._tokenizer_hash,
                "sampler_seed": self.seed,
                "group_by_length": self.group_by_length,  # another order of the same data
            }
            if self.repeat_windows is not None:  # windows given mu times: another order
                self._fingerprint["repeat_windows"] = list(self.repeat_windows)
            if self.mixture is not None:  # other weights or sizes: another order
                plan = self.mixture
                self._fingerprint["mixture"] = [
                    plan.labels,
                    plan.weights,
                    plan.mode,
                    plan.epoch_size,
                    plan.sizes,
                ]
        return self._fingerprint

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, done = state["epoch"], state["samples_done"]
        if done >= self.train_sampler.epoch_positions:  # saved at the epoch's end
            epoch, done = epoch + 1, 0
        self._position = (epoch, done)
        self.train_sampler.resume(epoch, done)

    # -- building ----------------------------------------------------------------------------
    @property
    def source_labels(self) -> list[str] | None:
        """data=mixture: the sources' labels (validation reports each), else None."""
        return list(self.mixture.labels) if self.mixture is not None else None

    def _build(self) -> None:
        if self.sources:
            return self._build_mixture()
        raw = self._load_raw()
        # Rows already tokenized (FineTuner datasets with input_ids): checked, not re-tokenized
        self.tokenized = "input_ids" in raw["train"].column_names
        for split, dataset in raw.items() if self.tokenized else ():
            self.task.check_tokenized(dataset, split)
        self.task.fit_labels(raw, self._source, column="labels" if self.tokenized else None)
        # Hashing the tokenizer serializes its whole vocabulary: do it once per build.
        self._tokenizer_hash = tokenizer_fingerprint(self.tokenizer)
        context = TaskContext(
            tokenizer_hash=self._tokenizer_hash,
            num_proc=self.preprocessing_num_workers,
            load_from_cache=not self.overwrite_cache,
            data_dirs=data_dirs(self.data_files, self.corpus, self.corpus_dir)
            if self.given is None
            else (),
        )
        processed = {}
        for split, dataset in raw.items():
            processed[split] = self._preprocess(dataset, split, context)
        self.datasets, self.raw_splits = processed, raw

    def _build_mixture(self) -> None:
        """data=mixture: each source read, given the task's columns, split and processed on
        its own; the processed sources laid end to end, each row tagged with its source."""
        import datasets

        sources = parse_sources(self.sources)
        targets = {k: v for k, v in self.task.column.items() if v is not None}
        raws = []
        for source in sources:
            splits = load_source_splits(source, self.corpus_dir)
            if "validation" not in splits:
                splits.update(self._split_validation(splits["train"]))
            raws.append({k: to_task_columns(splits[k], source, targets) for k in SPLITS})
        raw = {k: laid_end_to_end([r[k] for r in raws], sources) for k in SPLITS}
        self.task.fit_labels(raw, "data.sources")
        self._tokenizer_hash = tokenizer_fingerprint(self.tokenizer)
        context = TaskContext(
            tokenizer_hash=self._tokenizer_hash,
            num_proc=self.preprocessing_num_workers,
            load_from_cache=not self.overwrite_cache,
        )
        processed, sizes = {}, []
        for split in SPLITS:
            parts = []
            for i, (source, part) in enumerate(zip(sources, raws, strict=True)):
                done = self._preprocess(part[split], f"{split} of {source.label}", context)
                parts.append(done.add_column(SOURCE_KEY, [i] * len(done)))
            laid_out = datasets.concatenate_datasets(parts)
            if split == "train":
                sizes = [len(p) for p in parts]
            else:  # interleaved, so a limited validation (limit_val_batches) sees every source
                order = interleaved([len(p) for p in parts])
                laid_out = laid_out.select(order)
                if len(raw[split]) == len(order):  # rows map one to one: predictions' inputs
                    raw[split] = raw[split].select(order)
            processed[split] = laid_out.with_format("python")
        self.mixture = MixturePlan(
            labels=tuple(s.label for s in sources),
            sizes=tuple(sizes),
            weights=tuple(float(s.weight) for s in sources),
            mode=self.mixture_mode,
            size=self.mixture_size,
        )
        self.datasets, self.raw_splits = processed, raw

    def _preprocess(self, dataset, split: str, context):
        if self.tokenized:
            processed = self.task.preprocess_tokenized(dataset, split, context)
        else:
            processed = self.task.preprocess(dataset, split, context)
        return processed.with_format("python")

    @property
    def _source(self) -> str:
        if self.given is not None:
            return "the datasets given to FineTuner"
        return f"data.path='{self.path}'" + (f" ({self.name})" if self.name else "")

    def _load_raw(self) -> dict[str, Any]:
        loaded = self.given
        if loaded is None:
            files = (self.data_files, self.corpus, self.corpus_dir)
            loaded = load_source(self.path, self.name, *files, self.load_kwargs)
        splits = {name: loaded[name] for name in loaded}
        if "train" not in splits:
            raise LitFtError(f"{self._source} has no 'train' split; splits: {', '.join(splits)}")
        if "input_ids" not in splits["train"].column_names:  # tokenized rows: checked later
            self.task.check_columns(splits["train"], self._source)
        if "validation" not in splits:
            splits.update(self._split_validation(splits["train"]))
        chosen = {"train": splits["train"], "validation": splits["validation"]}
        test = splits.get(self.test_split) if self.test_split else None
        if test is not None and self._labelled(test):
            chosen["test"] = test
        return chosen

    def _labelled(self, dataset) -> bool:
        """A test split is scored only when it has the task's columns and real labels (GLUE's
        test labels are all -1)."""
        if "input_ids" in dataset.column_names:  # tokenized rows: labels, or none to score
            return "labels" in dataset.column_names or self.task.tokenized_columns == ("input_ids",)
        try:
            self.task.check_columns(dataset, self._source)
        except LitFtError:
            return False
        label = self.task.column.get("label_column")
        return label is None or any(v not in (-1, None) for v in dataset[label][:1000])

    def _split_validation(self, train) -> dict[str, Any]:
        """Hold out `validation_split_percentage` of the rows, chosen with `split_seed`."""
        fraction, pct = self.validation_split_percentage / 100, self.validation_split_percentage
        give_file = "data.data_files={train: <file>, validation: <file>}"
        if fraction <= 0:
            raise LitFtError(
                f"{self._source} has no validation split and data.validation_split_percentage="
                f"{pct} holds none out; set a percentage in (0, 100) or give {give_file}"
            )
        if len(train) < 2:  # one row held out would leave none to train on
            raise LitFtError(
                f"{self._source} has {len(train)} row(s) and no validation split: "
                f"data.validation_split_percentage={pct} needs at least 2 rows (one to train on, "
                f"one to validate; a text file gives a row per line); add rows or give {give_file}"
            )
        parts = train.train_test_split(test_size=fraction, seed=self.split_seed, shuffle=True)
        return {"train": parts["train"], "validation": parts["test"]}

    def _loader(self, split: str, batch_size: int, sampler=None, indexed=False) -> DataLoader:
        assert self.datasets is not None, "call setup() first"
        dataset = self.datasets[split]
        collate = self.task.collate() if split == "train" else self.task.eval_collate()
        if self.data_collator is not None:
            collate = UserCollator(self.data_collator)
        if self.mixture is not None:  # each row's source travels beside the task's batch
            collate = SourceTagged(collate)
        if indexed:
            dataset, collate = IndexedRows(dataset), collate_with_rows(collate)
        elif split != "train":  # validation/test: DDP's repeated rows marked, never scored
            sampler, dataset, collate = marked_for_evaluation(dataset, collate)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            # A private generator: without one, every new iterator draws its base seed from the
            # global torch RNG, which would shift dropout masks after a resume.
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
        )


class UserCollator:
    """A collator of the user's (the HF Trainer's `data_collator` contract): it gets the
    task's processed rows (already tokenized: input_ids, labels, ...; not the raw columns)
    and returns the batch. Its first batch is checked, so a wrong one fails with what is
    missing instead of deep inside the model or the loss."""

    def __init__(self, collate) -> None:
        self.collate, self.checked = collate, False

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(rows)
        if not self.checked:
            self.check(batch, len(rows))
            self.checked = True
        return dict(batch)  # e.g. transformers' BatchEncoding, a mapping of its own

    def check(self, batch, rows: int) -> None:
        name = getattr(self.collate, "__name__", type(self.collate).__name__)
        if not isinstance(batch, Mapping):
            raise LitFtError(
                f"data_collator {name} returned a {type(batch).__name__}; it must return a "
                "dict of tensors with input_ids and labels, one row per example"
            )
        problems = [
            f"{key} is {'missing' if key not in batch else type(batch[key]).__name__}"
            for key in ("input_ids", "labels")
            if not isinstance(batch.get(key), torch.Tensor)
        ]
        problems += [
            f"{key} has {value.shape[0]} rows for {rows} examples"
            for key, value in batch.items()
            if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] != rows
        ]
        if problems:
            raise LitFtError(
                f"data_collator {name}: {'; '.join(problems)} (keys: {', '.join(batch)}); it "
                "gets the task's tokenized rows and must return tensors input_ids and labels "
                "(lit_ft's loss and token counts read them), one row per example"
            )


def token_count(dataset) -> int:
    import pyarrow.compute as pc

    return int(pc.sum(example_lengths(dataset)).as_py() or 0)


def build_datamodule(
    tokenizer, task: Task, streaming: bool = False, streaming_validation_rows: int = 1000, **kw
):
    """The datamodule for `cfg.data`: in memory (above), or streamed (lit_ft.data.streaming, text
    blocks for causal_lm only)."""
    if streaming:
        from lit_ft.data.streaming import StreamingDataModule

        return StreamingDataModule(
            tokenizer,
            text_column=task.column["text_column"],
            block_size=task.max_length,
            add_eos=task.add_eos,
            validation_rows=streaming_validation_rows,
            **kw,
        )
    return FineTuneDataModule(tokenizer, task, **kw)
