"""The LightningDataModule: load -> split -> tokenize -> blocks -> dataloaders.

Sources are anything `datasets.load_dataset` takes: a Hub name (`wikitext`) or a local builder
(`text`, `csv`, `json`, `parquet`) with `data_files`. Tokenization and grouping run as batched
`map` calls with explicit fingerprints, so a second run with the same data, tokenizer and block
size loads the processed Arrow files from the `datasets` cache instead of recomputing them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from lit_ft import corpora
from lit_ft.errors import LitFtError
from lit_ft.sampler import ResumableRandomSampler

log = logging.getLogger(__name__)

DataFiles = str | Sequence[str] | Mapping[str, str | Sequence[str]] | None


class CausalLMCollator:
    """Stack blocks into a batch; labels copy input_ids, masked (-100) where attention is 0.

    Masking from the attention mask rather than `pad_token_id` matters for GPT-2, whose pad
    token is EOS: real end-of-text tokens keep their labels.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(e["input_ids"]) for e in examples)
        input_ids = torch.full((len(examples), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
        for row, example in enumerate(examples):
            ids = torch.as_tensor(example["input_ids"], dtype=torch.long)
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class FineTuneDataModule(L.LightningDataModule):
    def __init__(
        self,
        tokenizer,
        path: str,
        name: str | None = None,
        data_files: DataFiles = None,
        corpus: str | None = None,
        text_column: str = "text",
        validation_split_percentage: float = 5.0,
        block_size: int = 1024,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        preprocessing_num_workers: int | None = None,
        overwrite_cache: bool = False,
        add_eos: bool = False,
        load_kwargs: Mapping[str, Any] | None = None,
        max_positions: int | None = None,
        seed: int = 42,
        split_seed: int = 42,
    ):
        super().__init__()
        self.tokenizer = tokenizer
        self.path, self.name, self.data_files, self.corpus = path, name, data_files, corpus
        self.text_column = text_column
        self.validation_split_percentage = validation_split_percentage
        self.block_size = clamp_block_size(block_size, max_positions)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.preprocessing_num_workers = preprocessing_num_workers
        self.overwrite_cache = overwrite_cache
        self.add_eos = add_eos
        self.load_kwargs = dict(load_kwargs or {})
        self.seed = seed  # the training order
        self.split_seed = split_seed  # which rows are held out; fixed apart from `seed` so a
        # sweep over seeds compares validation losses on the same rows
        self.datasets: dict[str, Any] | None = None
        self._sampler: ResumableRandomSampler | None = None
        self._position = (0, 0)  # (epoch, training samples consumed in it, all processes)
        self._fingerprint: dict[str, Any] | None = None

    @property
    def train_sampler(self) -> ResumableRandomSampler:
        """One sampler for the whole run, so a restored position survives new dataloaders."""
        if self._sampler is None:
            self.setup("fit")
            self._sampler = ResumableRandomSampler(len(self.datasets["train"]), seed=self.seed)
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
        the tokenizer, and the sampler's seed. Computed once: every checkpoint stores it."""
        if self._fingerprint is None:
            self.setup("fit")
            self._fingerprint = {
                "train_data": self.datasets["train"]._fingerprint,
                "tokenizer": self._tokenizer_hash,
                "sampler_seed": self.seed,
            }
        return self._fingerprint

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, done = state["epoch"], state["samples_done"]
        if done >= self.train_sampler.dataset_size:  # saved at the epoch's end
            epoch, done = epoch + 1, 0
        self._position = (epoch, done)
        self.train_sampler.resume(epoch, done)

    # -- building ----------------------------------------------------------------------------
    def _build(self) -> None:
        raw = self._load_raw()
        # Hashing the tokenizer serializes its whole vocabulary: do it once per build.
        self._tokenizer_hash = tokenizer_fingerprint(self.tokenizer)
        blocks = {}
        for split, dataset in raw.items():
            tokens = self._tokenize(dataset, split)
            blocks[split] = self._group(tokens, split)
        self.datasets = blocks

    def _load_raw(self) -> dict[str, Any]:
        import datasets

        kwargs = dict(self.load_kwargs)
        if self.corpus:
            corpora.materialize(self.corpus, self.data_files)
        if self.data_files:
            kwargs["data_files"] = _expand(self.data_files)
        try:
            loaded = datasets.load_dataset(self.path, self.name, **kwargs)
        except FileNotFoundError as err:
            message = f"data.path='{self.path}' data.data_files={self.data_files}: {err}"
            raise LitFtError(message) from err
        except ValueError as err:
            message = f"could not load data.path='{self.path}' ({self.name}): {err}"
            if "corresponds to no data" in str(err):  # datasets' words for zero rows
                message = f"data.path='{self.path}' ({self.data_files}) has no rows: it is empty"
            raise LitFtError(message) from err
        splits = {name: loaded[name] for name in loaded}
        if "train" not in splits:
            raise LitFtError(
                f"data.path='{self.path}' has no 'train' split; splits: {', '.join(splits)}"
            )
        self._check_text_column(splits["train"])
        if "validation" not in splits:
            splits.update(self._split_validation(splits["train"]))
        return {"train": splits["train"], "validation": splits["validation"]}

    def _check_text_column(self, dataset) -> None:
        if self.text_column not in dataset.column_names:
            raise LitFtError(
                f"data.text_column='{self.text_column}' is not a column of data.path="
                f"'{self.path}'; columns: {', '.join(dataset.column_names)}"
            )

    def _split_validation(self, train) -> dict[str, Any]:
        """Hold out `validation_split_percentage` of the rows, chosen with the run's seed."""
        fraction = self.validation_split_percentage / 100
        if fraction <= 0 or len(train) < 2:
            raise LitFtError(
                f"data.path='{self.path}' has no validation split and "
                f"data.validation_split_percentage={self.validation_split_percentage} "
                f"(rows: {len(train)}) cannot make one; set a percentage in (0, 100) or give "
                "data.data_files={train: ..., validation: ...}"
            )
        parts = train.train_test_split(test_size=fraction, seed=self.split_seed, shuffle=True)
        return {"train": parts["train"], "validation": parts["test"]}

    def _tokenize(self, dataset, split: str):
        tokenizer, column, eos = self.tokenizer, self.text_column, self.tokenizer.eos_token_id
        add_eos = self.add_eos and eos is not None

        def tokenize(batch: dict[str, list]) -> dict[str, list]:
            # verbose=False: documents longer than the model are expected, they are cut into
            # blocks next, so the tokenizer's "sequence too long" warning would only mislead.
            ids = tokenizer(batch[column], add_special_tokens=False, verbose=False)["input_ids"]
            return {"input_ids": [row + [eos] for row in ids] if add_eos else ids}

        return dataset.map(
            tokenize,
            batched=True,
            num_proc=self.preprocessing_num_workers,
            remove_columns=dataset.column_names,
            load_from_cache_file=not self.overwrite_cache,
            new_fingerprint=_fingerprint(
                dataset._fingerprint, self._tokenizer_hash, column, add_eos, eos
            ),
            desc=f"Tokenizing {split}",
        )

    def _group(self, dataset, split: str):
        """Concatenate all token ids and cut them into `block_size` blocks (remainder dropped)."""
        block_size = self.block_size

        def group(batch: dict[str, list]) -> dict[str, list]:
            ids = list(chain.from_iterable(batch["input_ids"]))
            usable = len(ids) // block_size * block_size
            return {"input_ids": [ids[i : i + block_size] for i in range(0, usable, block_size)]}

        grouped = dataset.map(
            group,
            batched=True,
            batch_size=1000,
            num_proc=self.preprocessing_num_workers,
            load_from_cache_file=not self.overwrite_cache,
            new_fingerprint=_fingerprint(dataset._fingerprint, "group", block_size),
            desc=f"Grouping {split} into blocks of {block_size}",
        )
        if len(grouped) == 0:
            tokens = sum(len(ids) for ids in dataset["input_ids"])
            raise LitFtError(
                f"the {split} split of data.path='{self.path}' has {tokens} tokens, fewer than "
                f"one block of data.block_size={block_size}; lower data.block_size or add text"
            )
        return grouped.with_format("python")

    def _loader(self, split: str, batch_size: int, sampler=None) -> DataLoader:
        assert self.datasets is not None, "call setup() first"
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            sampler=sampler,
            # A private generator: without one, every new iterator draws its base seed from the
            # global torch RNG, which would shift dropout masks after a resume.
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=self.num_workers,
            collate_fn=CausalLMCollator(self.tokenizer.pad_token_id),
            persistent_workers=self.num_workers > 0,
        )


def clamp_block_size(block_size: int, max_positions: int | None) -> int:
    if max_positions is not None and block_size > max_positions:
        log.warning(
            "data.block_size=%d exceeds the model's %d positions; using %d",
            block_size,
            max_positions,
            max_positions,
        )
        return max_positions
    return block_size


def tokenizer_fingerprint(tokenizer) -> str:
    """A stable hash of the tokenizer's vocabulary and rules (not of its Python object state)."""
    from datasets.fingerprint import Hasher

    backend = getattr(tokenizer, "backend_tokenizer", None)
    return Hasher.hash(backend.to_str() if backend is not None else tokenizer)


def _fingerprint(*parts: Any) -> str:
    from datasets.fingerprint import Hasher

    return Hasher.hash([str(p) for p in parts])


def _expand(data_files: DataFiles) -> DataFiles:
    if isinstance(data_files, str):
        return str(Path(data_files).expanduser())
    if isinstance(data_files, Mapping):
        return {k: _expand(v) for k, v in data_files.items()}
    return [str(Path(f).expanduser()) for f in data_files]


def build_datamodule(
    tokenizer, streaming: bool = False, streaming_validation_rows: int = 1000, **kw
):
    """The datamodule for `cfg.data`: in memory (above), or streamed (lit_ft.streaming)."""
    if streaming:
        from lit_ft.streaming import StreamingDataModule

        return StreamingDataModule(tokenizer, validation_rows=streaming_validation_rows, **kw)
    return FineTuneDataModule(tokenizer, **kw)
