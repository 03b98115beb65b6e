"""Hydra multirun: a grid makes one run directory per job, Optuna finishes its trials, and
`python -m lit_ft.sweep_report` tabulates and plots the jobs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.config import tiny_run_overrides

pytestmark = pytest.mark.slow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _sweep_overrides(tokenizer_dir, text_file, tmp_path) -> list[str]:
    return [
        *(
            o  # the sweeps below set the learning rate themselves
            for o in tiny_run_overrides(tokenizer_dir, text_file, tmp_path / "unused")
            if not o.startswith("optimizer.lr=")
        ),
        "trainer.max_steps=6",
        "trainer.log_every_n_steps=2",
        "trainer.val_check_interval=3",
        "evaluate_before=false",
        "export=false",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]


def test_grid_sweep_runs_every_job_in_its_own_dir_and_reports(
    run_cli, tiny_tokenizer_dir, text_file, tmp_path
):
    overrides = _sweep_overrides(tiny_tokenizer_dir, text_file, tmp_path)
    result = run_cli(["-m", *overrides, "optimizer.lr=0.001,0.003"])
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "sweep"
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    for job, lr in zip(jobs, ("0.001", "0.003"), strict=True):
        results = json.loads((job / "results.json").read_text())
        assert results["output_dir"] == str(job)  # the job's own directory, not paths.output_dir
        assert Path(results["last_checkpoint"]).parent == job / "checkpoints"
        assert f"optimizer.lr={lr}" in (job / ".hydra" / "overrides.yaml").read_text()
        assert (job / "plots" / "loss.png").is_file()
    assert not (tmp_path / "unused").exists()

    report = run_cli([str(sweep)], module="lit_ft.sweep_report")
    assert report.returncode == 0, report.stderr
    lines = report.stdout.splitlines()
    header = next(line for line in lines if line.startswith("job"))
    assert "optimizer.lr" in header and "val/loss" in header and "tokens/s" in header
    rows = [line for line in lines if line[:1] in "01"]
    assert len(rows) == 2 and any("*" in row for row in rows)  # the best job is marked
    assert "same in every job:" in lines[0] and "data.block_size=32" in lines[0]
    assert (sweep / "comparison.png").read_bytes()[:8] == PNG_SIGNATURE


def test_grid_sweep_with_a_bad_job_runs_the_rest_and_exits_2_with_one_line_per_job(
    run_cli, tiny_tokenizer_dir, text_file, tmp_path
):
    overrides = _sweep_overrides(tiny_tokenizer_dir, text_file, tmp_path)
    result = run_cli(["-m", *overrides, "optimizer.lr=-1,0.003"])
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Error executing job" not in result.stderr
    assert result.stderr.count("optimizer.lr must be a positive number, got -1") == 1
    sweep = tmp_path / "sweep"
    assert result.stderr.rstrip().endswith(
        f"lit_ft: error: 1 sweep job(s) failed: 0 (each one's reason is above and in its "
        f"run.log); python -m lit_ft.sweep_report {sweep} lists every job"
    )
    assert (sweep / "1" / "results.json").is_file()  # the good job still ran
    report = run_cli([str(sweep)], module="lit_ft.sweep_report")
    assert report.returncode == 0, report.stderr
    assert (
        "job 0 failed: the config has 1 problem(s): optimizer.lr must be a positive number, got -1"
    ) in report.stdout


def test_optuna_sweep_of_two_trials_completes(run_cli, tiny_tokenizer_dir, text_file, tmp_path):
    overrides = _sweep_overrides(tiny_tokenizer_dir, text_file, tmp_path)
    result = run_cli([*overrides, "hparams_search=optuna", "hydra.sweeper.n_trials=2"])
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "sweep"
    best = (sweep / "optimization_results.yaml").read_text()
    # optimizer.lr and data.batch_size were given on the command line: fixed, not searched.
    assert "best_params" in best and "best_value" in best
    assert "scheduler.warmup_ratio" in best and "optimizer.weight_decay" in best
    trials = sorted(p.name for p in sweep.iterdir() if (p / "results.json").is_file())
    assert trials == ["0", "1"]


def test_sweep_report_refuses_a_directory_without_jobs(run_cli, tmp_path):
    result = run_cli([str(tmp_path)], module="lit_ft.sweep_report")
    assert result.returncode == 2 and "holds no sweep jobs" in result.stderr


def test_report_says_why_each_failed_job_failed(tmp_path):
    from lit_ft.sweep_report import load_jobs, table

    for job, lr in (("0", "0.001"), ("1", "0.003"), ("2", "0.01")):
        hydra_dir = tmp_path / job / ".hydra"
        hydra_dir.mkdir(parents=True)
        (hydra_dir / "overrides.yaml").write_text(f"- optimizer.lr={lr}\n")
    results = {"metrics": {"after": {"val/loss": 2.5}, "train": {}}, "tokens_per_s": 10.0}
    (tmp_path / "0" / "results.json").write_text(json.dumps(results))
    (tmp_path / "1" / "run.log").write_text(
        "[2026-12-01][lightning][INFO] - Seed set to 42\n"
        "lit_ft: error: the training loss is nan at optimizer step 5\n"
    )
    (tmp_path / "2" / "run.log").write_text(
        "[2026-12-01][lit_ft][ERROR] - lit_ft: error: the config has 2 problem(s):\n"
        "  - optimizer.lr must be a positive number, got -1\n"
        "  - data.batch_size must be a positive integer, got 0\n"
        "[2026-12-01][lightning][INFO] - something after\n"
    )
    text = table(load_jobs(tmp_path), "val/loss", maximize=False)
    assert (
        "job 2 failed: the config has 2 problem(s): optimizer.lr must be a positive number, "
        "got -1; data.batch_size must be a positive integer, got 0\n"
    ) in text + "\n"
    assert "job 1 failed: the training loss is nan at optimizer step 5" in text
    (tmp_path / "2" / "run.log").unlink()
    text = table(load_jobs(tmp_path), "val/loss", maximize=False)
    assert "job 2 failed: no results.json" in text
