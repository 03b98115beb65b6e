"""The offline default, exactly as a new user runs it, with `trainer.precision=auto` resolved
each way: to 32-true (a CPU without bf16 units) and to bf16-mixed (a bf16 CPU, as every
Ampere-or-newer GPU is too), whatever this host's CPU is."""

from __future__ import annotations

import json
import math

import pytest
from helpers.as_if_cpu import run_as_if
from helpers.readme_figures import DEFAULT_RUN, Figure, assert_figures, quoted

pytestmark = pytest.mark.slow


def test_default_run_lowers_perplexity(tmp_path):
    result = run_as_if(
        "none", [f"paths.output_dir={tmp_path}", "trainer.enable_progress_bar=false"]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "precision 32-true (the CPU has none of" in result.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    before = results["metrics"]["before"]["val/ppl"]
    after = results["metrics"]["after"]["val/ppl"]
    assert after < 0.7 * before, (before, after)  # a new domain: the drop is large, not noise
    assert f"validation perplexity {before:.2f} -> {after:.2f}" in result.stdout
    assert (tmp_path / "hf_model" / "model.safetensors").is_file()
    # README quotes this run's figures: a change that moves them fails here until README
    # says the new ones (fp32 on another CPU's kernels moves them by far less than 1%)
    readme_before, readme_after, readme_steps = quoted(DEFAULT_RUN, "the default run's figures")
    assert_figures(
        "the default run (Quickstart)",
        [
            Figure("perplexity before", before, readme_before, rel=0.01),
            Figure("perplexity after", after, readme_after, rel=0.01),
            Figure("optimizer steps", results["metrics"]["train"]["steps"], readme_steps),
        ],
    )


def test_default_run_on_a_bf16_machine_trains_with_fused_adamw_and_clipping(tmp_path):
    """The default that crashed at step 1 on bf16 hardware (fused AdamW + clipping under
    Lightning's mixed precision). Short: this host may emulate bf16 at ~1/100 of fp32's speed."""
    short = [
        "trainer.max_steps=3",
        "trainer.limit_val_batches=1",
        "callbacks.generations.num_prompts=0",
    ]
    args = [f"paths.output_dir={tmp_path}", "trainer.enable_progress_bar=false", *short]
    result = run_as_if("avx512_bf16", args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "precision bf16-mixed (the CPU has avx512_bf16)" in result.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["metrics"]["train"]["steps"] == 3
    train = results["metrics"]["train"]
    assert math.isfinite(train["loss_first_step"]) and math.isfinite(train["loss_last_10_steps"])
    assert math.isfinite(results["metrics"]["after"]["val/ppl"])  # 3 steps: no drop promised
    assert (tmp_path / "hf_model" / "model.safetensors").is_file()
