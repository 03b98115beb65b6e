"""Bad input: one clear error each, before long work, and no checkpoint lost.

In-process where the CLI adds nothing (the CLI turns every LitFtError into one line and exit
code 2, tested below once for a config with several problems); in a subprocess where the
command line itself is the point (Hydra's own errors, the run directory, exit codes).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from helpers.config import tiny_run_overrides

import lit_ft
from lit_ft.config import compose
from lit_ft.errors import ConfigError, LitFtError
from lit_ft.training.checkpoint import checkpoint_problem
from lit_ft.validate import validate_config

# Two steps between checkpoints; no evaluation before training (speed).
QUICK = ["callbacks.resumable_checkpoint.every_n_train_steps=2", "evaluate_before=false"]


def _checkpoints(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "checkpoints").iterdir())}


def test_every_config_problem_is_named_at_once(tiny_overrides, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    cfg = compose(
        [
            *tiny_overrides,
            "model.name_or_path=/no/such/model",
            "data.path=notes.txt",
            "trainer.precision=16-mixed",
            "trainer.accelerator=cpu",
            f"paths.output_dir={a_file}/run",
            "data.streaming=true",
            "trainer.max_epochs=abc",
            "trainer.max_steps=-1",
            "trainer=fsdp",
        ]
    )
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    problems = "\n".join(info.value.problems)
    print(problems)
    for expected in (
        "model.name_or_path='/no/such/model' does not exist",
        "data.path='notes.txt' is a file name, but data.path names a builder or a Hub dataset: "
        "use data.path=text data.data_files=notes.txt",
        "trainer.precision=16-mixed needs a CUDA GPU",
        f"paths.output_dir='{a_file}/run' cannot be created: '{a_file}' is a file",
        "data.streaming=true reads data of unknown length: set trainer.max_steps",
        "trainer.strategy is FSDP, which Lightning runs on CUDA GPUs only",
        "trainer.max_epochs must be an integer (-1: no limit), got 'abc'",
    ):
        assert expected in problems


def test_local_model_dir_without_config_and_data_name_for_a_builder(tiny_overrides, tmp_path):
    cfg = compose(
        [*tiny_overrides, "model.model_type=null", f"model.name_or_path={tmp_path}", "data.name=x"]
    )
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    assert f"model.name_or_path='{tmp_path}' has no config.json" in str(info.value)
    assert "data.name='x' names a Hub dataset's config; data.path=text has none" in str(info.value)


def test_cli_config_errors_exit_2_and_leave_the_run_alone(run_cli, tiny_overrides, tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"an earlier run's checkpoint")
    result = run_cli(
        [*tiny_overrides, "model.name_or_path=./missing/model", "trainer.precision=16-mixed"]
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "the config has 2 problem(s)" in result.stderr
    assert ckpt.read_bytes() == b"an earlier run's checkpoint"
    assert not (tmp_path / "run" / "config.yaml").exists()  # refused before lit_ft wrote


def test_cli_unwritable_output_dir_and_unknown_key(run_cli, tiny_overrides, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    args = [a for a in tiny_overrides if not a.startswith("paths.output_dir=")]
    result = run_cli([*args, f"paths.output_dir={a_file}/run"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"lit_ft: error: paths.output_dir='{a_file}/run' cannot be created: '{a_file}' is a file"
    )

    # Hydra's own composition errors: its message, no traceback, exit code 1.
    result = run_cli([*tiny_overrides, "optimizer.learning_rate=1e-4"])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "Key 'learning_rate' is not in struct" in result.stderr


def test_empty_data_file(tiny_tokenizer_dir, text_file, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    args = tiny_run_overrides(tiny_tokenizer_dir, text_file, tmp_path / "run")
    args = [a if not a.startswith("data.data_files=") else f"data.data_files={empty}" for a in args]
    with pytest.raises(ConfigError, match=f"data.data_files: '{empty}' is empty"):
        lit_ft.train_from_overrides(args)
    # A CSV with a header and no rows gets past the file check; the loaded data is empty.
    header_only = tmp_path / "empty.csv"
    header_only.write_text("text\n")
    args = [
        a if not a.startswith("data.data_files=") else f"data.data_files={header_only}"
        for a in args
    ]
    with pytest.raises(LitFtError, match="has no rows: it is empty"):
        lit_ft.train_from_overrides([*args, "data.path=csv"])


def test_a_validation_interval_past_the_epoch_is_named(tiny_tokenizer_dir, text_file, tmp_path):
    """~70 batches of 8 an epoch (tests/helpers/config.py): an interval of 1,000 batches is
    refused before the model loads, with what would do, instead of Lightning's traceback."""
    args = tiny_run_overrides(tiny_tokenizer_dir, text_file, tmp_path / "run")
    with pytest.raises(LitFtError, match=r"val_check_interval=1000 batches is more than an epoch"):
        lit_ft.train_from_overrides([*args, "trainer.val_check_interval=1000"])
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_one_line_file_says_what_would_make_a_validation_split(
    tiny_tokenizer_dir, text_file, tmp_path
):
    notes = tmp_path / "notes.txt"
    notes.write_text("one line of notes\n")
    args = tiny_run_overrides(tiny_tokenizer_dir, text_file, tmp_path / "run")
    args = [a if not a.startswith("data.data_files=") else f"data.data_files={notes}" for a in args]
    with pytest.raises(LitFtError) as info:
        lit_ft.train_from_overrides([*args, "data.validation_split_percentage=5"])
    message = str(info.value)
    assert "has 1 row(s) and no validation split" in message
    assert "data.validation_split_percentage=5 needs at least 2 rows" in message
    assert "add rows or give data.data_files={train: <file>, validation: <file>}" in message
    assert "set a percentage in (0, 100)" not in message  # 5 is one: not the way out


