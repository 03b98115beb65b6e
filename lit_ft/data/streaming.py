"""`data.streaming=true`: read the data as a stream, tokenize on the fly, resume mid-stream.

For data that does not fit in memory or on disk: `datasets.load_dataset(..., streaming=True)`
reads Hub or local files lazily, and each example is tokenized when the training loop asks for
the next block. Nothing is cached, and the number of blocks is unknown, so training is sized
by `trainer.max_steps` (validate_config asks for it). At the end of the stream the next pass
begins without ending Lightning's epoch (see StreamingBlocks): validation during training
needs `trainer.val_check_interval=N` (batches).

Resumption: the stream's position is the `datasets` iterator state *before* the example that
completed a block, plus the tokens carried over from earlier examples (fewer than one block)
and how many tokens of that example went into blocks. That state is kept for the last few
blocks produced, because Lightning fetches a batch ahead of training; a checkpoint stores the
state of the last block actually trained on, for every rank (each streams its own shard).

Validation is `validation_rows` rows, tokenized once into blocks held in memory: the first
rows of the data's validation split if it has one, else rows held out from the start of the
training stream (which then skips them).

Limits: no shuffling (a shuffle buffer cannot be restored exactly: pre-shuffle the data), and
the stream is read in the training process (`data.num_workers` must be 0).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator, Mapping
from itertools import islice
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, IterableDataset

from lit_ft.data.sources import DataFiles, clamp_block_size, load_source, tokenizer_fingerprint
from lit_ft.distributed import rank_and_world
from lit_ft.errors import LitFtError
from lit_ft.problems import Problems
from lit_ft.tasks.base import PadCollator


class StreamingBlocks(IterableDataset):
    """Endless blocks of `block_size` token ids cut from a stream of text, resumable.

    Endless: at the end of the stream the next pass starts (the `datasets` epoch counts them),
    so Lightning's epoch never ends and `trainer.max_steps` stops training. Under DDP this is
    what keeps the ranks in step: shards of unequal length would otherwise end one rank's epoch
    while another still trains, and the next all-reduce would wait forever.
    """

    def __init__(self, source, tokenize, block_size: int, history: int):
        self.source = source  # a datasets.IterableDataset of raw rows (this rank's shard)
        self.tokenize = tokenize  # row -> token ids
        self.block_size = block_size
        self.produced = 0  # blocks produced since training started
        self._positions: deque[tuple[int, dict]] = deque(maxlen=history)  # (block no., state)
        self._resume: dict | None = None

    def position_after(self, blocks: int) -> dict | None:
        """The stream state right after the first `blocks` blocks."""
        return next((state for n, state in self._positions if n == blocks), None)

    def resume(self, state: dict) -> None:
        """Make the next iteration continue where `state` (from position_after) left off."""
        self._resume = state

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        block, state, self._resume = self.block_size, self._resume, None
        # A position: where the row that completed the block starts ("before": a `datasets`
        # state, or {"pass": n} for the start of pass n), the tokens carried into that row
        # from earlier ones (fewer than a block), and how many of carry + row went into blocks.
        before, carry, consumed, self.produced = {"pass": 0}, [], 0, 0
        if state is not None:
            before, carry = state["before"], list(state["carry"])
            consumed, self.produced = state["consumed"], state["blocks"]
        self._positions.clear()
        while True:
            epoch = before.get("pass", before.get("epoch"))
            # The `datasets` epoch is the pass: a loaded state applies to its own pass only.
            self.source.set_epoch(epoch)
            if "pass" not in before:
                self.source.load_state_dict(before)
            rows = 0
            for row in self.source:
                rows += 1
                pending, start = carry + self.tokenize(row), consumed
                while len(pending) - start >= block:
                    self.produced += 1
                    position = {
                        "before": before,
                        "carry": carry,
                        "consumed": start + block,
                        "blocks": self.produced,
                    }
                    self._positions.append((self.produced, position))
                    yield {"input_ids": pending[start : start + block]}
                    start += block
                # Fewer than one block is left: it starts the next row's tokens.
                carry, consumed = pending[start:], 0
                before = self.source.state_dict()  # now the position before the next row
            if rows == 0 and "pass" in before:
                raise LitFtError("the data stream has no rows (this process's shard is empty)")
            before = {"pass": epoch + 1}


class StreamingDataModule(L.LightningDataModule):
    def __init__(
        self,
        tokenizer,
        path: str,
        name: str | None = None,
        data_files: DataFiles = None,
        corpus: str | None = None,
        corpus_dir: str | None = None,
        text_column: str = "text",
        block_size: int = 1024,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        add_eos: bool = False,
        load_kwargs: Mapping[str, Any] | None = None,
        max_positions: int | None = None,
        seed: int = 42,
        validation_rows: int = 1000,
        sources: list[Mapping[str, Any]] | None = None,
        **in_memory_only: Any,  # split/caching keys of the in-memory path; nothing to do here
    ):
        super().__init__()
        if num_workers:
            raise LitFtError(
                "data.streaming=true reads in the training process: data.num_workers=0"
            )
        self.tokenizer = tokenizer
        self.path, self.name, self.data_files, self.corpus = path, name, data_files, corpus
        self.corpus_dir = corpus_dir  # where a built-in corpus is written when data_files is null
        self.text_column, self.add_eos = text_column, add_eos
        self.block_size = clamp_block_size(block_size, max_positions)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.load_kwargs = dict(load_kwargs or {})
        self.seed = seed
        self.validation_rows = validation_rows
        self.datasets: dict[str, Any] | None = None
        self._train: StreamingBlocks | None = None
        self._position = (0, 0)  # (epoch, training batches taken in it by this rank)
        self._resume_state: dict | None = None
        # data=mixture: the sources, streamed and interleaved by weight (lit_ft/data/mixture.py)
        self.sources = [dict(s) for s in sources] if sources else None
        self.source_labels: list[str] | None = None

    # -- Lightning hooks -------------------------------------------------------------------
    def prepare_data(self) -> None:
        self.setup("fit")

    def setup(self, stage: str | None = None) -> None:
        if self.datasets is None:
            self._build()

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        rank, world = rank_and_world()
        if self._train is None:
            source = self._train_source
            if world > 1:  # each rank streams its own shard (or every world-th row)
                from datasets.distributed import split_dataset_by_node

                source = split_dataset_by_node(source, rank=rank, world_size=world)
            # Lightning fetches one batch ahead; keep the positions of a few batches.
            self._train = StreamingBlocks(
                source, self._tokenize, self.block_size, 4 * self.batch_size
            )
            self.datasets["train"] = self._train
        if self._resume_state is not None:
            self._train.resume(self._resume_state)
            self._resume_state = None
        return DataLoader(
            self._train, batch_size=self.batch_size, collate_fn=self._collate, num_workers=0
        )

    def val_dataloader(self) -> DataLoader:
        self.setup("fit")
        collate = getattr(self, "_validation_collate", None) or self._collate
        return DataLoader(
            self.datasets["validation"], batch_size=self.eval_batch_size, collate_fn=collate
        )

    # -- resumption ------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        trainer = self.trainer
        if trainer is not None and trainer.training:
            if self._position[0] != trainer.current_epoch:
                self._position = (trainer.current_epoch, 0)
            self._position = (self._position[0], self._position[1] + 1)
        return batch

    def state_dict(self) -> dict[str, Any]:
        epoch, batches = self._position
        mine = None
        if self._train is not None and batches:
            mine = self._train.position_after(batches * self.batch_size)
        # Every rank saves at once and only rank 0 writes: gather each rank's position.
        world = self.trainer.world_size if self.trainer is not None else 1
        positions = [mine]
        if world > 1:
            import torch.distributed as dist

            positions = [None] * world
            dist.all_gather_object(positions, mine)
        return {"epoch": epoch, "positions": positions, "fingerprint": self.fingerprint()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        positions = state["positions"]
        rank, world = rank_and_world()
        if len(positions) != world:
            raise LitFtError(
                f"this streaming checkpoint was saved by {len(positions)} processes; resume it "
                f"with the same number (now {world}): each one's stream position is its own"
            )
        self._position = (state["epoch"], 0)
        if positions[rank] is not None:
            self._resume_state = positions[rank]
            self._position = (state["epoch"], positions[rank]["blocks"] // self.batch_size)

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must share with its checkpoint for the position to mean the same
        rows (compare lit_ft.data.datamodule): the source, the text column, blocks, and the
        tokenizer."""
        self.setup("fit")
        source = [self.path, self.name, str(self.data_files), self.text_column, self.block_size]
        if self.sources:  # data=mixture: the sources and their weights
            source.append(json.dumps(self.sources, sort_keys=True, default=str))
        return {"train_data": "stream:" + "|".join(map(str, source)), "tokenizer": self._hash}

    # -- building ----------------------------------------------------------------------------
    def _build(self) -> None:
        if self.sources:
            return self._build_mixture()
        streams = load_source(
            self.path,
            self.name,
            self.data_files,
            self.corpus,
            self.corpus_dir,
            self.load_kwargs,
            streaming=True,
        )
        if "train" not in streams:
            raise LitFtError(
                f"data.path='{self.path}' has no 'train' split; splits: {', '.join(streams)}"
            )
        train = streams["train"]
        columns = train.column_names or list(next(iter(train.take(1)), {}))
        if self.text_column not in columns:
            raise LitFtError(
                f"data.text_column='{self.text_column}' is not a column of data.path="
                f"'{self.path}'; columns: {', '.join(columns)}"
            )
        self._hash = tokenizer_fingerprint(self.tokenizer)
        if "validation" in streams:
            held_out = streams["validation"]
        else:  # the first rows: held out here, skipped by training
            held_out, train = train, train.skip(self.validation_rows)
        rows = list(islice(iter(held_out), self.validation_rows))
        if held_out is not streams.get("validation") and len(rows) < self.validation_rows:
            # else training meets an empty stream and says only that its shard is empty
            raise LitFtError(
                f"data.path='{self.path}' holds {len(rows)} rows, all held out for validation "
                f"(data.streaming_validation_rows={self.validation_rows}), none left to train on; "
                "lower data.streaming_validation_rows or give a validation split "
                "(data.data_files={train: ..., validation: ...})"
            )
        ids = [t for row in rows for t in self._tokenize(row)]
        usable = len(ids) // self.block_size * self.block_size
        validation = [
            {"input_ids": ids[i : i + self.block_size]} for i in range(0, usable, self.block_size)
        ]
        if not validation:
            raise LitFtError(
                f"the {self.validation_rows} validation rows of data.path='{self.path}' hold "
                f"{len(ids)} tokens, fewer than one block of data.block_size={self.block_size}; "
                "raise data.streaming_validation_rows or lower data.block_size"
            )
        self._train_source = train
        self._collate = PadCollator(self.tokenizer.pad_token_id, labels="from_inputs")
        self.datasets = {"train": None, "validation": validation}

    def _build_mixture(self) -> None:
        """data=mixture streamed: each source's stream given the text column (its own, or a
        template's), its first `validation_rows` rows held out (or its validation split), and
        the training streams interleaved by weight with `datasets.interleave_datasets` (a
        pass ends when a source runs out, so the shares hold throughout; its state resumes
        exactly). Validation blocks carry their source (val/<label>/...)."""
        import datasets

        from lit_ft.data.mixture import SOURCE_KEY, interleaved, load_source_splits, parse_sources

        sources = parse_sources(self.sources)
        trains, blocks = [], []
        for index, source in enumerate(sources):
            streams = load_source_splits(source, self.corpus_dir, streaming=True)
            train = _with_text_column(streams["train"], source, self.text_column)
            if "validation" in streams:
                held_out = _with_text_column(streams["validation"], source, self.text_column)
            else:  # its first rows: held out here, skipped by training
                held_out, train = train, train.skip(self.validation_rows)
            rows = list(islice(iter(held_out), self.validation_rows))
            ids = [t for row in rows for t in self._tokenize(row)]
            usable = len(ids) // self.block_size * self.block_size
            mine = [
                {"input_ids": ids[i : i + self.block_size], SOURCE_KEY: index}
                for i in range(0, usable, self.block_size)
            ]
            if not mine:
                raise LitFtError(
                    f"the {self.validation_rows} validation rows of data.sources "
                    f"'{source.label}' hold {len(ids)} tokens, fewer than one block of "
                    f"data.block_size={self.block_size}; raise data.streaming_validation_rows"
                )
            blocks.append(mine)
            trains.append(train)
        total = sum(s.weight for s in sources)
        self._train_source = datasets.interleave_datasets(
            trains,
            probabilities=[s.weight / total for s in sources],
            seed=self.seed,
            stopping_strategy="first_exhausted",
        )
        laid_out = [block for mine in blocks for block in mine]
        validation = [laid_out[i] for i in interleaved([len(mine) for mine in blocks])]
        self._hash = tokenizer_fingerprint(self.tokenizer)
        padded = PadCollator(self.tokenizer.pad_token_id, labels="from_inputs")
        from lit_ft.data.mixture import SourceTagged

        self._collate, self._validation_collate = padded, SourceTagged(padded)
        self.source_labels = [s.label for s in sources]
        self.datasets = {"train": None, "validation": validation}

    def _tokenize(self, row: dict[str, Any]) -> list[int]:
        ids = self.tokenizer(row[self.text_column], add_special_tokens=False, verbose=False)
        ids = ids["input_ids"]
        eos = self.tokenizer.eos_token_id
        return ids + [eos] if self.add_eos and eos is not None else ids


