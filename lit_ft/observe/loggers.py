"""Experiment loggers: W&B that never blocks a run, the run's config for every logger, and
closing them so that each job of a sweep gets its own W&B run.
"""

from __future__ import annotations

import netrc
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lit_ft.log import say
from lit_ft.problems import Problems

WANDB_MODES = ("auto", "online", "offline")


def wandb_logger(
    save_dir: str,
    project: str = "lit_ft",
    name: str | None = None,
    mode: str = "auto",
    log_model: bool = False,
    **init_kwargs: Any,
):
    """A `WandbLogger` that streams only when it can, and otherwise logs offline at once.

    auto: online when an API key is configured and the server answers within 3 s; offline
    otherwise (files in <save_dir>/wandb, uploaded later with `wandb sync`). A WANDB_MODE
    environment variable (e.g. `disabled`) always wins.
    """
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    if os.environ.get("WANDB_MODE"):
        mode, why = os.environ["WANDB_MODE"], "WANDB_MODE is set"
    elif mode == "auto":
        mode, why = _auto_mode()
    else:
        why = f"logger.wandb.mode={mode}"
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if mode in ("offline", "dryrun"):
        say(
            f"W&B offline ({why}): logging to {save_dir}/wandb; upload afterwards with "
            f"`wandb sync {save_dir}/wandb/offline-run-*`"
        )
    # init_timeout: an unreachable server fails the start after 60 s instead of waiting forever.
    settings = wandb.Settings(init_timeout=60, silent=True)
    return WandbLogger(
        save_dir=save_dir,
        project=project,
        name=name,
        log_model=log_model and mode == "online",
        mode=mode,
        settings=settings,
        **init_kwargs,
    )


def _auto_mode() -> tuple[str, str]:
    base_url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    host = urlparse(base_url).hostname or "api.wandb.ai"
    if not (os.environ.get("WANDB_API_KEY") or _netrc_has(host)):
        return "offline", "no WANDB_API_KEY or `wandb login`"
    try:
        port = urlparse(base_url).port or (443 if base_url.startswith("https") else 80)
        socket.create_connection((host, port), timeout=3).close()
    except OSError:
        return "offline", f"{host} cannot be reached"
    return "online", f"API key set and {host} reachable"


def _netrc_has(host: str) -> bool:
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def mlflow_logger(
    tracking_uri: str,
    experiment_name: str = "lit_ft",
    run_name: str | None = None,
    log_model: bool = False,
):
    """Lightning's `MLFlowLogger`; a plain path as `tracking_uri` is a local file store.

    MLflow 3 refuses its file store unless MLFLOW_ALLOW_FILE_STORE is set, and steers to
    SQLite instead, whose first use creates the schema through ~100 migrations (about 25 s on
    2 CPU cores) in every fresh run directory. The file store needs no database and writes
    plain files; for SQLite or a server, give `sqlite:///...` or `http://...`.
    """
    from lightning.pytorch.loggers import MLFlowLogger

    scheme = urlparse(tracking_uri).scheme
    if scheme in ("", "file"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MLFlowLogger(
        experiment_name=experiment_name,
        run_name=run_name,
        tracking_uri=tracking_uri,
        log_model=log_model,
    )


def log_config(loggers: list, config: dict[str, Any]) -> None:
    """Give every logger the run's resolved config (CSV: hparams.yaml; W&B/MLflow: params),
    so the runs of a sweep can be compared by their settings."""
    flat = _flatten(config)
    for logger in loggers:
        logger.log_hyperparams(flat)


def finish(loggers: list) -> None:
    """Close W&B's run: the next job of a sweep in this process then starts its own.

    `wandb.run` is the process's active run (None when no logger started one); asking the
    logger for `.experiment` instead would start a run just to finish it."""
    from lightning.pytorch.loggers import WandbLogger

    if any(isinstance(logger, WandbLogger) for logger in loggers):
        import wandb

        if wandb.run is not None:
            wandb.run.finish()


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def wandb_problems(wandb) -> Problems:
    problems = Problems()
    if wandb and wandb.get("mode") not in WANDB_MODES:
        problems.append(
            f"logger.wandb.mode='{wandb.mode}' is unknown; use one of {', '.join(WANDB_MODES)}"
        )
    return problems
