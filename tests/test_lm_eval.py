"""`python -m lit_ft.evaluate` and evaluation.lm_eval: the figures are lm-eval's own (the same
as the `lm_eval` CLI on the same export, on a local task of our own), and what cannot run is
refused before any model loads, naming the task."""

from __future__ import annotations

import builtins
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

import lit_ft
from lit_ft.config.compose import asset_path, compose
from lit_ft.errors import ConfigError, LitFtError
from lit_ft.evaluate import evaluate, parse_options
from lit_ft.validate import validate_config

BUNDLED = asset_path("tiny-gpt2-pystdlib")


@pytest.fixture(scope="module")
def local_task(tmp_path_factory) -> Path:
    """A two-choice task over Python's own builtins: the real one-line docstring against the
    same words shuffled; data in a local JSON file, so it runs offline."""
    folder = tmp_path_factory.mktemp("tasks")
    rng = random.Random(0)
    rows = []
    for name in sorted(dir(builtins)):
        doc = (getattr(builtins, name).__doc__ or "").strip().splitlines()
        words = doc[0].split() if doc else []
        if len(words) < 4 or name.startswith("_"):
            continue
        shuffled = rng.sample(words, len(words))
        if shuffled == words:
            continue
        answer = rng.randrange(2)
        choices = [" " + " ".join(words), " " + " ".join(shuffled)]
        if answer:
            choices.reverse()
        rows.append({"question": f"One-line docstring for {name}:", "choices": choices,
                     "answer": answer})  # fmt: skip
        if len(rows) == 30:
            break
    data = folder / "docstrings.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "docstrings.yaml").write_text(
        "task: lit_ft_builtin_docstrings\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
        "metadata:\n  version: 1.0\n"
    )
    return folder


def test_options_are_key_value_and_tasks_are_needed():
    assert parse_options(["tasks=a,b", "limit=3"]) == {"tasks": "a,b", "limit": "3"}
    with pytest.raises(LitFtError, match="'tsks=a' is not an option"):
        parse_options(["tsks=a"])
    with pytest.raises(LitFtError, match="name the lm-eval tasks"):
        parse_options(["limit=3"])


def test_an_unknown_task_and_a_hub_task_offline_are_refused_before_the_model(
    local_task, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LitFtError, match=r"no task 'lit_ft_builtin_docstringz' \(close: "
                       r"lit_ft_builtin_docstrings"):  # fmt: skip
        evaluate(BUNDLED, {"tasks": "lit_ft_builtin_docstringz", "include_path": str(local_task)})
    with pytest.raises(LitFtError, match=r"read their data from the Hub: hellaswag"):
        evaluate(BUNDLED, {"tasks": "hellaswag"})
    with pytest.raises(LitFtError, match="holds no model"):
        evaluate(tmp_path, {"tasks": "hellaswag"})
    cfg = compose(["evaluation.lm_eval.tasks=[not_a_task_xyz]", "export=false",
                   f"paths.output_dir={tmp_path / 'run'}"])  # fmt: skip
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert "evaluation.lm_eval: lm-eval has no task 'not_a_task_xyz'" in str(err.value)
    assert "it needs export=true" in str(err.value)


def test_without_lm_eval_installed_the_message_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval.tasks", None)  # import fails as if absent
    with pytest.raises(LitFtError, match=r"pip install 'lit-ft\[eval\]'"):
        evaluate(BUNDLED, {"tasks": "hellaswag"})


def _lm_eval_cli(export: Path, local_task: Path, out: Path) -> dict:
    command = [
        sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
        f"pretrained={export}", "--tasks", "lit_ft_builtin_docstrings", "--include_path",
        str(local_task), "--device", "cpu", "--batch_size", "4", "--output_path", str(out),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = out.rglob("results_*.json")
    return json.loads(path.read_text())["results"]["lit_ft_builtin_docstrings"]


@pytest.mark.slow
def test_the_figures_are_the_lm_eval_clis_at_the_end_of_training_and_after(
    local_task, text_file, tmp_path
):
    """A short run with evaluation.lm_eval on the local task: results.json's scores, and
    `python -m lit_ft.evaluate <run dir>` afterwards, equal the lm_eval CLI's on hf_model."""
    run = tmp_path / "run"
    results = lit_ft.train_from_overrides(
        ["data=text_files", f"data.data_files={text_file}", "data.block_size=32",
         "data.eval_batch_size=4", "trainer.max_steps=3", "trainer.precision=32-true",
         "evaluate_before=false", "callbacks.generations.num_prompts=0",
         "trainer.enable_progress_bar=false",
         "evaluation.lm_eval.tasks=[lit_ft_builtin_docstrings]",
         f"evaluation.lm_eval.include_path={local_task}", f"paths.output_dir={run}"]
    )  # fmt: skip
    cli = _lm_eval_cli(run / "hf_model", local_task, tmp_path / "cli")
    at_end = results["lm_eval"]["lit_ft_builtin_docstrings"]
    after = subprocess.run(
        [sys.executable, "-m", "lit_ft.evaluate", str(run), "tasks=lit_ft_builtin_docstrings",
         f"include_path={local_task}", f"output={tmp_path / 'after.json'}"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert after.returncode == 0, after.stderr[-3000:]
    assert "lit_ft_builtin_docstrings" in after.stdout  # the table
    later = json.loads((tmp_path / "after.json").read_text())["results"]
    for name in ("acc,none", "acc_norm,none", "acc_stderr,none"):
        assert at_end[name] == cli[name] == later["lit_ft_builtin_docstrings"][name], name
    assert at_end["sample_len"] == 30 and 0 < cli["acc,none"] < 1  # a real figure
    assert json.loads((run / "eval_results.json").read_text())["batch_size"] == 4  # the run's
