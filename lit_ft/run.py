"""Fine-tune a Hugging Face model: `python -m lit_ft.run [overrides]`.

The story of `train(cfg)`: check the config -> claim the run directory -> check the sources
and what to resume from -> callbacks, loggers, precision -> the Trainer -> seed and prepare
the data -> count the steps -> the model and its LightningModule -> evaluate the starting
model -> fit -> evaluate what training hands on -> test and predict -> export -> results.json.
Each step is a function of the package that owns it, named in story order by `lit_ft.steps`,
the one module that loads the heavy stack; this module stays light, so `--help` and config
errors come back before torch is imported.
`train(cfg)` is what notebooks call (`lit_ft.train_from_overrides`); `main()` only adds
Hydra's command line and returns the metric a sweep optimizes.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.errors import CompactHydraException, InstantiationException
from omegaconf import DictConfig

from lit_ft.config import compose, config_dir, to_plain
from lit_ft.errors import EXIT_USER_ERROR, LitFtError
from lit_ft.validate import validate_config


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one fine-tuning job described by a composed config; return what results.json holds."""
    return run_job(cfg).results


@dataclass
class Job:
    """A finished run: what results.json holds, and the objects that made it (for
    lit_ft.FineTuner's evaluate, predict and save_model after training)."""

    results: dict[str, Any]
    trainer: Any = None
    module: Any = None
    data: Any = None  # lit_ft/data/prepare.py PreparedData: tokenizer, task, datamodule
    best: str | None = None  # the checkpoint the handed-on weights come from (None: the end)


def run_job(cfg: DictConfig, given=None) -> Job:
    """`train(cfg)`'s steps, with objects `given` (lit_ft.steps.Given: datasets, a model, a
    tokenizer, callbacks, compute_metrics) in place of what the config would load."""
    from lit_ft import steps  # the one lazy import: the heavy stack, once a run really starts
    from lit_ft.distributed import is_global_zero
    from lit_ft.run_lock import hold_run_dir

    started = time.perf_counter()
    validate_config(cfg)  # every problem at once, before any long work
    leader = is_global_zero()  # under DDP, only rank 0 writes files and prints
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with hold_run_dir(output_dir, leader):  # a second live run on this directory is refused
        steps.write_config(cfg, output_dir, leader)
        run = _set_up(cfg, given or steps.Given(), output_dir, started)
        trainer, module, dm, resume = run.trainer, run.module, run.data.datamodule, run.resume

        before = steps.evaluate_start(trainer, module, dm, resume, cfg.evaluate_before)
        trainer.fit(module, datamodule=dm, ckpt_path=resume.path if resume else None)
        after, best = steps.evaluate_final(trainer, module, dm)
        metrics = {"before": before, "after": after, "test": steps.test(trainer, module, dm)}
        predictions = (
            steps.write_predictions(trainer, module, dm, output_dir) if cfg.predict else None
        )
        job = Job(
            {"metrics": metrics, "output_dir": str(output_dir)}, trainer, module, run.data, best
        )
        if trainer.is_global_zero:
            job.results = _hand_on(cfg, run, metrics, best, predictions, output_dir, started)
        return job


@dataclass
class _SetUp:
    """What `_set_up` made for the fit: the Trainer, the data, the LightningModule."""

    trainer: Any
    data: Any  # PreparedData
    module: Any
    resume: Any  # the checkpoint to resume from (None: a fresh start)
    recorder: Any  # the run's timings and throughput (lit_ft/observe)
    estimate: Any  # the memory plan printed before training