@pytest.mark.slow
def test_cli_error_while_preparing_data_leaves_no_run_dir(run_cli, tiny_overrides, tmp_path):
    """A lit_ft error after the run directory was claimed (here: too few rows to split) ends
    the run with its one line and removes the directory the run created."""
    notes = tmp_path / "notes.txt"
    notes.write_text("one line of notes\n")
    args = [a for a in tiny_overrides if not a.startswith(("data.data_files=", "paths."))]
    result = run_cli([*args, f"data.data_files={notes}", f"paths.root_dir={tmp_path / 'outputs'}"])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "has 1 row(s) and no validation split" in result.stderr
    assert list((tmp_path / "outputs" / "runs").iterdir()) == []


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_overrides, tmp_path):
    poison = "+callbacks.poison={_target_: helpers.callbacks.PoisonAt, step: 5}"
    with pytest.raises(LitFtError) as info:
        lit_ft.train_from_overrides([*tiny_overrides, *QUICK, poison])
    run = tmp_path / "run"
    message = str(info.value)
    print(message)
    assert "the training loss is nan at optimizer step 5 (epoch 0, batch 4)" in message
    assert f"The last good checkpoint is {run / 'checkpoints'}" in message
    assert sorted(_checkpoints(run)) == ["last.ckpt", "step000002.ckpt", "step000004.ckpt"]
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())


def test_disk_full_during_save_keeps_the_previous_checkpoint(tiny_overrides, tmp_path, monkeypatch):
    import lit_ft.training.checkpoint

    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if "step000004" in getattr(f, "name", ""):
            real_save(obj, f, *args, **kwargs)  # a partial file is on disk when space runs out
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(lit_ft.training.checkpoint.torch, "save", save)
    with pytest.raises(LitFtError) as info:
        lit_ft.train_from_overrides([*tiny_overrides, *QUICK])
    run = tmp_path / "run"
    message = str(info.value)
    print(message)
    assert message.startswith(
        f"could not save checkpoint {run / 'checkpoints' / 'step000004.ckpt'}: "
        "No space left on device ("
    )
    assert "no earlier one was there. Free space" in message
    assert sorted(_checkpoints(run)) == ["last.ckpt", "step000002.ckpt"]  # no temp file left
    assert checkpoint_problem(run / "checkpoints" / "last.ckpt") is None


@pytest.mark.slow
def test_checkpoint_of_another_model_is_refused_naming_both(tiny_overrides, tmp_path):
    lit_ft.train_from_overrides([*tiny_overrides, *QUICK, "trainer.max_steps=2", "export=false"])
    before = _checkpoints(tmp_path / "run")
    wider = [
        a.replace("n_embd: 32", "n_embd: 64") if a.startswith("model.config_overrides") else a
        for a in tiny_overrides
    ]
    with pytest.raises(LitFtError) as info:
        lit_ft.train_from_overrides([*wider, *QUICK, "ckpt_path=last"])
    message = str(info.value)
    print(message)
    assert "refusing to resume from" in message and "it holds another model" in message
    assert "is (512, 32) there and (512, 64) here (n_embd 32 there, 64 here)" in message
    assert _checkpoints(tmp_path / "run") == before


@pytest.mark.slow
def test_cli_run_dir_named_through_hydra_that_cannot_be_created(run_cli, tiny_overrides):
    # /proc refuses new directories even to root, whom every permission check lets through
    result = run_cli([*tiny_overrides, "hydra.run.dir=/proc/lit_ft_run"])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "lit_ft: error: hydra.run.dir='/proc/lit_ft_run' cannot be created in '/proc'" in (
        result.stderr
    )


def test_warmup_steps_win_over_a_tuned_warmup_ratio(tmp_path):
    from lit_ft.training.optim import warmup_steps_for

    cfg = compose(["scheduler.warmup_steps=6", f"paths.output_dir={tmp_path}"])
    assert cfg.scheduler.warmup_ratio == 0.05  # conf/tuned/ sets it for the default pair
    validate_config(cfg)  # not refused: the explicit step count wins, as in the HF Trainer
    assert warmup_steps_for(180, cfg.scheduler.warmup_steps, cfg.scheduler.warmup_ratio) == 6
    assert warmup_steps_for(180, 0, 0.05) == 9  # 180 x 0.05 = 9


def test_own_data_files_replace_the_built_in_corpus(tmp_path, text_file):
    cfg = compose([f"data.data_files={text_file}", f"paths.output_dir={tmp_path}"])
    assert cfg.data.corpus == "python_reference"
    validate_config(cfg)
    from lit_ft.data import corpora

    assert corpora.files_to_read(cfg.data.data_files, cfg.data.corpus, tmp_path) == str(text_file)
    # A mistyped path is named, and the built-in corpus is never written under the user's name.
    typo = tmp_path / "notes.txt"
    with pytest.raises(ConfigError, match=f"data.data_files: '{typo}' does not exist"):
        validate_config(compose([f"data.data_files={typo}", f"paths.output_dir={tmp_path}"]))
    assert not typo.exists()


@pytest.mark.slow
def test_a_second_process_on_a_live_run_dir_is_refused(run_cli, tiny_overrides, tmp_path):
    from lit_ft.run_lock import hold_run_dir

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"the live run's")
    with hold_run_dir(run_dir):  # this test process plays the live run
        result = run_cli([*tiny_overrides, "ckpt_path=last"])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"run directory '{run_dir}' is in use by a live run (process {os.getpid()} on" in (
        result.stderr
    )
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == b"the live run's"
    assert not (run_dir / "config.yaml").exists()
    # once the holder is gone (however it ended), the directory is free again
    with hold_run_dir(run_dir):
        pass
