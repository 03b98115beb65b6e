"""Evaluate a trained model with EleutherAI's lm-evaluation-harness, the way fine-tunes are
compared.

    python -m lit_ft.evaluate outputs/runs/<run> tasks=hellaswag,arc_easy
    python -m lit_ft.evaluate outputs/runs/<run>/hf_model tasks=my_task include_path=my_tasks/
    python -m lit_ft.evaluate <run> tasks=my_task include_path=my_tasks/ limit=100 num_fewshot=5

The figures are lm-eval's own: `lm_eval.simple_evaluate` with its `HFLM` on the export (a
LoRA adapter export on its base), as `lm_eval --model hf --model_args pretrained=<export>`
computes them (tests/test_lm_eval.py compares the two). lit_ft chooses the device (CUDA when
there is one) and the batch size (the run's `data.eval_batch_size`, else its `batch_size`;
8 for a bare export); `batch_size=`, `device=` override. Results: `eval_results.json` in the run
directory (for an export that is a run's `hf_model/`, that run's), and a table. Needs the
optional extra: pip install 'lit-ft[eval]'.

Hub tasks download their data; offline they are refused before anything loads, with which
ones. Local task YAMLs (`include_path=`) over local files (`dataset_path: json` with
`dataset_kwargs: {data_files: ...}`) run offline.
"""

from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path
from typing import Any

from lit_ft.errors import EXIT_USER_ERROR, LitFtError
from lit_ft.problems import Problems

KEYS = ("tasks", "include_path", "batch_size", "device", "limit", "num_fewshot", "output")
LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")


