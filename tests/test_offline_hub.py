"""`model=gpt2 data=wikitext` without the Hub: one clear message within seconds, exit 2."""

from __future__ import annotations

import time

import pytest
from helpers.offline_hub import assert_clear_offline_message

# A closed local port stands in for an unreachable Hub, so this holds on machines with network too.
UNREACHABLE = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}


@pytest.mark.parametrize(
    "env",
    # the offline case stays in the fast tier: one subprocess proves the exit code and message
    [pytest.param(UNREACHABLE, marks=pytest.mark.slow), {"HF_HUB_OFFLINE": "1"}],
    ids=["unreachable", "offline"],
)
def test_hub_job_offline_fails_fast_and_clearly(run_cli, tmp_path, env):
    started = time.monotonic()
    result = run_cli(["model=gpt2", "data=wikitext", f"paths.output_dir={tmp_path}"], env=env)
    elapsed = time.monotonic() - started
    assert result.returncode == 2
    assert_clear_offline_message(
        result.stderr, ["model/tokenizer 'gpt2'", "dataset 'wikitext (wikitext-2-raw-v1)'"]
    )
    assert elapsed < 60  # no half-minute retry loops (typically ~5 s, mostly imports)


@pytest.mark.slow
def test_local_model_with_hub_data_names_only_the_data(run_cli, tiny_overrides, tmp_path):
    result = run_cli([*tiny_overrides, "data=wikitext"], env=UNREACHABLE)
    assert result.returncode == 2
    assert "dataset 'wikitext" in result.stderr and "model/tokenizer" not in result.stderr
