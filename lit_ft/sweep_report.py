"""Compare the jobs of a sweep: `python -m lit_ft.sweep_report outputs/multiruns/<date>`.

Prints one row per job (the overrides that differ between jobs -> the final metrics from its
results.json; a job without one is shown as failed), marks the best job on the sweep's
metric, and draws every job's validation and training loss into <sweep dir>/comparison.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit_ft.errors import EXIT_USER_ERROR, LitFtError
from lit_ft.plots import draw_series, new_figure, read_metrics


@dataclass
class Job:
    name: str
    path: Path
    overrides: dict[str, str]
    results: dict[str, Any] | None
    metrics: dict[str, float] = field(default_factory=dict)  # the "after" validation

    @property
    def failed(self) -> bool:
        return self.results is None

    def failure(self) -> str:
        """Why a job failed, from its run.log: the `lit_ft: error:` message (all of it: a
        config error lists its problems on the lines below), else the last exception line of a
        traceback, else that it wrote no results."""
        log = self.path / "run.log"
        lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
        marker = "lit_ft: error:"
        starts = [i for i, line in enumerate(lines) if marker in line]
        if starts:  # the message, with its indented lines (each problem of a config error)
            first = lines[starts[-1]]
            parts = [first[first.index(marker) + len(marker) :].strip()]
            for line in lines[starts[-1] + 1 :]:
                if not line.strip() or not line[0].isspace():
                    break  # the next log record
                parts.append(line.strip().removeprefix("- "))
            return parts[0] + (" " + "; ".join(parts[1:]) if parts[1:] else "")
        errors = [ln for ln in lines if ln and not ln[0].isspace() and "Error" in ln.split(":")[0]]
        return errors[-1] if errors else "no results.json (killed, or still running?)"


def load_jobs(sweep_dir: Path) -> list[Job]:
    """Every job directory of the sweep (those holding .hydra/overrides.yaml), in job order."""
    from omegaconf import OmegaConf

    jobs = []
    for overrides_file in sweep_dir.glob("*/.hydra/overrides.yaml"):
        path = overrides_file.parent.parent
        pairs = [str(o).split("=", 1) for o in OmegaConf.load(overrides_file)]
        results_file = path / "results.json"
        results = json.loads(results_file.read_text()) if results_file.is_file() else None
        after = (results or {}).get("metrics", {}).get("after") or {}
        jobs.append(Job(path.name, path, {p[0]: p[-1] for p in pairs}, results, after))
    # Hydra numbers jobs 0, 1, ..., 10: numeric order, not text order.
    return sorted(jobs, key=lambda j: (int(j.name) if j.name.isdigit() else 1 << 30, j.name))


def sweep_objective(sweep_dir: Path, jobs: list[Job]) -> tuple[str, bool]:
    """The metric the sweep optimized and whether higher is better."""
    from omegaconf import OmegaConf

    metric, maximize = "val/loss", False
    job_config = next((j.path / ".hydra" / "config.yaml" for j in jobs), None)
    if job_config and job_config.is_file():
        metric = OmegaConf.load(job_config).get("optimized_metric") or metric
    hydra_file = jobs[0].path / ".hydra" / "hydra.yaml" if jobs else None
    if hydra_file and hydra_file.is_file():
        direction = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.sweeper.direction")
        maximize = str(direction) == "maximize"
    return metric, maximize


def varying_keys(jobs: list[Job]) -> list[str]:
    """The override keys whose value differs between jobs: what the sweep varied."""
    keys = sorted({k for j in jobs for k in j.overrides})
    return [k for k in keys if len({j.overrides.get(k) for j in jobs}) > 1]


def table(jobs: list[Job], metric: str, maximize: bool) -> str:
    varying = varying_keys(jobs)
    fixed = {k: v for k, v in jobs[0].overrides.items() if k not in varying}
    metric_names = sorted({m for j in jobs for m in j.metrics})
    scored = [j for j in jobs if metric in j.metrics]
    best = (max if maximize else min)(scored, key=lambda j: j.metrics[metric]) if scored else None

    header = ["job", *varying, *metric_names, "train loss", "tokens/s", "time (s)"]
    rows = []
    for job in jobs:
        name = job.name + (" *" if job is best else "")
        row = [name, *(job.overrides.get(k, "") for k in varying)]
        if job.failed:
            rows.append([*row, "failed", *[""] * (len(header) - len(row) - 1)])
            continue
        train = job.results["metrics"].get("train") or {}
        row += [f"{job.metrics[m]:.4f}" if m in job.metrics else "" for m in metric_names]
        row += [
            _num(train.get("loss_last_10_steps"), ".4f"),
            _num(job.results.get("tokens_per_s"), ",.0f"),
            _num(job.results.get("wall_time_s"), ".1f"),
        ]
        rows.append(row)

    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = []
    if fixed:
        lines.append("same in every job: " + " ".join(f"{k}={v}" for k, v in fixed.items()))
    for row in [header, ["-" * w for w in widths], *rows]:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if best:
        lines.append(f"* best {metric} ({'max' if maximize else 'min'}): job {best.name}")
    lines += [f"job {job.name} failed: {job.failure()}" for job in jobs if job.failed]
    return "\n".join(lines)


def _num(value, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, int | float) else ""


def plot_comparison(jobs: list[Job], out: Path, varying: list[str]) -> Path | None:
    curves = [(j, read_metrics(j.path)) for j in jobs]
    curves = [(j, s) for j, s in curves if s]
    if not curves:
        return None
    figure, (val_ax, train_ax) = new_figure(rows=2)
    for job, series in curves:
        label = f"{job.name}: " + " ".join(f"{k}={job.overrides.get(k)}" for k in varying)
        if "val/loss" in series:
            draw_series(val_ax, series["val/loss"], label, marker="o")
        if "train/loss" in series:
            few = len(series["train/loss"]) < 20  # a short job's few points: mark them
            draw_series(
                train_ax, series["train/loss"], label, alpha=0.8, marker="o" if few else None
            )
    for ax, title in ((val_ax, "validation loss"), (train_ax, "training loss")):
        ax.set(xlabel="optimizer step", ylabel="loss", title=title)
        ax.grid(alpha=0.3)
    val_ax.legend(fontsize="small")
    figure.savefig(out, dpi=110)
    return out


def report(sweep_dir: str | Path) -> tuple[str, Path | None]:
    """The table (text) and the comparison plot of a sweep directory."""
    sweep_dir = Path(sweep_dir)
    jobs = load_jobs(sweep_dir)
    if not jobs:
        raise LitFtError(
            f"'{sweep_dir}' holds no sweep jobs (no */.hydra/overrides.yaml); give the directory "
            "a multirun printed, e.g. outputs/multiruns/<date>_<time>"
        )
    metric, maximize = sweep_objective(sweep_dir, jobs)
    plot = plot_comparison(jobs, sweep_dir / "comparison.png", varying_keys(jobs))
    return table(jobs, metric, maximize), plot


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lit_ft.sweep_report",
        description="Table and comparison plot of the jobs of a lit_ft multirun.",
    )
    parser.add_argument("sweep_dir", help="the multirun directory, e.g. outputs/multiruns/<date>")
    args = parser.parse_args(argv)
    try:
        text, plot = report(args.sweep_dir)
    except LitFtError as err:
        print(f"lit_ft: error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    print(text)
    if plot:
        print(f"comparison plot: {plot}")


if __name__ == "__main__":
    main()