def _set_up(cfg: DictConfig, given, output_dir: Path, started: float) -> _SetUp:
    """Sources and resume point checked -> callbacks, precision, the Trainer -> seed -> data ->
    steps counted -> the model in its LightningModule -> the plan printed."""
    from lit_ft import steps
    from lit_ft.model.build import ModelSpec
    from lit_ft.observe.loggers import log_config
    from lit_ft.training.module import FineTuneModule

    spec = ModelSpec(task=cfg.task.name, **to_plain(cfg.model))
    steps.check_run_sources(cfg, spec, given)
    resume = steps.resolve_resume(cfg.ckpt_path, cfg.paths.checkpoint_dir)  # read once
    lora = hydra.utils.instantiate(cfg.peft) if cfg.get("peft") else None  # peft=lora
    callbacks, recorder = steps.run_callbacks(
        [*_instantiate_all(cfg.callbacks), *given.callbacks],
        cfg.paths.checkpoint_dir,
        lora,
        started,
        output_dir=str(output_dir),
    )
    precision = steps.choose_precision(cfg.trainer)
    # The Trainer before the data: a setting this machine cannot run fails in seconds.
    trainer = _make_trainer(cfg, callbacks, precision)
    log_config(trainer.loggers, to_plain(cfg))
    steps.keep_global_batch_on_resume(cfg, resume, trainer)  # on other hardware
    steps.seed_everything(cfg.seed, workers=True)
    data = steps.prepare_data(cfg, spec, given)
    steps.check_resume_fits(resume, data, spec, cfg.force_resume)  # before any model
    num_steps = steps.count_optimizer_steps(cfg, data.datamodule, trainer.world_size, resume)
    network = steps.build_network(
        spec, data, lora, to_plain(cfg.compile), cfg.data.batch_size, trainer.strategy,
        given_model=given.model,
    )  # fmt: skip
    module = FineTuneModule(
        spec,
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        scheduler=hydra.utils.instantiate(cfg.scheduler) if cfg.scheduler else None,
        num_training_steps=num_steps,
        task=data.task,
        model=network,
        targets_per_batch=cfg.data.batch_size * data.task.max_length,  # a loss scale
        sources=getattr(data.datamodule, "source_labels", None),  # data=mixture
    )
    metric_fn = given.compute_metrics or cfg.task.get("compute_metrics")  # fn or module:fn
    steps.use_compute_metrics(module, metric_fn, given.preprocess_logits_for_metrics)
    world = trainer.world_size
    estimate = steps.plan_memory(cfg, data.task, module.model, world, precision.text)
    steps.print_plan(cfg, data, module, num_steps, world, estimate)
    steps.show_training_example(data.task, data.datamodule.datasets["train"], output_dir)
    return _SetUp(trainer, data, module, resume, recorder, estimate)


def _hand_on(cfg, run: _SetUp, metrics, best, predictions, output_dir: Path, started) -> dict:
    """Rank zero's end: the export, the Hub upload, lm_eval, results.json; returns results."""
    from lit_ft import steps

    trainer, data = run.trainer, run.data
    exported = steps.export_run(
        cfg, trainer, run.module.model, data.tokenizer, output_dir, best, data.processor
    )
    paths = {"best": best, "last": steps.last_checkpoint(trainer), **exported}
    paths |= {"predictions": predictions, "output_dir": output_dir}
    paths["resumed_from"] = run.resume.path if run.resume else None
    results = steps.results(
        data.task, metrics, trainer, run.recorder, data.seconds, started, paths, run.estimate
    )
    results["lm_eval"] = steps.lm_eval_at_end(cfg, results.get("export_dir"))
    if cfg.get("given"):  # what came as objects: kind, rows, fingerprint
        results["given"] = to_plain(cfg.given)
    steps.write_results(results, data.task)
    return results


