"""The offline default, exactly as a new user runs it: a real fine-tune with a real drop."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_default_run_lowers_perplexity(run_cli, tmp_path):
    result = run_cli([f"paths.output_dir={tmp_path}", "trainer.enable_progress_bar=false"])
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    before = results["metrics"]["before"]["val/ppl"]
    after = results["metrics"]["after"]["val/ppl"]
    assert after < 0.7 * before, (before, after)  # a new domain: the drop is large, not noise
    assert f"validation perplexity {before:.2f} -> {after:.2f}" in result.stdout
    assert (tmp_path / "hf_model" / "model.safetensors").is_file()
