"""data.streaming=true: tokenized on the fly, and a resumed run continues the stream exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lit_ft
from lit_ft.errors import ConfigError


def _losses(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture
def short_text(tmp_path, reference_text) -> Path:
    """~5K characters: about 6 batches of 8 x 32 tokens per pass, so 12 steps cross a pass."""
    path = tmp_path / "short.txt"
    path.write_text(reference_text[:5_000], encoding="utf-8")
    return path


def test_streaming_run_resumes_to_the_same_losses(tiny_overrides, short_text, tmp_path):
    def args(run: str, log: str, *extra: str) -> list[str]:
        return [
            *(a for a in tiny_overrides if not a.startswith(("data.data_files", "paths."))),
            f"data.data_files={short_text}",
            f"paths.output_dir={tmp_path / run}",
            "data.streaming=true",
            "data.streaming_validation_rows=20",
            "trainer.max_epochs=-1",
            "trainer.val_check_interval=6",  # the stream never ends an epoch: validate by batches
            "trainer.max_steps=12",
            "callbacks.resumable_checkpoint.every_n_train_steps=4",
            "evaluate_before=false",
            "export=false",
            "+callbacks.loss_log="
            f"{{_target_: helpers.callbacks.LossLog, path: '{tmp_path / log}'}}",
            *extra,
        ]

    lit_ft.train_from_overrides(args("full", "full.jsonl"))
    # SIGTERM at step 6: the run saves last.ckpt there and stops (exit code 3 on the CLI).
    kill = "+callbacks.kill={_target_: helpers.callbacks.KillAt, step: 6, sig: SIGTERM}"
    with pytest.raises(SystemExit) as stopped:
        lit_ft.train_from_overrides(args("cut", "cut.jsonl", kill))
    assert stopped.value.code == 3
    lit_ft.train_from_overrides(args("cut", "resumed.jsonl", "ckpt_path=last"))

    full, resumed = _losses(tmp_path / "full.jsonl"), _losses(tmp_path / "resumed.jsonl")
    assert [r["step"] for r in resumed] == list(range(7, 13))  # steps done after each batch
    saved = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)
    (position,) = saved["StreamingDataModule"]["positions"]
    assert position["before"].get("pass", position["before"].get("epoch")) >= 1  # 2nd pass
    assert resumed == full[6:]  # same blocks in the same order, bit-identical losses
    full_w = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)
    cut_w = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.equal(full_w["state_dict"][k], v) for k, v in cut_w["state_dict"].items())


def test_streaming_needs_max_steps(tiny_overrides):
    with pytest.raises(ConfigError, match="data.streaming=true reads data of unknown length"):
        lit_ft.train_from_overrides(
            [*tiny_overrides, "data.streaming=true", "trainer.max_steps=-1"]
        )


def test_a_stream_held_out_whole_for_validation_is_named(tiny_overrides):
    """Fewer rows than data.streaming_validation_rows: every row is validation, training would
    meet an empty stream (it said only "this process's shard is empty")."""
    from lit_ft.errors import LitFtError

    with pytest.raises(LitFtError, match="all held out for validation") as raised:
        lit_ft.train_from_overrides(
            [*tiny_overrides, "data.streaming=true", "data.streaming_validation_rows=1000000"]
        )
    assert "lower data.streaming_validation_rows" in str(raised.value)