def train_from_overrides(overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """`train(compose(overrides))`: the CLI's run from Python, e.g. in a notebook."""
    return train(compose(overrides))


def build_task_and_data(cfg: DictConfig, tokenizer, hf_config):
    """The task and datamodule of `cfg` (lit_ft/data/prepare.py); the benchmarks build data here."""
    from lit_ft import steps

    return steps.build_task_and_data(cfg, tokenizer, hf_config)


# -- instantiating config groups: only the entry point does it ------------------------------
def _instantiate_all(group: DictConfig | None) -> list:
    """Instantiate every entry of a group like `callbacks` or `logger` (a name -> config map).

    A factory may return None for "not in this run" (e.g. the progress bar when it is off).
    """
    if not group:
        return []
    made = [hydra.utils.instantiate(node) for node in group.values() if node and "_target_" in node]
    return [obj for obj in made if obj is not None]


def _make_trainer(cfg: DictConfig, callbacks: list, precision):
    try:
        return hydra.utils.instantiate(
            cfg.trainer,
            precision=precision.flag,
            callbacks=callbacks,
            logger=_instantiate_all(cfg.logger) or False,
            plugins=precision.plugins,
        )
    except InstantiationException as err:  # e.g. more devices than this machine has
        raise LitFtError(f"trainer: {err.__cause__ or err}") from err


# -- command line ----------------------------------------------------------------------------
class SweepJobFailed(CompactHydraException):
    """A job of a sweeper that needs a failure raised (Optuna: it counts failures against
    max_failure_rate) stopped by a LitFtError, already printed: Hydra prints this line at the
    sweep's end instead of a traceback, and exits 1."""


# Jobs of a grid sweep run in this process (Hydra's basic sweeper and launcher) stopped by a
# LitFtError: the sweep goes on, and `main` reports them in one line once it has ended (exit 2).
# A job launched elsewhere (SLURM) must raise: only its failure status reaches the sweep.
_failed_jobs: list[str] = []
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


@contextmanager
def _user_errors_exit(multirun: bool = False, run_dir: str | None = None, grid: bool = False):
    """A LitFtError is the user's to fix: print its message, no traceback, exit non-zero.

    In a grid sweep the job is recorded as failed and ends normally: the sweep's other jobs
    still run, its run.log keeps the reason for sweep_report, and `main` exits 2 at the end.
    Under another sweeper (Optuna) or launcher (SLURM) a SweepJobFailed is raised, so the
    sweeper sees the failure.
    In a single run, `run_dir` is removed when the run stopped before writing anything into
    it (lit_ft/run_dir.py).
    """
    try:
        yield
    except LitFtError as err:
        from lit_ft.log import error

        error(str(err))
        if multirun and grid:
            _failed_jobs.append(str(run_dir))
            return
        if multirun:
            raise SweepJobFailed(
                f"lit_ft: sweep job {run_dir} failed (its reason is above and in its run.log); "
                f"python -m lit_ft.sweep_report {Path(str(run_dir)).parent} lists every job"
            ) from err
        if run_dir is not None:
            from lit_ft.distributed import is_global_zero
            from lit_ft.run_dir import remove_unused_run_dir

            if is_global_zero():
                remove_unused_run_dir(run_dir)
        sys.exit(EXIT_USER_ERROR)


def main() -> None:
    """`python -m lit_ft.run [overrides]`: Hydra's command line (`_hydra_main`). A grid sweep
    whose jobs failed with a lit_ft error ends with one line naming them, and exit code 2."""
    _hydra_main()
    if _failed_jobs:
        # print, not lit_ft.log.error: the last job's run.log is still attached
        sweep_dir = Path(_failed_jobs[0]).parent
        print(
            f"lit_ft: error: {len(_failed_jobs)} sweep job(s) failed: "
            f"{', '.join(Path(j).name for j in _failed_jobs)} (each one's reason is above and "
            f"in its run.log); python -m lit_ft.sweep_report {sweep_dir} lists every job",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(EXIT_USER_ERROR)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from lit_ft.distributed import (
        end_child_ranks,
        end_processes,
        launched_externally,
        require_one_output_dir,
        share_run_with_child_ranks,
    )

    # The job's own directory (per job in a multirun) is where everything of this run goes,
    # for every rank that Lightning launches from here too.
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    cfg.paths.output_dir = output_dir = hydra_cfg.runtime.output_dir
    share_run_with_child_ranks(hydra_cfg, multirun)
    launched_here = not launched_externally()
    # Lightning attaches its own console handlers when imported; without this every Lightning
    # message prints twice, once in each format.
    import lightning.pytorch  # noqa: F401  (import first, so there is something to remove)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True  # to Hydra's handlers: console and run.log
    try:
        grid = hydra_cfg.sweeper.get("_target_") == BASIC_SWEEPER
        grid = grid and hydra_cfg.launcher.get("_target_") == BASIC_LAUNCHER
        with _user_errors_exit(multirun, output_dir, grid):
            require_one_output_dir(hydra_cfg)
            results = train(cfg)
            return _sweep_metric(results["metrics"]["after"], cfg.optimized_metric, multirun)
        # reached only by a grid-sweep job that failed (recorded above): its ranks end here
        if launched_here:
            end_child_ranks()
        return None
    except BaseException:  # a user error (SystemExit), a crash, Ctrl-C: the job has failed
        if launched_here:
            end_child_ranks()  # none may outlive the job (lit_ft.distributed)
        raise
    finally:
        if multirun:  # the next job launches its own ranks
            end_processes(launched_here)


def _sweep_metric(after: dict[str, float], name: str, multirun: bool) -> float | None:
    """The value a sweeper optimizes. A name the run does not log would hand the sweeper None
    for every job: refused in a sweep (the job fails, saying so), a warning in a single run."""
    if name in after:
        return float(after[name])
    problem = (
        f"optimized_metric='{name}' is not a metric of this run; available: {', '.join(after)}"
    )
    if multirun:
        raise LitFtError(problem)
    from lit_ft.log import warn

    warn(problem)
    return None


if __name__ == "__main__":
    main()
