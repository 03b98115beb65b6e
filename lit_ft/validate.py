"""The check of a composed config: every problem at once, before any long work starts.

Each rule lives beside the code it governs (`optimizer_problems` next to the optimizer
factory, `data_problems` next to the data sources, ...); this module collects them and
holds the rules of the run itself (what to resume from, the seed, the run directory).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from lit_ft.errors import ConfigError
from lit_ft.problems import Problems


def validate_config(cfg: DictConfig) -> None:
    """Check the whole config before any long work starts; report every problem at once."""
    from lit_ft.data.mixture import mixture_problems
    from lit_ft.data.sources import data_problems
    from lit_ft.data.streaming import streaming_problems
    from lit_ft.evaluate import lm_eval_problems
    from lit_ft.model.build import model_problems
    from lit_ft.model.compile import compile_problems
    from lit_ft.model.fsdp2 import fsdp2_problems
    from lit_ft.model.peft import peft_problems
    from lit_ft.model.precision import precision_problems
    from lit_ft.model.strategy import notebook_problems, strategy_problems
    from lit_ft.observe.loggers import wandb_problems
    from lit_ft.observe.progress import in_notebook, progress_problems
    from lit_ft.preflight import output_dir_problem
    from lit_ft.tasks import task_problems
    from lit_ft.tasks.sft import truncation_problems
    from lit_ft.tasks.vllm_rollout import rollout_problems
    from lit_ft.training.optim import optimizer_problems, scheduler_problems, step_problems
    from lit_ft.training.sharded_checkpoint import is_checkpoint_path

    try:  # resolvers such as ${package_dir:...} raise here, wrapped by OmegaConf
        OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError as err:
        cause = err.__cause__
        raise ConfigError(cause.problems if isinstance(cause, ConfigError) else [str(err)]) from err
    trainer = cfg.trainer
    problems = Problems()
    given = cfg.get("given") or {}  # objects handed to lit_ft.FineTuner instead of paths
    problems += model_problems(cfg.model, given="model" in given)
    problems += task_problems(cfg.task.name, cfg.data, cfg.task)
    problems += data_problems(cfg.data, given="data" in given)
    if "data" not in given:  # rows given as objects have no sources to mix
        problems += mixture_problems(cfg.data)
    problems += truncation_problems(cfg.data.get("truncation", "cut"), cfg.task.name)
    problems += step_problems(trainer)
    problems += precision_problems(trainer)
    strategy = trainer.get("strategy", "auto")
    problems += strategy_problems(strategy, str(trainer.accelerator), bool(cfg.export))
    problems += fsdp2_problems(strategy, cfg.get("peft"), cfg.model)
    if "rollout" in cfg.task:  # task=grpo: where its completions are sampled
        problems += rollout_problems(cfg.task, str(trainer.accelerator), strategy)
    if in_notebook():
        problems += notebook_problems(strategy, trainer.get("devices"), trainer.get("num_nodes"))
    problems += streaming_problems(cfg.data, trainer.get("max_steps", -1), cfg.task.name)
    problems += optimizer_problems(cfg.optimizer)
    problems += scheduler_problems(cfg.scheduler)
    problems += compile_problems(cfg.get("compile"))
    problems += lm_eval_problems((cfg.get("evaluation") or {}).get("lm_eval"), bool(cfg.export))
    problems += progress_problems((cfg.callbacks or {}).get("progress"))
    problems += wandb_problems((cfg.logger or {}).get("wandb"))
    problems += peft_problems(cfg.get("peft"), bool(cfg.model.from_scratch))
    ckpt = cfg.ckpt_path
    problems.need(
        ckpt in (None, "last", "auto") or is_checkpoint_path(Path(str(ckpt)).expanduser()),
        f"ckpt_path='{ckpt}' is neither last, auto nor an existing checkpoint file (or "
        "trainer=fsdp2 checkpoint directory)",
    )
    problems.need(isinstance(cfg.seed, int), f"seed must be an integer, got {cfg.seed!r}")
    problems.add(output_dir_problem(cfg.paths.output_dir))
    if problems:
        raise ConfigError(list(problems))
