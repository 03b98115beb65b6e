"""A run killed again and again, at seeded random moments, ends exactly as if never killed.

Each life is SIGKILLed from a timer thread wherever it happens to be: during start-up and data
preparation, mid-step, mid-save, in validation, during the final evaluation or the export.
Every life restarts with the same command and `ckpt_path=auto`. The uninterrupted run is the
reference: every micro-batch loss any life logged, every step's `train/loss` row in
metrics.csv (all log versions joined), the final weights and the export must equal it (to
float rounding: see the note at the assertions).
Dropout is on (GPT-2's 0.1) and accumulation is 2, so the RNG states and the window position
have to come back exactly too.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch
from helpers.callbacks import REPRODUCIBLE_ENV
from helpers.config import tiny_run_overrides
from safetensors.torch import load_file

from lit_ft.plots import read_metrics

pytestmark = pytest.mark.slow
HELPERS = str(Path(__file__).parent)
KILLS = 8


def _args(tokenizer_dir, text_file, run_dir: Path, log: Path) -> list[str]:
    args = tiny_run_overrides(tokenizer_dir, text_file, run_dir)
    return [
        *args,
        "trainer.accumulate_grad_batches=2",  # 30 steps = 60 batches of 8
        "trainer.log_every_n_steps=1",  # a metrics.csv row for every step
        "trainer.val_check_interval=20",  # validations at steps 10, 20 and 30
        "callbacks.resumable_checkpoint.every_n_train_steps=2",
        f"+callbacks.loss_log={{_target_: helpers.callbacks.LossLog, path: '{log}'}}",
        "ckpt_path=auto",
    ]


def _losses(log: Path) -> dict[tuple[int, int], float]:
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    return {(row["epoch"], row["batch"]): row["loss"] for row in rows}


def test_many_kills_resume_exactly(run_cli, tiny_tokenizer_dir, text_file, tmp_path):
    env = {
        "PYTHONPATH": os.pathsep.join([HELPERS, os.environ.get("PYTHONPATH", "")]),
        **REPRODUCIBLE_ENV,
    }
    full, cut = tmp_path / "full", tmp_path / "cut"
    reference = run_cli(
        _args(tiny_tokenizer_dir, text_file, full, tmp_path / "full.jsonl"), env=env
    )
    assert reference.returncode == 0, reference.stderr[-3000:]

    rng = random.Random(31)
    lives = []
    for life in range(KILLS + 5):
        kill = []
        if life < KILLS:  # (event, seconds after it): start-up, mid-training, export
            event = rng.choice(["start", "save", "save", "fit_end"])
            delay = {"start": rng.uniform(2, 10), "save": rng.uniform(0, 3)}.get(
                event, rng.uniform(0, 1.5)
            )
            kill = [
                "+callbacks.kill={_target_: helpers.callbacks.KillSoonAfter, "
                f"delay: {delay:.3f}, event: {event}}}"
            ]
        args = _args(tiny_tokenizer_dir, text_file, cut, tmp_path / "cut.jsonl")
        # 0.2 s before each of the 60 batches: 12 s of training outlasts the kill timers on
        # any machine, so the kills land (a sleep changes no number)
        slow = "+callbacks.slow={_target_: helpers.callbacks.SlowBatches, seconds: 0.2}"
        result = run_cli([*args, slow, *kill], env=env)
        lives.append((kill, result.returncode))
        if result.returncode == 0:
            break
        assert result.returncode == -9, result.stderr[-3000:]  # killed, never failed
    assert lives[-1][1] == 0, lives
    assert sum(rc == -9 for _, rc in lives) >= 4, lives  # the kills did land

    # Every micro-batch loss any life logged is the uninterrupted run's, and so are the
    # final weights and the export. Bit for bit in most runs; one CI-like run on this
    # project's AMX Xeon differed from one resumed step on by float rounding (a loss by
    # 2e-7 relative, weights by 4e-9), cause not found yet: hence the tolerances.
    want, got = _losses(tmp_path / "full.jsonl"), _losses(tmp_path / "cut.jsonl")
    assert got.keys() == want.keys()
    assert all(got[k] == pytest.approx(want[k], rel=1e-5) for k in want)
    # metrics.csv: a row for every step, the same values
    logged, reference_rows = read_metrics(cut)["train/loss"], read_metrics(full)["train/loss"]
    assert logged.keys() == reference_rows.keys()
    assert all(logged[k] == pytest.approx(reference_rows[k], rel=1e-5) for k in logged)
    weights = [torch.load(d / "checkpoints" / "last.ckpt", weights_only=True) for d in (full, cut)]
    assert weights[0]["global_step"] == weights[1]["global_step"] == 30
    a, b = weights[0]["state_dict"], weights[1]["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    x, y = (load_file(d / "hf_model" / "model.safetensors") for d in (full, cut))
    assert x.keys() == y.keys()
    for k in x:
        torch.testing.assert_close(y[k], x[k], rtol=1e-5, atol=1e-6)
    # one file per step: no "-v1" copies of a step trained again
    assert not list((cut / "checkpoints").glob("*-v*.ckpt"))
    # the starting model is scored once, by the first life; later lives report that figure
    results = json.loads((cut / "results.json").read_text())
    reference_results = json.loads((full / "results.json").read_text())
    assert results["metrics"]["before"] == reference_results["metrics"]["before"]