def streaming_problems(data, max_steps, task_name: str) -> Problems:
    """`data.streaming=true` needs a step budget, the causal-LM task and no length grouping."""
    problems = Problems()
    if not data.get("streaming"):
        return problems
    problems.need(
        isinstance(max_steps, int) and max_steps > 0,
        "data.streaming=true reads data of unknown length: set trainer.max_steps",
    )
    problems.need(
        task_name == "causal_lm",
        f"data.streaming=true streams text blocks for task=causal_lm; task "
        f"'{task_name}' reads its data into memory (set data.streaming=false)",
    )
    problems.need(
        not data.get("group_by_length"),
        "data.group_by_length=true sorts examples by length, which a stream cannot do "
        "(set data.group_by_length=false)",
    )
    return problems


def _with_text_column(stream, source, text_column: str):
    """A source's stream with the text the task reads under `text_column` (from its own column
    or its template) and nothing else."""
    if "text_column" in source.template:
        template = source.template["text_column"]
        stream = stream.map(lambda row: {text_column: template.format(**row)})
    elif source.columns.get("text_column", text_column) != text_column:
        stream = stream.rename_column(source.columns["text_column"], text_column)
    first = next(iter(stream.take(1)), {})
    if text_column not in first:
        raise LitFtError(
            f"data.sources '{source.label}' ({source.path}) has no column for "
            f"text_column='{text_column}'; columns: {', '.join(first)}. Name its own with "
            "columns: {text_column: <column>}, or build one with template:"
        )
    return stream.select_columns([text_column])
