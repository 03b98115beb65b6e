"""`lit_ft.sweep_report` in process, on job directories written by hand (the fast tier's check;
tests/test_sweeps.py runs it on real sweeps in the full suite)."""

from __future__ import annotations

import json

from lit_ft.sweep_report import report


def _job(sweep, name, lr, val_loss=None, error=None):
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(
        f"- optimizer.lr={lr}\n- data.block_size=32\n", encoding="utf-8"
    )
    if val_loss is not None:
        results = {"metrics": {"after": {"val/loss": val_loss}, "train": {"loss_last_10_steps": 2}}}
        (job / "results.json").write_text(json.dumps(results), encoding="utf-8")
    if error is not None:
        (job / "run.log").write_text(f"[x] lit_ft: error: {error}\n", encoding="utf-8")


def test_the_report_marks_the_lowest_loss_and_says_why_a_job_failed(tmp_path):
    _job(tmp_path, "0", "0.001", val_loss=2.5)
    _job(tmp_path, "1", "0.003", val_loss=1.75)  # the best, by hand: 1.75 < 2.5
    _job(tmp_path, "2", "-1", error="optimizer.lr must be a positive number, got -1")
    text, _plot = report(tmp_path)
    lines = text.splitlines()
    assert lines[0] == "same in every job: data.block_size=32"
    header = next(line for line in lines if line.startswith("job"))
    assert "optimizer.lr" in header and "val/loss" in header
    rows = {line.split()[0]: line for line in lines if line[:1].isdigit()}
    assert "*" in rows["1"] and "*" not in rows["0"] and "1.7500" in rows["1"]
    assert "failed" in rows["2"]
    assert "* best val/loss (min): job 1" in lines
    assert "job 2 failed: optimizer.lr must be a positive number, got -1" in lines
