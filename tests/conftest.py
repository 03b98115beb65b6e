"""Shared fixtures: a tiny tokenizer and GPT-2 built from a config, and a little real text.

Nothing here touches the network: the Hub is switched off for the whole session, and every
cache points into a temporary directory.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from helpers.config import tiny_run_overrides
from helpers.processes import run_in_own_group

os.environ["HF_HUB_OFFLINE"] = "1"
# An empty HF home: a model or dataset in the user's own cache must not change any outcome.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="lit_ft_hf_home_")
atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)  # leave no folder
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def isolated_caches(tmp_path_factory):
    """Keep generated corpora and `datasets` caches out of the user's home directory."""
    root = tmp_path_factory.mktemp("caches")
    os.environ["LIT_FT_CACHE"] = str(root / "lit_ft")
    os.environ["HF_DATASETS_CACHE"] = str(root / "datasets")
    import datasets.config

    datasets.config.HF_DATASETS_CACHE = Path(root / "datasets")
    return root


@pytest.fixture(autouse=True)
def restored_environment():
    """Each test ends with the environment it started with. Lightning's ddp_spawn launcher
    writes MASTER_PORT into this process's environment and leaves it there: every later
    2-process run, in this process or a subprocess, would then bind that one port, and fail
    (address in use) or hang whenever an earlier run's process still held it."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def reference_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name].strip() for name in sorted(topics))


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory, reference_text) -> Path:
    """A 512-token byte-level BPE trained in a second on Python's reference text."""
    from lit_ft.model.tokenizer_training import train_byte_level_bpe

    out = tmp_path_factory.mktemp("tiny_tokenizer")
    train_byte_level_bpe(
        [reference_text[:200_000]], vocab_size=512, model_max_length=64, out_dir=out
    )
    return out


@pytest.fixture(scope="session")
def gpt2_tokenizer(tiny_tokenizer_dir):
    """The tiny BPE as a GPT-2-style tokenizer (EOS doubles as padding)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@pytest.fixture(scope="session")
def text_file(tmp_path_factory, reference_text) -> Path:
    """About 60K characters of real prose (paragraphs of the Python language reference)."""
    path = tmp_path_factory.mktemp("text") / "reference.txt"
    path.write_text(reference_text[:60_000], encoding="utf-8")
    return path


@pytest.fixture
def tiny_overrides(tiny_tokenizer_dir, text_file, tmp_path) -> list[str]:
    return tiny_run_overrides(tiny_tokenizer_dir, text_file, tmp_path / "run")


@pytest.fixture(scope="session")
def run_cli():
    """Run `python -m lit_ft.run ARGS` (or another module) in a subprocess."""

    def run(args: list[str], cwd=None, env=None, module="lit_ft.run", timeout=600):
        return run_in_own_group(
            [sys.executable, "-m", module, *args],
            cwd=cwd,
            env={**os.environ, **(env or {})},
            timeout=timeout,
        )

    return run
