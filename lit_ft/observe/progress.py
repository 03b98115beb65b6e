"""Training progress on the console: one step line, live on a terminal and in a notebook,
plain elsewhere.

A live line redraws itself; in a log file, CI output or a SLURM .out file that becomes
thousands of carriage-return fragments. So `progress_bar(style="auto")` redraws the step line
in place when stdout is a terminal (LiveProgress) and otherwise prints it every
`every_n_steps` optimizer steps (LineProgress). Both show the same text: the optimizer step of
the run's total, the training loss, the learning rate, one tokens/s, MFU in % and the time
left for the whole run. tokens/s and MFU are one computation over one window (the same
tokens, the same seconds; lit_ft.observe.throughput.rates). In a log file every line holds
the same fields in the same order, so a log can be read by column; only the live terminal
line drops fields to fit its width.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Any

import torch
from lightning.pytorch.callbacks import ProgressBar

from lit_ft.observe.memory import peak_bytes, short
from lit_ft.observe.throughput import ThroughputLogger, rates
from lit_ft.observe.tokens import real_tokens
from lit_ft.problems import Problems

STYLES = ("auto", "live", "lines", "tqdm")


class _Speed:
    """tokens/s and MFU over the last window of training batches.

    The token count stays a device tensor and is read at most once per `window_s` seconds, so
    the bar adds no per-step host sync on a GPU. MFU comes from the same tokens over the same
    seconds, with the throughput logger's FLOPs per token and peak FLOP/s.
    """

    def __init__(self, window_s: float = 1.0) -> None:
        self.window_s = window_s
        self.rates: dict[str, float] = {}
        self._tokens: torch.Tensor | int = 0
        self._since = time.perf_counter()

    def restart(self) -> None:  # after validation: its time is not training time
        self._tokens, self._since = 0, time.perf_counter()

    def add(self, batch: Any) -> None:
        if isinstance(batch, dict) and "input_ids" in batch:
            self._tokens = self._tokens + real_tokens(batch)

    def read(self, flops_per_token: float | None, peak: float | None) -> dict[str, float]:
        elapsed = time.perf_counter() - self._since
        if elapsed >= self.window_s and elapsed > 0:
            self.rates = rates(int(self._tokens), 0, elapsed, flops_per_token, peak)
            self.restart()
        return self.rates


def _learning_rate(trainer) -> float | None:
    optimizers = trainer.optimizers
    return optimizers[0].param_groups[0]["lr"] if optimizers else None


def _extra_metrics(trainer, speed: _Speed) -> dict[str, str]:
    """lr, tok/s and MFU as shown; "-" for a figure that cannot be computed (never a 0)."""
    lr = _learning_rate(trainer)
    counter = next((cb for cb in trainer.callbacks if isinstance(cb, ThroughputLogger)), None)
    flops, peak = (counter.flops_per_token, counter.peak) if counter else (None, None)
    found = speed.read(flops, peak)
    rate, mfu = found.get("tokens_per_s"), found.get("mfu")
    return {
        "lr": f"{lr:.2e}" if lr is not None else "-",
        "tok/s": f"{rate:,.0f}" if rate is not None else "-",
        "mfu": _percent(mfu) if mfu is not None else "-",
    }


def _percent(share: float) -> str:
    # two significant digits below 10%, so a small MFU never reads as 0%: 0.0041 -> 0.41%
    pct = 100 * share
    return f"{pct:.0f}%" if pct >= 10 else f"{pct:.2g}%"


class LineProgress(ProgressBar):
    """One line per `every_n_steps` optimizer steps and one per validation, every step line
    with the same fields in the same order (a log file can be read by column):

    [lit_ft] step 20/180 loss 3.214 lr 1.90e-03 5,120 tok/s mfu 38% 1.2G 0:12 ~1:36 left

    The step is the optimizer steps done out of the run's total (the count the schedule uses;
    after the first optimizer step it is step 1, as in metrics.csv), 1.2G the peak memory so
    far (lit_ft/observe/memory.py), and ~1:36 the time left for the whole run, not the epoch.
    tok/s and MFU are over the steps since the previous line; a figure that cannot be computed
    yet (MFU before the FLOPs are counted) shows as "-".
    """

    def __init__(self, every_n_steps: int = 10) -> None:
        super().__init__()
        self.every_n_steps = max(1, every_n_steps)
        self._enabled = True
        self._speed = _Speed(window_s=0.0)  # read once per printed line
        self._started = time.perf_counter()
        self._first_step = 0
        self._printed_step = -1

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        self._started = time.perf_counter()
        self._first_step = trainer.global_step  # a resumed run starts mid-way
        self._speed.restart()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._speed.add(batch)
        step = trainer.global_step
        # With gradient accumulation the first micro-batches end before any optimizer step
        # (or the resumed one): no line for a step this run has not taken.
        done = step == self._first_step or step == self._printed_step
        # The last step at once, before Lightning's "`Trainer.fit` stopped" line.
        last = step == self._total_steps(trainer)
        if not self._enabled or done or (step % self.every_n_steps and not last):
            return
        self._print_step_line(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        # The last step as a line of its own when the cadence did not land on it (90 steps
        # every 10 do; 95 do not): the run's final position is always on screen, once.
        if self._enabled and trainer.global_step not in (self._printed_step, self._first_step):
            self._print_step_line(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not self._enabled or trainer.sanity_checking:
            return
        shown = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        fitting = trainer.state.fn == "fit"  # not the evaluations before and after training
        where = f"step {trainer.global_step}" if fitting else "evaluation"
        self.print(f"[lit_ft] validation ({where}): {_format(shown)}")
        self._speed.restart()

    def print(self, *args: Any, **kwargs: Any) -> None:
        print(*args, **kwargs, flush=True)

    # -- text ------------------------------------------------------------------------------
    def _print_step_line(self, trainer, pl_module) -> None:
        self._printed_step = trainer.global_step
        self.print(self._fit(self._step_parts(trainer, pl_module)))

    def _fit(self, parts: list[tuple[str, str]]) -> str:
        # A log file has no width: every field stays, so each line has the same columns.
        return " ".join(text for _, text in parts)

    def _step_parts(self, trainer, pl_module, speed=None) -> list[tuple[str, str]]:
        """The step line as (name, text) parts, in the order shown; `speed`: the window its
        tok/s and MFU come from (the printed lines': the steps since the previous one)."""
        shown = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        shown = {k.removeprefix("train/"): v for k, v in shown.items() if not k.startswith("val/")}
        extra = _extra_metrics(trainer, speed or self._speed)
        parts = [("prefix", "[lit_ft]"), ("step", f"step {self._step_text(trainer)}")]
        parts += [("loss", _format(shown) if shown else "loss -")]
        parts += [("lr", f"lr {extra['lr']}"), ("tok/s", f"{extra['tok/s']} tok/s")]
        parts += [("mfu", f"mfu {extra['mfu']}")]
        parts += [("memory", short(peak_bytes()))]  # the peak so far (lit_ft/observe/memory.py)
        return [*parts, ("time", self._time_text(trainer))]

    def _total_steps(self, trainer) -> int | None:
        # The run's one step count (training/optim.py), as the module holds it.
        return getattr(trainer.lightning_module, "num_training_steps", None)

    def _step_text(self, trainer) -> str:
        total = self._total_steps(trainer)
        of = f"/{total}" if total else ""
        return f"{trainer.global_step}{of}"

    def _time_text(self, trainer) -> str:
        elapsed = time.perf_counter() - self._started
        total, done = self._total_steps(trainer), trainer.global_step - self._first_step
        text = _clock(elapsed)
        if total and done > 0:
            # remaining steps x seconds per step so far, e.g. 160 x 0.6 s = 1:36
            text += f" ~{_clock((total - trainer.global_step) * elapsed / done)} left"
        return text


# Dropped first when the live line is wider than the terminal, most expendable first.
_EXPENDABLE = ("bar", "memory", "mfu", "lr", "tok/s", "loss")
_CLEAR_LINE = "\r\x1b[K"  # back to column 0, erase to the end of the line


class LiveProgress(LineProgress):
    """On a terminal: LineProgress's step line redrawn in place at each optimizer step.

    The `every_n_steps` lines and the validation lines stay as permanent lines above it, so
    the scroll-back is the same as in a log file. Each line is fitted to the terminal's width
    (`shutil.get_terminal_size`) minus one column, because a character in the last column
    makes some terminals wrap, and a wrapped line is not erased by a carriage return:

    [lit_ft] step 20/180 [##·······] 11% loss 3.214 lr 1.90e-03 5,120 tok/s 0:12 ~1:36 left

    Parts that do not fit are dropped (the bar, then MFU, lr, tok/s, the loss); the step and
    the time left stay.
    """

    # A redraw reads the loss (a host sync on a GPU): at most ten a second however short the
    # steps are; the eye does not follow faster.
    min_redraw_s = 0.1

    def __init__(self, every_n_steps: int = 10) -> None:
        super().__init__(every_n_steps=every_n_steps)
        # The redrawn line reads its own one-second window at every redraw; the permanent
        # lines keep theirs (the steps since the previous line), as in a log file.
        self._live_speed = _Speed(window_s=1.0)
        self._live = False
        self._drawn_step = -1
        self._drawn_at = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._live_speed.restart()

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        self._live_speed.restart()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._live_speed.add(batch)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        step, now = trainer.global_step, time.perf_counter()
        if not self._enabled or step in (self._first_step, self._printed_step, self._drawn_step):
            return
        if now - self._drawn_at < self.min_redraw_s:
            return
        self._drawn_step, self._drawn_at = step, now
        self._redraw(fit_line(self._live_parts(trainer, pl_module), self._columns()))
        self._live = True

    def _fit(self, parts: list[tuple[str, str]]) -> str:
        # The permanent step lines fit the terminal too: a narrow one does not split them.
        return fit_line(parts, self._columns())

    def _columns(self) -> int:
        return _width()

    def _redraw(self, line: str) -> None:
        self._write(_CLEAR_LINE + line)

    def _erase(self) -> None:
        self._write(_CLEAR_LINE)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._clear()  # validation's own output (samples) starts on a clean line

    def on_train_end(self, trainer, pl_module) -> None:
        self._clear()
        super().on_train_end(trainer, pl_module)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._clear()  # the traceback or error line starts at column 0

    def print(self, *args: Any, **kwargs: Any) -> None:
        self._clear()
        super().print(*args, **kwargs)

    def _live_parts(self, trainer, pl_module) -> list[tuple[str, str]]:
        # The live line is read by eye, not by column: a figure not known yet takes no room.
        parts = self._step_parts(trainer, pl_module, self._live_speed)
        parts = [p for p in parts if "-" not in p[1].split()]
        total = self._total_steps(trainer)
        if total:
            # e.g. 20/180 = 11%, on a 10-cell bar: 1 cell filled
            done = min(1.0, trainer.global_step / total)
            filled = int(done * _BAR_CELLS)
            bar = f"[{'#' * filled}{'·' * (_BAR_CELLS - filled)}] {done:.0%}"
            parts.insert(2, ("bar", bar))
        return parts

    def _clear(self) -> None:
        if self._live:
            self._erase()
            self._live = False

    def _write(self, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()


class NotebookProgress(LiveProgress):
    """In Jupyter: the same live line, redrawn in the cell's output. Jupyter's output area
    overwrites a line after a carriage return but knows no terminal codes (the erase-line
    code would show as text), so a shorter line is padded with spaces over a longer one;
    and a notebook has no terminal size, so lines are fitted to 110 columns."""

    columns = 110

    def __init__(self, every_n_steps: int = 10) -> None:
        super().__init__(every_n_steps=every_n_steps)
        self._drawn_length = 0

    def _columns(self) -> int:
        return self.columns

    def _redraw(self, line: str) -> None:
        self._write("\r" + line + " " * max(0, self._drawn_length - len(line)))
        self._drawn_length = len(line)

    def _erase(self) -> None:
        self._write("\r" + " " * self._drawn_length + "\r")
        self._drawn_length = 0


def in_notebook() -> bool:
    """Running in a Jupyter kernel (IPython's ZMQ shell); IPython is not imported for this."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return type(shell).__name__ == "ZMQInteractiveShell"


_BAR_CELLS = 10


def _width() -> int:
    # One column short of the terminal: a character in the last column wraps on some terminals.
    return shutil.get_terminal_size((80, 24)).columns - 1


def fit_line(parts: list[tuple[str, str]], width: int) -> str:
    """`parts` joined by spaces within `width` characters: expendable parts dropped, then cut.

    >>> fit_line([("step", "step 5/9"), ("lr", "lr 1e-3"), ("time", "0:01")], 13)
    'step 5/9 0:01'
    """
    kept = list(parts)
    for name in _EXPENDABLE:
        if len(" ".join(text for _, text in kept)) <= width:
            break
        kept = [(n, text) for n, text in kept if n != name]
    line = " ".join(text for _, text in kept)
    return line if len(line) <= width else line[: max(0, width - 1)] + "…"


def _format(metrics: dict[str, Any]) -> str:
    parts = []
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor):
            value = value.item()
        parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return " ".join(parts)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_bar(
    style: str = "auto", every_n_steps: int = 10, enabled: bool = True
) -> ProgressBar | None:
    """The progress callback for `style`; None when the Trainer's progress bar is switched off.

    auto: live on a terminal and in a Jupyter notebook, lines otherwise; tqdm: Lightning's
    own bar (per epoch).
    """
    if not enabled:
        return None
    notebook = in_notebook()
    if style == "auto":
        style = "live" if sys.stdout.isatty() or notebook else "lines"
    if style == "live":
        live = NotebookProgress if notebook else LiveProgress
        return live(every_n_steps=every_n_steps)
    if style == "lines":
        return LineProgress(every_n_steps=every_n_steps)
    if style == "tqdm":
        from lightning.pytorch.callbacks import TQDMProgressBar

        return TQDMProgressBar()
    from lit_ft.errors import LitFtError

    raise LitFtError(
        f"callbacks.progress.style='{style}' is unknown; use one of {', '.join(STYLES)}"
    )


def progress_problems(progress) -> Problems:
    problems = Problems()
    if progress and progress.get("style") not in STYLES:
        problems.append(
            f"callbacks.progress.style='{progress.style}' is unknown; "
            f"use one of {', '.join(STYLES)}"
        )
    return problems
