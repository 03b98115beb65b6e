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
from lit_ft.observe.throughput import ThroughputLogger


class _Optimizer:
    param_groups = [{"lr": 1.9e-3}]


def _counter(flops_per_token: float | None = 1e6, peak: float | None = 1e10):
    """The throughput logger as the progress line reads it: FLOPs per token and the peak."""
    counter = ThroughputLogger()
    counter.flops_per_token, counter.peak = flops_per_token, peak
    return counter


def _trainer(total: int = 180, counter=None):
    """What the progress callbacks read from a Trainer, nothing more."""
    state = SimpleNamespace(fn="fit")
    return SimpleNamespace(
        global_step=0,
        optimizers=[_Optimizer()],
        callbacks=[counter or _counter()],
        lightning_module=SimpleNamespace(num_training_steps=total),
        progress_bar_metrics={"train/loss": 3.2141},
        callback_metrics={"val/loss": torch.tensor(3.91), "val/ppl": torch.tensor(49.9)},
        loggers=[],
        sanity_checking=False,
        state=state,
    )


def _batch():
    return {"input_ids": torch.ones(4, 32, dtype=torch.long)}


class _Clock:
    """time.perf_counter for the progress module: moves only when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _run(callback, trainer, steps: int, micro_batches: int = 2, clock=None, per_batch=0.05):
    callback.on_train_start(trainer, None)
    for _ in range(steps):
        for i in range(micro_batches):  # gradient accumulation: one step per 2 batches
            if clock is not None:
                clock.now += per_batch
            if i == micro_batches - 1:
                trainer.global_step += 1  # the optimizer step ends the last micro-batch
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


def test_plain_lines_print_the_last_step_once(monkeypatch, capsys):
    clock = _Clock()
    monkeypatch.setattr("lit_ft.observe.progress.time.perf_counter", clock)
    trainer, progress = _trainer(total=20), LineProgress(every_n_steps=10)
    _run(progress, trainer, steps=20, clock=clock)
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = out.splitlines()
    assert [line.split()[2] for line in lines] == ["10/20", "20/20"]
    # By hand: 10 steps x 2 micro-batches x 4 x 32 tokens = 2,560 tokens in 20 x 0.05 s = 1 s
    # -> 2,560 tok/s; x 1e6 FLOPs per token / 1e10 peak = MFU 0.256 -> 26%.
    assert lines[0].startswith("[lit_ft] step 10/20 loss 3.214 lr 1.90e-03 2,560 tok/s mfu 26% ")


def test_tokens_per_s_and_mfu_come_from_one_window(monkeypatch, capsys):
    """The two figures over the same tokens and seconds: MFU = tok/s x FLOPs/token / peak on
    every line, even when the speed changes between lines (here 4x slower after step 10)."""
    clock = _Clock()
    monkeypatch.setattr("lit_ft.observe.progress.time.perf_counter", clock)
    trainer, progress = _trainer(total=20, counter=_counter(2e6, 1e10)), LineProgress(10)
    progress.on_train_start(trainer, None)
    for step in range(20):
        for i in range(2):
            clock.now += 0.05 if step < 10 else 0.2
            trainer.global_step += i
            progress.on_train_batch_end(trainer, None, None, _batch(), 0)
    out = capsys.readouterr().out
    shown = re.findall(r" ([\d,]+) tok/s mfu (\d+)% ", out)
    # By hand: 2,560 tokens per 10 steps in 1 s then in 4 s: 2,560 and 640 tok/s;
    # x 2e6 / 1e10: 51% and 13%.
    assert shown == [("2,560", "51"), ("640", "13")], out


def test_a_log_file_line_always_holds_the_same_fields(monkeypatch, capsys):
    """Not fitted to a width (a file has none) and no field dropped: a figure not known yet
    (MFU before the FLOPs are counted) is "-" in its place, never 0 and never missing."""
    monkeypatch.setenv("COLUMNS", "40")  # a narrow terminal elsewhere changes nothing here
    clock = _Clock()
    monkeypatch.setattr("lit_ft.observe.progress.time.perf_counter", clock)
    counter = _counter(flops_per_token=None)
    trainer, progress = _trainer(total=30, counter=counter), LineProgress(every_n_steps=10)
    progress.on_train_start(trainer, None)
    for step in range(30):
        if step == 10:
            counter.flops_per_token = 1e6  # counted at last
        for i in range(2):
            clock.now += 0.05
            trainer.global_step += i
            progress.on_train_batch_end(trainer, None, None, _batch(), 0)
    lines = capsys.readouterr().out.splitlines()
    field = (
        r"\[lit_ft\] step (\d+)/30 loss (\S+) lr (\S+) (\S+) tok/s mfu (\S+) "
        r"(\S+[KMG]) (\d+:\d\d) ~(\d+:\d\d) left"
    )
    parsed = [re.fullmatch(field, line) for line in lines]
    assert all(parsed), lines
    assert [m.group(1) for m in parsed] == ["10", "20", "30"]
    assert [m.group(5) for m in parsed] == ["-", "26%", "26%"]
    assert any(len(line) > 40 for line in lines)  # nothing cut to the terminal's width


def test_fit_line_drops_the_expendable_parts_first():
    parts = [("prefix", "[lit_ft]"), ("step", "step 5/9"), ("bar", "[#····] 50%")]
    parts += [("lr", "lr 1.00e-03"), ("time", "0:01 ~0:01 left")]
    assert fit_line(parts, 80) == "[lit_ft] step 5/9 [#····] 50% lr 1.00e-03 0:01 ~0:01 left"
    assert fit_line(parts, 40) == "[lit_ft] step 5/9 0:01 ~0:01 left"
    assert len(fit_line(parts, 20)) == 20


def test_styles(monkeypatch):
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert type(progress_bar("auto")) is LiveProgress
    assert type(progress_bar("lines")) is LineProgress
    assert progress_bar("auto", enabled=False) is None
    assert not progress_problems({"style": "live"})
    (problem,) = progress_problems(SimpleNamespace(get=lambda k: "bars", style="bars"))
    assert "callbacks.progress.style='bars'" in problem and "live" in problem
