"""Reaching the Hugging Face Hub, or failing fast and clearly when it is out of reach.

Without a network, `from_pretrained` and `load_dataset` retry for half a minute each and then
raise messages that do not say which key to change. Before any long work starts we probe the
Hub once (a TCP connect with a short timeout); if it is unreachable we switch the HF libraries
to offline mode, so anything already in the local HF cache still loads, and everything else
fails in well under a second, collected into one message.
"""

from __future__ import annotations

import os
import socket
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

from lit_ft.errors import HubUnavailableError

LOCAL_DATA_BUILDERS = ("text", "csv", "json", "parquet", "arrow", "imagefolder")


def is_local_model(name_or_path: str) -> bool:
    return Path(name_or_path).expanduser().exists()


def is_local_data(path: str) -> bool:
    return path in LOCAL_DATA_BUILDERS or Path(path).expanduser().exists()


def data_paths(data) -> list[str]:
    """The paths a data config reads: `data.path`, or each source's under data=mixture."""
    if data.get("path") == "mixture":
        return [str(source.get("path")) for source in data.get("sources") or []]
    return [str(data.get("path"))]


def offline_requested() -> bool:
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(flag.strip().upper() in {"1", "ON", "YES", "TRUE"} for flag in flags)


def hub_endpoint():
    return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))


@cache
def hub_reachable(timeout_s: float = 3.0) -> bool:
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy a direct connect proves nothing; let the libraries try
    endpoint = hub_endpoint()
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def use_offline_mode() -> None:
    """Make transformers, huggingface_hub and datasets read only the local cache from now on."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import datasets.config
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True
    datasets.config.HF_HUB_OFFLINE = True


def check_hub_sources(
    model_name: str | None, tokenizer_name: str | None, data_path: str | None, data_name: str | None
):
    """Confirm that every Hub-hosted input can be fetched, or raise one error naming them all.

    Local paths and the local file builders (text/csv/json/parquet) are never probed, so the
    offline default run makes no network call at all.
    """
    remote_models = [
        n for n in dict.fromkeys([model_name, tokenizer_name]) if n and not is_local_model(n)
    ]  # None: given as an object (lit_ft.FineTuner), nothing to fetch
    remote_data = None if data_path is None or is_local_data(data_path) else data_path
    if not remote_models and remote_data is None:
        return
    if offline_requested():
        reason = "HF_HUB_OFFLINE is set"
    elif not hub_reachable():
        reason = f"the Hugging Face Hub ({hub_endpoint().geturl()}) is unreachable from here"
    else:
        return  # online: the real download path runs, with its own progress bars
    use_offline_mode()

    missing = [f"model/tokenizer '{n}'" for n in remote_models if not _model_in_cache(n)]
    if remote_data is not None and not _dataset_in_cache(remote_data, data_name):
        label = f"{remote_data}" + (f" ({data_name})" if data_name else "")
        missing.append(f"dataset '{label}'")
    if missing:
        raise HubUnavailableError(_offline_message(missing, reason))


def check_run_sources(cfg, spec, given=None) -> None:
    """The run's step: the Hub, when model or data come from it, and a push_to_hub's token,
    checked now, not after the data's work. What came as objects (`given`,
    lit_ft.steps.Given) is not looked for anywhere."""
    given_model = getattr(given, "model", None)
    built_here = bool(getattr(spec, "tiny_vlm", None))  # lit_ft builds it (model/tiny_vlm.py)
    model = None if given_model is not None or built_here else spec.name_or_path
    given_tokenizer = getattr(given, "tokenizer", None)
    tokenizer = None if given_tokenizer is not None or model is None else spec.tokenizer_name
    given_data = getattr(given, "splits", None) is not None
    data = (None, None) if given_data else (cfg.data.path, cfg.data.name)
    if data[0] == "mixture":  # data=mixture: each source's own path (lit_ft/data/mixture.py)
        check_hub_sources(model, tokenizer, None, None)
        for source in cfg.data.sources:
            check_hub_sources(None, None, source.get("path"), source.get("name"))
    else:
        check_hub_sources(model, tokenizer, *data)
    check_push_to_hub(cfg.push_to_hub.enabled, cfg.push_to_hub.repo_id)


def _model_in_cache(name: str) -> bool:
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name)
        return True
    except (OSError, ValueError):
        return False


def _dataset_in_cache(path: str, name: str | None) -> bool:
    import datasets

    try:
        datasets.load_dataset_builder(path, name)
        return True
    except Exception:  # datasets raises ConnectionError, FileNotFoundError, DatasetNotFoundError...
        return False


def _offline_message(missing: list[str], reason: str) -> str:
    return (
        f"cannot fetch {' and '.join(missing)}: {reason}, and the local Hugging Face cache "
        "does not have it.\n"
        "What to do, any one of:\n"
        "  - point at local files: model.name_or_path=/path/to/model_dir and "
        "data.path=text|csv|json|parquet data.data_files=/path/to/file;\n"
        "  - pre-populate the HF cache on a machine with network (e.g. `hf download gpt2`, "
        "`python -c \"import datasets; datasets.load_dataset('wikitext', 'wikitext-2-raw-v1')\"`) "
        "and copy ~/.cache/huggingface here;\n"
        "  - run the offline default: `python -m lit_ft.run` (bundled tiny GPT-2, text from "
        "Python's own documentation)."
    )


def check_push_to_hub(enabled: bool, repo_id: str | None) -> None:
    """Before training: an upload that is asked for must be possible (token, repo id, network)."""
    if not enabled:
        return
    from huggingface_hub import get_token

    problems = []
    if not repo_id:
        problems.append("push_to_hub.repo_id is empty (e.g. push_to_hub.repo_id=me/my-model)")
    if not get_token():
        problems.append("no Hugging Face token: run `hf auth login` or set HF_TOKEN")
    if offline_requested():
        problems.append("HF_HUB_OFFLINE is set")
    elif not hub_reachable():
        problems.append(f"the Hub ({hub_endpoint().geturl()}) is unreachable from here")
    if problems:
        raise HubUnavailableError(
            "push_to_hub.enabled=true but the upload cannot happen: "
            + "; ".join(problems)
            + ". Fix that, or drop push_to_hub.enabled (the export stays in the run dir, and "
            "`hf upload <repo> <run dir>/hf_model` uploads it later)"
        )


def push_to_hub(folder, repo_id: str, private: bool = True, commit_message: str = "") -> str:
    """Upload an export directory to a model repo (created if missing); return its URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
    return f"{hub_endpoint().geturl().rstrip('/')}/{repo_id}"
