"""The datamodule: splits, blocks, labels, caching, and clear errors on bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from lit_ft.data.datamodule import FineTuneDataModule
from lit_ft.data.sources import clamp_block_size
from lit_ft.errors import LitFtError
from lit_ft.tasks import build_task
from lit_ft.tasks.base import PadCollator


@pytest.fixture
def tokenizer(tiny_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tok.pad_token = tok.eos_token
    return tok


def _datamodule(
    tokenizer, text_file, block_size=32, text_column="text", **kwargs
) -> FineTuneDataModule:
    task = build_task("causal_lm", tokenizer, {"text_column": text_column}, block_size)
    options = dict(
        path="text",
        data_files=str(text_file),
        batch_size=4,
        validation_split_percentage=10,
        seed=7,
    )
    options.update(kwargs)
    dm = FineTuneDataModule(tokenizer, task, **options)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_blocks_labels_and_split(tokenizer, text_file):
    dm = _datamodule(tokenizer, text_file)
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 32)
    assert torch.equal(batch["labels"], batch["input_ids"])  # full blocks: nothing masked
    assert batch["attention_mask"].all()
    train, val = len(dm.datasets["train"]), len(dm.datasets["validation"])
    assert train > 5 * val > 0


def test_validation_split_and_shuffle_are_seeded(tokenizer, text_file):
    first = _datamodule(tokenizer, text_file, seed=7, split_seed=1)
    again = _datamodule(tokenizer, text_file, seed=7, split_seed=1)
    other_seed = _datamodule(tokenizer, text_file, seed=8, split_seed=1)
    other_split = _datamodule(tokenizer, text_file, seed=7, split_seed=2)

    def val(dm):
        return dm.datasets["validation"]["input_ids"]

    def first_batch(dm):
        return next(iter(dm.train_dataloader()))["input_ids"]

    assert val(first) == val(again) == val(other_seed)  # `seed` does not move validation rows
    assert val(first) != val(other_split)
    assert torch.equal(first_batch(first), first_batch(again))
    assert not torch.equal(first_batch(first), first_batch(other_seed))


def test_second_run_loads_tokenized_data_from_cache(tokenizer, text_file):
    first = _datamodule(tokenizer, text_file, block_size=48)
    files = {s: [f["filename"] for f in d.cache_files] for s, d in first.datasets.items()}
    mtimes = {f: __import__("os").path.getmtime(f) for fs in files.values() for f in fs}
    second = _datamodule(tokenizer, text_file, block_size=48)
    assert {s: [f["filename"] for f in d.cache_files] for s, d in second.datasets.items()} == files
    assert all(__import__("os").path.getmtime(f) == t for f, t in mtimes.items())


def test_block_size_is_clamped_to_model_positions(caplog):
    assert clamp_block_size(100, 64) == 64
    assert clamp_block_size(32, 64) == 32 and clamp_block_size(4096, None) == 4096
    assert "exceeds the model's 64 positions" in caplog.text


def test_default_block_size_is_the_models_length_without_a_warning(caplog, text_file):
    """data=text_files on the default model: block_size null takes the model's length, and
    the user, who set nothing, is not warned about it."""
    import json

    from lit_ft.config import compose, to_plain
    from lit_ft.model.build import ModelSpec, load_config, load_tokenizer
    from lit_ft.run import build_task_and_data

    cfg = compose(["data=text_files", f"data.data_files={text_file}"])
    assert cfg.data.block_size is None
    spec = ModelSpec(task=cfg.task.name, **to_plain(cfg.model))
    with caplog.at_level("WARNING"):
        task, _ = build_task_and_data(cfg, load_tokenizer(spec), load_config(spec))
    shipped = json.loads((Path(cfg.model.name_or_path) / "config.json").read_text())
    assert task.max_length == shipped["n_positions"] == 256
    assert "exceeds" not in caplog.text
    # null: min(model positions, tokenizer limit, 1,024); an unset tokenizer limit is 1e30
    assert clamp_block_size(None, 2048, int(1e30)) == 1024
    assert clamp_block_size(None, 2048, 300) == 300 and clamp_block_size(None, None, None) == 1024
    # a value the user typed is still clamped, with the warning
    cfg = compose(["data=text_files", f"data.data_files={text_file}", "data.block_size=512"])
    with caplog.at_level("WARNING"):
        task, _ = build_task_and_data(cfg, load_tokenizer(spec), load_config(spec))
    assert task.max_length == 256 and "data.block_size=512 exceeds the model's 256" in caplog.text


def test_missing_text_column_lists_the_columns(tokenizer, text_file):
    with pytest.raises(LitFtError, match=r"data.text_column='content'.*columns: text"):
        _datamodule(tokenizer, text_file, text_column="content")


def test_too_little_text_for_one_block(tokenizer, tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("\n".join(f"line {i}" for i in range(20)))
    with pytest.raises(LitFtError, match="fewer than one block of data.block_size=4096"):
        _datamodule(tokenizer, small, block_size=4096)


def test_local_csv_and_jsonl(tokenizer, tmp_path, reference_text):
    import json

    paragraphs = [p for p in reference_text[:40_000].split("\n\n") if p.strip()]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"body": p}) for p in paragraphs))
    dm = _datamodule(tokenizer, tmp_path / "d.jsonl", path="json", text_column="body")
    assert len(dm.datasets["train"]) > 0
    import csv

    with open(tmp_path / "d.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["body"])
        writer.writerows([p] for p in paragraphs)
    dm = _datamodule(tokenizer, tmp_path / "d.csv", path="csv", text_column="body")
    assert len(dm.datasets["validation"]) > 0


def test_collator_masks_padding_not_eos():
    eos = 0
    rows = [{"input_ids": [5, 6, eos]}, {"input_ids": [7]}]
    batch = PadCollator(pad_token_id=eos, labels="from_inputs")(rows)
    assert batch["labels"].tolist() == [[5, 6, eos], [7, -100, -100]]  # real EOS keeps its label
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_every_missing_column_is_named_at_once_with_the_builder_hint(gpt2_tokenizer):
    from types import SimpleNamespace

    from lit_ft.errors import LitFtError
    from lit_ft.tasks import build_task

    columns = {"text_column": "review", "label_column": "stars", "text_pair_column": None}
    task = build_task("sequence_classification", gpt2_tokenizer, columns, max_length=32)
    as_text = SimpleNamespace(column_names=["text"])  # a CSV read with data.path=text
    with pytest.raises(LitFtError) as info:
        task.check_columns(as_text, "data.path='text'")
    message = str(info.value)
    assert "data.text_column='review' and data.label_column='stars' are not columns" in message
    assert "needs data.path=csv, json or parquet" in message
