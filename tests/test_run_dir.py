"""A run refused at its checks leaves no directory; nothing of an earlier run is removed."""

from __future__ import annotations

from lit_ft.run_dir import note_run_dir, remove_unused_run_dir


def _start_files(run_dir):
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("a: 1\n")
    (run_dir / "run.log").write_text("lit_ft: error: optimizer.lr=-1 ...\n")
    (run_dir / ".lit_ft.lock").write_text("")


def test_a_new_run_dir_with_only_start_files_is_removed(tmp_path):
    run_dir = tmp_path / "runs" / "2026-01-01_00-00-00"
    note_run_dir(run_dir)  # before Hydra creates it
    _start_files(run_dir)
    assert remove_unused_run_dir(run_dir)
    assert not run_dir.exists() and (tmp_path / "runs").is_dir()


def test_a_run_dir_with_anything_else_is_kept(tmp_path):
    run_dir = tmp_path / "run"
    note_run_dir(run_dir)
    _start_files(run_dir)
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    assert not remove_unused_run_dir(run_dir)
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == b"weights"


def test_an_existing_run_dir_is_kept_even_when_it_holds_only_start_files(tmp_path):
    run_dir = tmp_path / "earlier_run"  # hydra.run.dir pointed at it again
    _start_files(run_dir)
    note_run_dir(run_dir)
    assert not remove_unused_run_dir(run_dir)
    assert (run_dir / "run.log").is_file()
    unknown = tmp_path / "not_noted"  # not started through Hydra's run: never removed
    _start_files(unknown)
    assert not remove_unused_run_dir(unknown)


def test_a_run_stopped_while_preparing_leaves_no_dir(tmp_path):
    """Stopped after the loggers copied the config and the training example was written (a
    data error, a refused memory estimate): still nothing of the run's own work."""
    run_dir = tmp_path / "runs" / "2026-01-01_00-00-00"
    note_run_dir(run_dir)
    _start_files(run_dir)
    (run_dir / "config.yaml").write_text("seed: 42\n")
    (run_dir / "logs" / "version_0").mkdir(parents=True)
    (run_dir / "logs" / "version_0" / "hparams.yaml").write_text("seed: 42\n")
    (run_dir / "train_example.txt").write_text("«def f(): pass»\n")
    assert remove_unused_run_dir(run_dir)
    assert not run_dir.exists()


def test_a_run_dir_with_logged_metrics_is_kept(tmp_path):
    run_dir = tmp_path / "run"
    note_run_dir(run_dir)
    _start_files(run_dir)
    (run_dir / "logs" / "version_0").mkdir(parents=True)
    (run_dir / "logs" / "version_0" / "hparams.yaml").write_text("seed: 42\n")
    (run_dir / "logs" / "version_0" / "metrics.csv").write_text("step,train/loss\n1,2.0\n")
    assert not remove_unused_run_dir(run_dir)
    assert (run_dir / "logs" / "version_0" / "metrics.csv").is_file()
