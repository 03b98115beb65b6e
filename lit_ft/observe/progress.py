"""Training progress on the console: a rich bar on a terminal, plain lines everywhere else.

A live bar redraws the same line; in a log file, CI output or a SLURM .out file that becomes
thousands of carriage-return fragments. So `progress_bar(style="auto")` picks rich when
stdout is a terminal and otherwise one printed line every `every_n_steps` optimizer steps.
Both show the training loss, the learning rate and tokens/s.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

from lit_ft.config.problems import Problems
from lit_ft.observe.memory import peak_bytes, short
from lit_ft.observe.tokens import real_tokens

STYLES = ("auto", "rich", "lines", "tqdm")


class _Speed:
    """Tokens/s over the last window of training batches.

    The token count stays a device tensor and is read at most once per `window_s` seconds, so
    the bar adds no per-step host sync on a GPU.
    """

    def __init__(self, window_s: float = 1.0) -> None:
        self.window_s = window_s
        self.tokens_per_s: float | None = None
        self._tokens: torch.Tensor | int = 0
        self._since = time.perf_counter()

    def restart(self) -> None:  # after validation: its time is not training time
        self._tokens, self._since = 0, time.perf_counter()

    def add(self, batch: Any) -> None:
        if isinstance(batch, dict) and "input_ids" in batch:
            self._tokens = self._tokens + real_tokens(batch)

    def read(self) -> float | None:
        elapsed = time.perf_counter() - self._since
        if elapsed >= self.window_s:
            self.tokens_per_s = float(self._tokens) / elapsed
            self.restart()
        return self.tokens_per_s


def _learning_rate(trainer) -> float | None:
    optimizers = trainer.optimizers
    return optimizers[0].param_groups[0]["lr"] if optimizers else None


def _extra_metrics(trainer, speed: _Speed) -> dict[str, str]:
    extra = {}
    lr = _learning_rate(trainer)
    if lr is not None:
        extra["lr"] = f"{lr:.2e}"
    rate = speed.read()
    if rate is not None:
        extra["tok/s"] = f"{rate:,.0f}"
    # MFU from the throughput logger's last window, as a percentage (one tokens/s shown: ours)
    mfu = next((cb.last.get("mfu") for cb in trainer.callbacks if hasattr(cb, "last")), None)
    if mfu is not None:
        extra["mfu"] = f"{100 * mfu:.1f}%"
    return extra


class RichBar(RichProgressBar):
    """Lightning's rich bar, with the learning rate and tokens/s next to the logged metrics."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._speed = _Speed()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._speed.add(batch)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        self._speed.restart()

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the log version number means nothing mid-run
        return {**metrics, **_extra_metrics(trainer, self._speed)}


class LineProgress(ProgressBar):
    """One line per `every_n_steps` optimizer steps and one per validation, within 80 columns:

    [lit_ft] step 20/180 loss 3.214 lr 1.90e-03 5,120 tok/s mfu 38% 1.2G 0:12 ~1:36

    The step is the optimizer step out of the run's total (the count the schedule uses), 1.2G
    the peak memory so far (lit_ft/observe/memory.py), and ~1:36 the time left for the whole
    run, not the epoch.
    """

    def __init__(self, every_n_steps: int = 10) -> None:
        super().__init__()
        self.every_n_steps = max(1, every_n_steps)
        self._enabled = True
        self._speed = _Speed(window_s=0.0)  # read once per printed line
        self._started = time.perf_counter()
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
        if not self._enabled or step == self._printed_step or step % self.every_n_steps:
            return
        self._printed_step = step
        shown = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        shown = {k.removeprefix("train/"): v for k, v in shown.items() if not k.startswith("val/")}
        extra = _extra_metrics(trainer, self._speed)
        parts = [f"step {self._step_text(trainer)}", _format(shown)]
        parts += [f"lr {extra['lr']}"] if "lr" in extra else []
        parts += [f"{extra['tok/s']} tok/s"] if "tok/s" in extra else []
        parts += [f"mfu {extra['mfu'].split('.')[0]}%"] if "mfu" in extra else []
        parts += [short(peak_bytes())]
        self.print(" ".join(["[lit_ft]", *filter(None, parts), self._time_text(trainer)]))

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
    def _total_steps(self, trainer) -> int | None:
        # The run's one step count (lit_ft.steps.count_optimizer_steps), as the module holds it.
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
            text += f" ~{_clock((total - trainer.global_step) * elapsed / done)}"
        return text


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

    auto: rich on a terminal, lines otherwise; tqdm: Lightning's default bar.
    """
    if not enabled:
        return None
    if style == "auto":
        style = "rich" if sys.stdout.isatty() else "lines"
    if style == "rich":
        return RichBar()
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
