"""The step line under a fake terminal: fitted to its width, the run's step of its total."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch

from lit_ft.observe.progress import (
    LineProgress,
    LiveProgress,
    fit_line,
    progress_bar,
    progress_problems,
)


class _Optimizer:
    param_groups = [{"lr": 1.9e-3}]


def _trainer(total: int = 180):
    """What the progress callbacks read from a Trainer, nothing more."""
    state = SimpleNamespace(fn="fit")
    return SimpleNamespace(
        global_step=0,
        optimizers=[_Optimizer()],
        callbacks=[SimpleNamespace(last={"mfu": 0.383})],
        lightning_module=SimpleNamespace(num_training_steps=total),
        progress_bar_metrics={"train/loss": 3.2141},
        callback_metrics={"val/loss": torch.tensor(3.91), "val/ppl": torch.tensor(49.9)},
        loggers=[],
        sanity_checking=False,
        state=state,
    )


def _batch():
    return {"input_ids": torch.ones(4, 32, dtype=torch.long)}


def _run(callback, trainer, steps: int, micro_batches: int = 2) -> None:
    callback.on_train_start(trainer, None)
    for _ in range(steps):
        for _ in range(micro_batches):  # gradient accumulation: one step per 2 batches
            callback.on_train_batch_end(trainer, None, None, _batch(), 0)
        trainer.global_step += 1
    callback.on_train_batch_end(trainer, None, None, _batch(), 0)
    callback.on_train_end(trainer, None)


def _screen(raw: str) -> list[str]:
    """What a terminal keeps: each carriage return + erase starts the line over."""
    lines = []
    for line in raw.split("\n"):
        lines.append(line.split("\r\x1b[K")[-1])
    return [line for line in lines if line]


@pytest.mark.parametrize("columns", [80, 60])
def test_live_line_fits_the_terminal_and_shows_the_global_step(columns, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", str(columns))  # shutil.get_terminal_size reads it first
    monkeypatch.setattr(LiveProgress, "min_redraw_s", 0.0)
    trainer = _trainer(total=25)
    _run(LiveProgress(every_n_steps=10), trainer, steps=25)
    raw = capsys.readouterr().out

    drawn = [part.split("\n")[0] for part in raw.split("\r\x1b[K")[1:]]
    live = [text for text in drawn if text]
    assert live, raw
    assert all(len(text) < columns for text in live), live  # never the last column: no wrap
    steps = [int(re.search(r"step (\d+)/25", text).group(1)) for text in live]
    assert steps == sorted(steps) and set(steps) >= {1, 2, 11, 24}  # global step, not batch
    if columns == 80:
        assert any("%" in text and "[" in text for text in live)  # bar and percentage fit

    # What stays on screen: the permanent lines, the last step once, no live leftovers.
    screen = _screen(raw)
    step_lines = [line for line in screen if line.startswith("[lit_ft] step ")]
    assert [line.split()[2] for line in step_lines] == ["10/25", "20/25", "25/25"]
    assert raw.endswith("\n")  # the cursor is left at column 0 for what follows


def test_validation_before_training_shows_on_a_terminal(capsys):
    trainer = _trainer()
    trainer.state.fn = "validate"  # the evaluation before fit()
    LiveProgress().on_validation_end(trainer, None)
    assert "[lit_ft] validation (evaluation): val/loss 3.91 val/ppl 49.9" in capsys.readouterr().out


def test_plain_lines_print_the_last_step_once(capsys):
    trainer, progress = _trainer(total=20), LineProgress(every_n_steps=10)
    progress._speed.read = lambda: 5120.0  # a real run's rate, not this loop's millions
    _run(progress, trainer, steps=20)
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = out.splitlines()
    assert [line.split()[2] for line in lines] == ["10/20", "20/20"]
    assert lines[0].startswith("[lit_ft] step 10/20 loss 3.214 lr 1.90e-03 5,120 tok/s mfu 38% ")
    assert all(len(line) <= 80 for line in lines)


def test_fit_line_drops_the_expendable_parts_first():
    parts = [("prefix", "[lit_ft]"), ("step", "step 5/9"), ("bar", "[#····] 50%")]
    parts += [("lr", "lr 1.00e-03"), ("time", "0:01 ~0:01 left")]
    assert fit_line(parts, 80) == "[lit_ft] step 5/9 [#····] 50% lr 1.00e-03 0:01 ~0:01 left"
    assert fit_line(parts, 40) == "[lit_ft] step 5/9 0:01 ~0:01 left"
    assert len(fit_line(parts, 20)) == 20


def test_styles(monkeypatch):
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert type(progress_bar("auto")) is LiveProgress
    assert type(progress_bar("rich")) is LiveProgress  # the old name for the terminal display
    assert type(progress_bar("lines")) is LineProgress
    assert progress_bar("auto", enabled=False) is None
    assert not progress_problems({"style": "rich"})
    (problem,) = progress_problems(SimpleNamespace(get=lambda k: "bars", style="bars"))
    assert "callbacks.progress.style='bars'" in problem and "live" in problem
