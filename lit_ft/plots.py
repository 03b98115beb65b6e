"""PNG plots of a run, drawn from the run's own CSV logs: `python -m lit_ft.plots <run_dir>`.

In Python (a notebook), `loss_figure(run_dir)`, `learning_rate_figure(run_dir)` and
`metrics_figure(run_dir)` return the same plots as matplotlib figures, which a notebook
shows inline when a cell ends with one (no pyplot, no PNG read back).

Reading the logs (not in-memory state) means the same code draws a finished run, a resumed
one, or one still in progress. A resumed run logs into logs/version_1, version_2, ...; the
versions are joined by step, and where two versions logged the same metric at the same step
the newer one wins (it is the run that went on from there).
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from functools import cache
from pathlib import Path

from lit_ft.errors import EXIT_USER_ERROR, LitFtError

# metric name -> {step: value}
Series = dict[str, dict[int, float]]

_NOT_METRICS = {"step", "epoch"}


def metric_files(run_dir: str | Path) -> list[Path]:
    """<run_dir>/logs/version_N/metrics.csv, oldest version first (version_10 after version_9)."""

    def version(path: Path) -> int:
        match = re.fullmatch(r"version_(\d+)", path.parent.name)
        return int(match.group(1)) if match else -1

    return sorted(Path(run_dir).glob("logs/*/metrics.csv"), key=version)


def read_metrics(run_dir: str | Path) -> Series:
    """Every numeric metric of the run by step, all log versions joined (newer wins)."""
    series: Series = {}
    for path in metric_files(run_dir):
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                if not row.get("step"):
                    continue
                step = int(float(row["step"]))
                for name, value in row.items():
                    if name in _NOT_METRICS or value in (None, ""):
                        continue
                    try:
                        series.setdefault(name, {})[step] = float(value)
                    except ValueError:
                        continue  # a text column: nothing to plot
    return series


def _lr_names(series: Series) -> list[str]:
    # LearningRateMonitor logs `lr-AdamW` (or `lr-AdamW/pg1`, ... per parameter group).
    return sorted(name for name in series if name.startswith("lr-"))


def _distinct(series: Series, names: list[str]) -> list[str]:
    """Drop curves identical to an earlier one (e.g. the decay and no-decay groups' lr)."""
    kept: list[str] = []
    for name in names:
        if all(series[name] != series[other] for other in kept):
            kept.append(name)
    return kept


def new_figure(rows: int = 1):
    # The object API with the Agg canvas: no pyplot, so no global backend is touched and
    # nothing needs a display (servers, CI, notebooks alike).
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = _figure_class()(figsize=(7, 3.2 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, [figure.add_subplot(rows, 1, i + 1) for i in range(rows)]


@cache
def _figure_class():
    from matplotlib.figure import Figure

    class RunFigure(Figure):
        """A Figure a notebook displays inline by itself: IPython asks objects for
        `_repr_png_`, whatever matplotlib backend the kernel has (none is set up when
        pyplot was never imported)."""

        def _repr_png_(self) -> bytes:
            from io import BytesIO

            buffer = BytesIO()
            self.savefig(buffer, format="png", dpi=100)
            return buffer.getvalue()

    return RunFigure


def draw_series(ax, points: dict[int, float], label: str, **style) -> None:
    steps = sorted(points)
    ax.plot(steps, [points[s] for s in steps], label=label, **style)


def _series(run) -> Series:
    """A run directory (str or Path) read into its series, or series already read."""
    return read_metrics(run) if isinstance(run, (str, Path)) else run


def loss_figure(run):
    """Training and validation loss by optimizer step (None: the run logged no loss).
    `run`: a run directory, or `read_metrics`' series."""
    series = _series(run)
    names = [n for n in ("train/loss", "val/loss") if n in series]
    if not names:
        return None
    figure, (ax,) = new_figure()
    for name in names:
        style = {"marker": "o"} if name.startswith("val/") else {"alpha": 0.8}
        draw_series(ax, series[name], name, **style)
    ax.set(xlabel="optimizer step", ylabel="loss (nats per token)", title="Loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return figure


def learning_rate_figure(run):
    """The learning rate by optimizer step, one curve per distinct parameter group."""
    series = _series(run)
    names = _distinct(series, _lr_names(series))
    if not names:
        return None
    figure, (ax,) = new_figure()
    for name in names:
        label = name if len(names) > 1 else name.split("/")[0]  # one curve: no group suffix
        draw_series(ax, series[name], label)
    ax.set(xlabel="optimizer step", ylabel="learning rate", title="Learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax.grid(alpha=0.3)
    ax.legend()
    return figure


# y-axis labels of the metrics lit_ft logs (by the name's last part)
_UNITS = {
    "ppl": "perplexity",
    "accuracy": "accuracy (share correct)",
    "f1": "F1",
    "precision": "precision",
    "recall": "recall",
    "tokens_per_s": "tokens / s",
    "samples_per_s": "samples / s",
    "flops_per_s": "FLOP / s",
    "mfu": "MFU (share of peak)",
}


def metrics_figure(run):
    """One panel per remaining metric: what the task measures (val/ppl, accuracy, F1, ROUGE)
    first, then throughput; points marked, so a short run's few values are visible."""
    series = _series(run)
    skip = {"train/loss", "val/loss", *_lr_names(series)}
    names = sorted(
        (n for n in series if n not in skip), key=lambda n: (not n.startswith("val/"), n)
    )
    if not names:
        return None
    figure, axes = new_figure(rows=len(names))
    for ax, name in zip(axes, names, strict=True):
        draw_series(ax, series[name], name, marker="o" if len(series[name]) < 50 else None)
        unit = _UNITS.get(name.rsplit("/", 1)[-1], name.rsplit("/", 1)[-1])
        ax.set(xlabel="optimizer step", ylabel=unit, title=name)
        ax.grid(alpha=0.3)
    return figure


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write <run_dir>/plots/{loss,learning_rate,metrics}.png; return the files written."""
    run_dir = Path(run_dir)
    series = read_metrics(run_dir)
    if not series:
        return []
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    for draw, name in (
        (loss_figure, "loss.png"),
        (learning_rate_figure, "learning_rate.png"),
        (metrics_figure, "metrics.png"),
    ):
        figure = draw(series)
        if figure is not None:
            figure.savefig(out_dir / name, dpi=110)
            written.append(out_dir / name)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lit_ft.plots",
        description="Redraw the PNG plots of a run directory from its logs/*/metrics.csv.",
    )
    parser.add_argument("run_dir", help="a run directory (holds logs/version_N/metrics.csv)")
    args = parser.parse_args(argv)
    try:
        if not metric_files(args.run_dir):
            raise LitFtError(
                f"'{args.run_dir}' has no logs/version_N/metrics.csv: is it a run directory "
                "of a run with logger=csv (the default)?"
            )
        written = plot_run(args.run_dir)
    except LitFtError as err:
        print(f"lit_ft: error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