def parse_options(argv: list[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for word in argv:
        key, sep, value = word.partition("=")
        if not sep or key not in KEYS:
            raise LitFtError(f"'{word}' is not an option; give key=value with key one of {KEYS}")
        options[key] = value
    if not options.get("tasks"):
        raise LitFtError("name the lm-eval tasks: tasks=hellaswag,arc_easy (or your own)")
    return options


def model_location(source: str | Path) -> tuple[dict[str, str], Path | None, Path]:
    """(HFLM's model_args, the run directory if there is one, the export directory)."""
    path = Path(source)
    run_dir = None
    if (path / "hf_model").is_dir():
        run_dir, path = path, path / "hf_model"
    elif (path.parent / "config.yaml").is_file() and path.name == "hf_model":
        run_dir = path.parent
    if (path / "adapter_config.json").is_file():
        from lit_ft.model.peft import adapter_base

        return {"pretrained": adapter_base(path), "peft": str(path)}, run_dir, path
    if not (path / "config.json").is_file():
        raise LitFtError(
            f"'{source}' holds no model: give a run directory (with hf_model/) or an export "
            "directory (config.json, as from_pretrained reads)"
        )
    return {"pretrained": str(path)}, run_dir, path


def run_batch_size(run_dir: Path | None) -> int:
    if run_dir is None or not (run_dir / "config.yaml").is_file():
        return 8
    from omegaconf import OmegaConf

    data = OmegaConf.load(run_dir / "config.yaml").get("data", {})
    return int(data.get("eval_batch_size") or data.get("batch_size") or 8)


def task_manager_and_names(options: dict[str, str]):
    """lm-eval's TaskManager (with include_path) and the task names, each one it knows."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise LitFtError(
            "python -m lit_ft.evaluate runs EleutherAI's lm-evaluation-harness, which is not "
            "installed: pip install 'lit-ft[eval]' (or pip install lm_eval)"
        ) from None
    include = options.get("include_path")
    if include and not Path(include).exists():
        raise LitFtError(f"include_path='{include}' does not exist")
    manager = TaskManager(include_path=include) if include else TaskManager()
    names = [t.strip() for t in options["tasks"].split(",") if t.strip()]
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        hints = {n: difflib.get_close_matches(n, manager.all_tasks, n=3) for n in unknown}
        said = "; ".join(f"'{n}' (close: {', '.join(h) or 'none'})" for n, h in hints.items())
        raise LitFtError(
            f"lm-eval has no task {said}; list them with `lm_eval ls tasks`, or give "
            "include_path= for a folder of your own task YAMLs"
        )
    return manager, names


def lm_eval_problems(settings, export: bool) -> Problems:
    """evaluation.lm_eval at the end of training: lm-eval installed, every task known, its
    data reachable, and an export to evaluate; checked with the rest of the config."""
    problems = Problems()
    tasks = list((settings or {}).get("tasks") or [])
    if not tasks:
        return problems
    problems.need(export, "evaluation.lm_eval.tasks evaluates the export: it needs export=true")
    options = {"tasks": ",".join(tasks), "include_path": settings.get("include_path")}
    try:
        manager, names = task_manager_and_names({k: v for k, v in options.items() if v})
        check_task_data_reachable(manager, names)
    except LitFtError as err:
        problems.add(f"evaluation.lm_eval: {err}")
    return problems


def lm_eval_options(settings) -> dict[str, str]:
    """`evaluate`'s options from evaluation.lm_eval (the config's, as plain values)."""
    options = {"tasks": ",".join(settings["tasks"])}
    for key in ("include_path", "limit", "num_fewshot", "batch_size"):
        if settings.get(key) is not None:
            options[key] = str(settings[key])
    return options


def lm_eval_at_end(cfg, export_dir: str | None) -> dict[str, Any] | None:
    """The run's step after its export: evaluation.lm_eval's tasks on hf_model (None when
    none are named); the scores as lm-eval reports them, per task."""
    from omegaconf import OmegaConf

    settings = OmegaConf.to_container((cfg.get("evaluation") or {}).get("lm_eval") or {})
    if not settings.get("tasks") or export_dir is None:
        return None
    from lit_ft.log import say

    options = lm_eval_options(settings)
    options["output"] = str(Path(cfg.paths.output_dir) / "eval_results.json")
    results = evaluate(export_dir, options)
    from lm_eval.utils import make_table

    say(f"lm-eval on {export_dir}:\n{make_table(results)}")
    return results["results"]


def check_task_data_reachable(manager, names: list[str]) -> None:
    """Offline, a task whose data is on the Hub is refused now, naming it."""
    from lit_ft.hub import hub_endpoint, hub_reachable, offline_requested

    if not offline_requested() and hub_reachable():
        return
    remote = []
    for name in names:
        entry = manager.task_index.get(name)
        config = getattr(entry, "cfg", None) or {}
        path = config.get("dataset_path")
        if path and path not in LOCAL_BUILDERS and not Path(str(path)).exists():
            remote.append(f"{name} ({path})")
    if remote:
        reason = (
            "HF_HUB_OFFLINE is set"
            if offline_requested()
            else (f"the Hugging Face Hub ({hub_endpoint().geturl()}) is unreachable from here")
        )
        raise LitFtError(
            f"{reason}, and these lm-eval tasks read their data from the Hub: "
            f"{', '.join(remote)}. Run where the Hub is reachable (the datasets cache keeps "
            "them for later offline runs), or evaluate a local task: a YAML with "
            "dataset_path: json and dataset_kwargs: {data_files: ...}, given as include_path="
        )


def evaluate(source: str | Path, options: dict[str, str]) -> dict[str, Any]:
    """lm-eval's results for `source` (run or export directory); also written as
    eval_results.json. Raises LitFtError for what can be checked before loading the model."""
    model_args, run_dir, export = model_location(source)
    manager, names = task_manager_and_names(options)
    check_task_data_reachable(manager, names)
    import torch
    from lm_eval import simple_evaluate

    device = options.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    batch = options.get("batch_size") or run_batch_size(run_dir)
    batch = int(batch) if str(batch).isdigit() else batch  # or lm-eval's "auto"
    limit = options.get("limit")
    fewshot = options.get("num_fewshot")
    results = simple_evaluate(
        model="hf",
        model_args=model_args,
        tasks=names,
        task_manager=manager,
        batch_size=batch,
        device=device,
        limit=float(limit) if limit and "." in limit else (int(limit) if limit else None),
        num_fewshot=int(fewshot) if fewshot else None,
        log_samples=False,
    )
    out = Path(options.get("output") or (run_dir or export) / "eval_results.json")
    record = {
        "model": model_args,
        "tasks": names,
        "device": device,
        "batch_size": batch,
        "results": results["results"],
        "versions": results.get("versions"),
        "n-shot": results.get("n-shot"),
        "config": {k: v for k, v in results.get("config", {}).items() if _plain(v)},
    }
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    results["lit_ft_output"] = str(out)
    return results


def _plain(value) -> bool:
    return isinstance(value, str | int | float | bool | type(None) | list | dict)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if argv else EXIT_USER_ERROR)
    try:
        results = evaluate(argv[0], parse_options(argv[1:]))
    except LitFtError as err:
        print(f"lit_ft: error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    from lm_eval.utils import make_table

    print(make_table(results))
    print(f"[lit_ft] results: {results['lit_ft_output']}")


if __name__ == "__main__":
    main()
