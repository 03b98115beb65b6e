"""Configs the tests share: a tiny GPT-2 run on local text that trains in seconds."""

from __future__ import annotations

from pathlib import Path


def tiny_run_overrides(tokenizer_dir: Path, text_file: Path, output_dir: Path) -> list[str]:
    """Overrides for a 2-layer, 32-wide GPT-2 from a config on local text: trains in seconds.

    ~60K characters / ~3 per token = ~20K tokens = ~600 blocks of 32: one epoch is ~70 batches
    of 8, so 30 steps stay inside the first epoch.
    """
    return [
        *tiny_model_overrides(tokenizer_dir),
        "data=text_files",
        f"data.data_files={text_file}",
        "data.block_size=32",
        "data.batch_size=8",
        "data.validation_split_percentage=10",
        "trainer.max_epochs=1",
        "trainer.max_steps=30",
        "trainer.log_every_n_steps=5",
        "trainer.enable_progress_bar=false",
        "optimizer.lr=3e-3",
        # Stated, never `auto`: what auto picks depends on the host's CPU (test_precision.py
        # tests both of its outcomes and every precision this run can take).
        "trainer.precision=32-true",
        f"paths.output_dir={output_dir}",
    ]


def tiny_model_overrides(tokenizer_dir: Path) -> list[str]:
    """A 2-layer, 32-wide GPT-2 from a config, with the tests' tiny tokenizer."""
    return [
        f"model.name_or_path={tokenizer_dir}",
        "model.from_scratch=true",
        "model.model_type=gpt2",
        "model.config_overrides={n_layer: 2, n_head: 2, n_embd: 32, n_positions: 64, "
        "vocab_size: 512, bos_token_id: 0, eos_token_id: 0}",
    ]
