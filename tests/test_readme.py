"""Every `python -m lit_ft.<module>` command of README.md's bash blocks works as shown.

Fast tier: each `lit_ft.run` command composes (an unknown key is an error) and, when it can
run here, passes `validate_config`; one that cannot run here is in CANNOT_RUN with the reason,
and is checked to fail the way README promises (Hub: lit_ft's one offline message; CUDA:
refused by the config check). A README command in neither group fails the test, so a new
command gets covered. Slow tier: every runnable command runs end to end in a subprocess, on a
tiny budget, from a fresh folder holding the files it names.

`python -m lit_ft.run --help` is run by tests/test_cli.py (the page and all its examples).
"""

from __future__ import annotations

import json
import math
import random
import shlex
import shutil
from pathlib import Path

import pytest
from helpers.offline_hub import assert_clear_offline_message
from helpers.readme_commands import ReadmeCommand, readme_commands

from lit_ft.config import asset_path, compose
from lit_ft.errors import ConfigError, HubUnavailableError
from lit_ft.validate import validate_config

COMMANDS = readme_commands()
BY_TEXT = {c.text: c for c in COMMANDS}

HUB = "needs the Hugging Face Hub"
CUDA = "needs CUDA"
NODES = "needs several machines"
SETUP = "installs packages"

# README commands that cannot run on this offline, CPU-only machine, and why. Each still
# composes, and fails here the way README says (see test_commands_that_cannot_run_fail_as_promised).
CANNOT_RUN: dict[str, tuple[str, str]] = {
    "python -m lit_ft.run": (
        SETUP,
        "the Quickstart line creates a venv and pip-installs first; its `python -m lit_ft.run` "
        "is the prior run below (tests/test_default_run.py runs it at full size)",
    ),
    "python -m lit_ft.run model=gpt2 data=wikitext": (HUB, "GPT-2 and WikiText-2 from the Hub"),
    "python -m lit_ft.run experiment=bert_sst2": (HUB, "bert-base-uncased + GLUE SST-2"),
    "python -m lit_ft.run experiment=bert_conll2003": (HUB, "bert-base-cased + CoNLL-2003"),
    "python -m lit_ft.run experiment=t5_xsum": (HUB, "t5-small + XSum"),
    "python -m lit_ft.run experiment=gpt2_alpaca": (HUB, "gpt2 + Alpaca"),
    "python -m lit_ft.run data=wikitext data.streaming=true trainer.max_steps=10000": (
        HUB,
        "streams WikiText from the Hub",
    ),
    "python -m lit_ft.run trainer=fsdp2 model=gpt2 trainer.devices=4": (
        HUB,
        "GPT-2 from the Hub (and 4 processes); FSDP2 on CPU runs below with the bundled model",
    ),
    "python -m lit_ft.run trainer=fsdp model=gpt2 trainer.devices=4": (
        CUDA,
        "FSDP is CUDA-only in Lightning (and GPT-2 comes from the Hub)",
    ),
    "python -m lit_ft.run trainer=deepspeed trainer.devices=4": (
        CUDA,
        "DeepSpeed: CUDA and the deepspeed package (the line pip-installs it first)",
    ),
    "python -m lit_ft.run model=gpt2 data=wikitext peft=qlora trainer=gpu": (
        CUDA,
        "QLoRA's 4-bit kernels and trainer=gpu (and the Hub's GPT-2/WikiText)",
    ),
    "python -m lit_ft.run 'model=<llama-like>' model.liger_kernel=true trainer=gpu": (
        CUDA,
        "Liger's Triton kernels and trainer=gpu; <llama-like> is composed as model=gpt2",
    ),
    "python -m lit_ft.run trainer=ddp 'trainer.num_nodes=$SLURM_NNODES' trainer.devices=8 "
    "paths.output_dir=/shared/runs/my-run ckpt_path=auto": (
        NODES,
        "srun on a SLURM cluster, 8 GPUs a node",
    ),
    "python -m lit_ft.run trainer=ddp trainer.devices=4 trainer.num_nodes=2 "
    "paths.output_dir=/shared/runs/exp1": (NODES, "torchrun on 2 nodes of 4 GPUs"),
    "python -m lit_ft.run trainer=ddp trainer.devices=4 trainer.num_nodes=2 "
    "'paths.output_dir=outputs/runs/$SLURM_JOB_ID' ckpt_path=auto": (
        NODES,
        "srun on 2 SLURM nodes of 4 GPUs",
    ),
}

# Runnable commands whose README values a test run changes beyond BUDGET, and why.
ADAPTED: dict[str, dict[str, str]] = {
    # 2 jobs instead of README's 4 (~20 s each here): still a grid sweep, its own job
    # directories and a table for sweep_report; the block sizes stay swept
    "python -m lit_ft.run -m optimizer.lr=3e-4,1e-3 data.block_size=64,128": {
        "optimizer.lr=3e-4,1e-3": "optimizer.lr=1e-3"
    },
    # 2 trials instead of 30: the sweep, its sampler and optimization_results.yaml all show
    "python -m lit_ft.run hparams_search=optuna hydra.sweeper.n_trials=30": {
        "hydra.sweeper.n_trials=30": "hydra.sweeper.n_trials=2"
    },
}

# Commands that differ from another only in trivial overrides, run as part of it: the slow
# tier starts ~25 subprocesses of 15-30 s each (imports, data, 2 steps, export), so each one
# saved is worth it. A member's arguments join its leader's run unless the leader already sets
# that key (`logger=[tensorboard,mlflow]` covers `logger=tensorboard`).
MERGED_INTO: dict[str, str] = {
    "python -m lit_ft.run logger=tensorboard": "python -m lit_ft.run 'logger=[tensorboard,mlflow]'",
    "python -m lit_ft.run logger=mlflow": "python -m lit_ft.run 'logger=[tensorboard,mlflow]'",
    "python -m lit_ft.run callbacks.resumable_checkpoint.save_top_k=3": (
        "python -m lit_ft.run callbacks.resumable_checkpoint.every_n_train_steps=500"
    ),
    # README's memory table measures exactly this pair together
    "python -m lit_ft.run model.chunked_loss=true model.loss_chunk_tokens=256": (
        "python -m lit_ft.run model.gradient_checkpointing=true"
    ),
    "python -m lit_ft.run peft=lora": (
        "python -m lit_ft.run peft=lora peft.r=16 'peft.target_modules=[c_attn,c_proj]' "
        "peft.export=adapter"
    ),
    # on a CPU `trainer=ddp` is one process (devices=auto); the 2-process command covers it
    "python -m lit_ft.run trainer=ddp": (
        "python -m lit_ft.run trainer=ddp trainer.accelerator=cpu trainer.devices=2"
    ),
}

# The tiny budget appended to every run: 2 optimizer steps, one validation, test and
# prediction batch (predictions.jsonl of an untrained seq2seq model generating over a whole
# validation split took minutes).
BUDGET = [
    "trainer.max_steps=2",
    "trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
    "+trainer.limit_predict_batches=1",
    "trainer.enable_progress_bar=false",
]
# a resumed run goes 2 steps past the prior run's 2
RESUME_BUDGET = ["trainer.max_steps=4", *BUDGET[1:]]

# what the slow tier runs: the rest, less what runs merged into another command
RUNNABLE = [c for c in COMMANDS if c.text not in CANNOT_RUN and c.text not in MERGED_INTO]
# the modules test_readme_command_runs knows how to run and check
RUNNERS = {
    "lit_ft.run",
    "lit_ft.plots",
    "lit_ft.sweep_report",
    "lit_ft.recipes.tiny_gpt2",
    "lit_ft.chat",
    "lit_ft.evaluate",
}


def _key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~")


def _placeholders(prior: Path, sweep: Path | None) -> dict[str, str]:
    """README's placeholders and machine paths, as values this test has (`prior`: a run dir)."""
    return {
        "outputs/runs/<run>": str(prior),
        "<SFT run>": str(prior),  # a causal LM export stands in for an SFT model
        "/path/to/step000400.ckpt": str(min((prior / "checkpoints").glob("step*.ckpt"))),
        "/models/my-gpt": asset_path("tiny-gpt2-pystdlib"),  # a local save_pretrained dir
        "/big/": "big/",  # the test's folder holds big/*.txt
        "/shared/": f"{prior.parent}/shared/",
        "outputs/multiruns/<date>_<time>": str(sweep),
        "$SLURM_NNODES": "2",
        "$SLURM_JOB_ID": "4242",
        "<llama-like>": "gpt2",  # no llama config ships; gpt2's model keys are the same
    }


def substituted(command: ReadmeCommand, prior: Path, sweep: Path | None = None) -> list[str]:
    values = _placeholders(prior, sweep)
    args = []
    for arg in command.args:
        arg = ADAPTED.get(command.text, {}).get(arg, arg)
        for placeholder, value in values.items():
            arg = arg.replace(placeholder, value)
        args.append(arg)
    left = [a for a in args if "<" in a or "$" in a or "/path/to" in a]
    assert not left, f"{command.text}: a placeholder this test cannot fill: {left}"
    return args


def first_job(args: list[str]) -> list[str]:
    """A sweep's first job (`-m a=1,2` -> `a=1`), as compose takes it."""
    plain = [a for a in args if a != "-m"]
    return [a if "[" in a or "{" in a else a.split(",")[0] for a in plain]


def write_named_files(folder: Path, reference_text: str) -> None:
    """The files README's commands name, small: notes.txt, train/val.jsonl, pairs.jsonl,
    prompts.jsonl and my_rewards.py, big/."""
    paragraphs = [" ".join(p.split()) for p in reference_text.split("\n\n") if p.strip()][:300]
    # 300 lines: 5% held out = 15 lines, more than one block of the model's 256 positions
    (folder / "notes.txt").write_text("\n".join(paragraphs), encoding="utf-8")
    for name, rows in (("train.jsonl", paragraphs[:200]), ("val.jsonl", paragraphs[200:230])):
        with open(folder / name, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"body": p}) + "\n" for p in rows)
    rng = random.Random(0)
    with open(folder / "pairs.jsonl", "w", encoding="utf-8") as f:
        for p in paragraphs[:40]:
            words = p.split()[:12]
            shuffled = rng.sample(words, len(words))
            row = {"prompt": f"Summarize: {p[:80]}", "chosen": " ".join(words)}
            # margin: read by README's reward model command (data.margin_column), unused by DPO's
            row |= {"rejected": " ".join(shuffled), "margin": 0.5}
            f.write(json.dumps(row) + "\n")
    with open(folder / "prompts.jsonl", "w", encoding="utf-8") as f:  # GRPO's prompts
        for i, p in enumerate(paragraphs[:40]):
            f.write(json.dumps({"prompt": f"How many words? {p[:60]}", "answer": str(i)}) + "\n")
    (folder / "my_rewards.py").write_text(  # README's own-reward example names this file
        "def format_reward(prompts, completions, **columns):\n"
        "    return [float(c.strip().endswith('.')) for c in completions]\n",
        encoding="utf-8",
    )
    tasks = folder / "my_tasks"  # README's lm-eval commands: a local task over local rows
    tasks.mkdir()
    rows = [{"question": p[:60], "choices": [" yes", " no"], "answer": i % 2}
            for i, p in enumerate(paragraphs[:12])]  # fmt: skip
    (tasks / "docstrings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tasks / "docstrings.yaml").write_text(
        "task: docstrings\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tasks / 'docstrings.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\nmetadata:\n  version: 1.0\n",
        encoding="utf-8",
    )
    (folder / "big").mkdir()
    (folder / "big" / "a.txt").write_text("\n".join(paragraphs[:150]), encoding="utf-8")
    (folder / "big" / "b.txt").write_text("\n".join(paragraphs[150:]), encoding="utf-8")


def test_readme_commands_are_found():
    """The parser sees the commands where README puts them (after srun, &&, torchrun's -m)."""
    assert len(COMMANDS) >= 45, [c.text for c in COMMANDS]
    modules = {c.module for c in COMMANDS}
    # a new module is test_slow_tier_has_a_runner_for_every_runnable_module's to report
    assert modules >= RUNNERS
    launched = {c.launcher[0] for c in COMMANDS if c.launcher}
    assert launched == {"srun", "torchrun"}
    assert any(c.after and c.after[0].startswith("python3 -m venv") for c in COMMANDS)
    # a comment after the command is not an argument
    assert "python -m lit_ft.run experiment=bert_sst2" in BY_TEXT


def test_tables_name_only_readme_commands():
    for table in (CANNOT_RUN, ADAPTED, MERGED_INTO, set(MERGED_INTO.values())):
        stale = set(table) - set(BY_TEXT)
        assert not stale, f"the tables name commands README no longer has: {stale}"
    assert not set(MERGED_INTO) & set(MERGED_INTO.values())  # one level: leaders run
    assert not (set(MERGED_INTO) | set(MERGED_INTO.values())) & set(CANNOT_RUN)


RUN_COMMANDS = [c for c in COMMANDS if c.module == "lit_ft.run"]


@pytest.fixture
def fake_prior(tmp_path) -> Path:
    """Enough of a finished run for the config check: a checkpoint file and an export."""
    prior = tmp_path / "outputs" / "runs" / "prior"
    (prior / "checkpoints").mkdir(parents=True)
    (prior / "checkpoints" / "step000002.ckpt").write_bytes(b"")
    (prior / "hf_model").symlink_to(asset_path("tiny-gpt2-pystdlib"))
    return prior


@pytest.mark.parametrize("command", RUN_COMMANDS, ids=lambda c: c.text)
def test_readme_run_command_composes_and_validates(
    command, tmp_path, fake_prior, monkeypatch, reference_text
):
    from lit_ft.hub import data_paths, is_local_data, is_local_model

    monkeypatch.chdir(tmp_path)
    write_named_files(tmp_path, reference_text)
    args = first_job(substituted(command, fake_prior, tmp_path / "sweep"))
    if not any(_key(a) == "paths.output_dir" for a in args):
        args.append(f"paths.output_dir={tmp_path / 'run'}")
    cfg = compose(args)  # Hydra struct mode: an unknown key or group option raises here
    if command.text in CANNOT_RUN:
        return  # how it fails here: test_commands_that_cannot_run_fail_as_promised
    problem = (
        f"{command.text} is in README but can neither run here nor is in CANNOT_RUN (with why)"
    )
    assert not command.launcher and not command.after, problem
    try:
        validate_config(cfg)
    except ConfigError as err:
        pytest.fail(f"{problem}:\n{err}")
    local_data = all(is_local_data(path) for path in data_paths(cfg.data))
    built_here = bool(cfg.model.get("tiny_vlm"))  # built on first use (lit_ft/model/tiny_vlm.py)
    assert (is_local_model(cfg.model.name_or_path) or built_here) and local_data, problem


def test_slow_tier_has_a_runner_for_every_runnable_module():
    """A README command of another module (say lit_ft.export) needs a runner in the slow tier
    (test_readme_command_runs) or a CANNOT_RUN entry, not a silent lit_ft.run."""
    unknown = {c.text for c in RUNNABLE if c.module not in RUNNERS}
    assert not unknown, f"no runner for {unknown}: add one to test_readme_command_runs"


@pytest.mark.parametrize("leader", sorted(set(MERGED_INTO.values())))
def test_merged_commands_compose_together(leader, tmp_path, fake_prior):
    """What the slow tier runs for a leader and the commands merged into it is one valid config."""
    args = with_merged(BY_TEXT[leader], fake_prior)
    validate_config(compose([*args, f"paths.output_dir={tmp_path / 'run'}"]))
    keys = {_key(a) for a in args}
    for member in (m for m, lead in MERGED_INTO.items() if lead == leader):
        assert {_key(a) for a in BY_TEXT[member].args} <= keys, member  # every key is run


CANNOT = [BY_TEXT[t] for t in CANNOT_RUN if t in BY_TEXT]


@pytest.mark.parametrize("command", CANNOT, ids=lambda c: c.text)
def test_commands_that_cannot_run_fail_as_promised(command, tmp_path, fake_prior):
    """Hub: lit_ft's one offline message (in-process; tests/test_offline_hub.py runs the CLI).
    CUDA: refused by the config check, before any work. Several machines: composed above."""
    from lit_ft.config import to_plain
    from lit_ft.hub import check_hub_sources
    from lit_ft.model.build import ModelSpec

    kind, _why = CANNOT_RUN[command.text]
    args = [*substituted(command, fake_prior), f"paths.output_dir={tmp_path / 'run'}"]
    cfg = compose(args)
    if kind == HUB:
        from lit_ft.hub import data_paths, is_local_data, is_local_model

        spec = ModelSpec(task=cfg.task.name, **to_plain(cfg.model))
        with pytest.raises(HubUnavailableError) as raised:
            check_hub_sources(spec.name_or_path, spec.tokenizer_name, cfg.data.path, cfg.data.name)
        named = [] if is_local_model(spec.name_or_path) else [f"'{spec.name_or_path}'"]
        named += [f"dataset '{p}" for p in data_paths(cfg.data) if not is_local_data(p)]
        assert named, "a Hub command with a local model and data: wrong CANNOT_RUN reason"
        assert_clear_offline_message(str(raised.value), named)
    elif kind == CUDA:
        with pytest.raises(ConfigError) as raised:
            validate_config(cfg)
        assert "CUDA" in str(raised.value) or "GPU" in str(raised.value)
    elif kind == NODES:
        assert cfg.trainer.strategy is not None and command.launcher  # srun or torchrun
    else:
        assert command.after and "pip install" in " ".join(command.after)


# -- slow: every runnable command end to end ------------------------------------------------

# logger option -> the package it needs; a logger command is skipped where it is not installed
LOGGER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "csv": "csv"}


def _is_grid(command: ReadmeCommand) -> bool:
    return command.module == "lit_ft.run" and "-m" in command.args


@pytest.fixture(scope="module")
def prior_run(run_cli, tmp_path_factory, reference_text) -> Path:
    """The default run (the Quickstart's `python -m lit_ft.run`) on the tiny budget: what the
    resume, plots and DPO commands start from."""
    folder = tmp_path_factory.mktemp("prior")
    write_named_files(folder, reference_text)
    result = run_cli([*BUDGET, "paths.output_dir=outputs/runs/prior"], cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = folder / "outputs" / "runs" / "prior"
    _assert_results(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def grid_sweep(run_cli, tmp_path_factory, reference_text):
    """README's grid sweep, run once: its own test checks it, sweep_report reads it."""
    (grid,) = [c for c in RUNNABLE if _is_grid(c)]
    folder = tmp_path_factory.mktemp("grid")
    write_named_files(folder, reference_text)
    result = run_cli([*(ADAPTED[grid.text].get(a, a) for a in grid.args), *BUDGET], cwd=folder)
    sweeps = list((folder / "outputs" / "multiruns").glob("*"))
    return result, sweeps


def _assert_results(run_dir: Path, steps: int = 2) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    after = results["metrics"]["after"]
    assert after and all(math.isfinite(v) for v in after.values()), after
    assert results["metrics"]["train"]["steps"] == steps
    return results


def _jobs(sweep: Path) -> list[Path]:
    return sorted(p.parent for p in sweep.glob("*/results.json"))


@pytest.mark.slow
@pytest.mark.parametrize("command", RUNNABLE, ids=lambda c: c.text)
def test_readme_command_runs(command, run_cli, prior_run, request, tmp_path, reference_text):
    write_named_files(tmp_path, reference_text)
    # a copy of the prior run: a resume must not change what other commands start from
    prior = tmp_path / "outputs" / "runs" / "prior"
    shutil.copytree(prior_run, prior)
    if command.module == "lit_ft.sweep_report" or _is_grid(command):
        sweep_result, sweeps = request.getfixturevalue("grid_sweep")  # only these need it
    for logger, package in LOGGER_PACKAGES.items():
        if f"logger={logger}" in command.text or (
            logger in command.text and "logger=[" in command.text
        ):
            pytest.importorskip(package)
    if command.module == "lit_ft.plots":
        _check_plots(command, run_cli, prior, tmp_path)
    elif command.module == "lit_ft.sweep_report":
        assert sweep_result.returncode == 0, sweep_result.stderr[-3000:]
        _check_sweep_report(command, run_cli, prior, sweeps[0], tmp_path)
    elif command.module == "lit_ft.recipes.tiny_gpt2":
        _check_recipe(run_cli, tmp_path)
    elif command.module == "lit_ft.chat":
        _check_chat(command, prior, tmp_path)
    elif command.module == "lit_ft.evaluate":
        result = run_cli(substituted(command, prior), cwd=tmp_path, module=command.module)
        assert result.returncode == 0, result.stderr[-3000:]
        assert json.loads((prior / "eval_results.json").read_text())["results"]
    elif _is_grid(command):
        assert sweep_result.returncode == 0, sweep_result.stderr[-3000:]
        (sweep,) = sweeps
        assert len(_jobs(sweep)) == 2  # the 2 block sizes (ADAPTED)
        for job in _jobs(sweep):
            _assert_results(job)
    else:
        _check_run(command, run_cli, prior, tmp_path)


def _budgeted(args: list[str], budget: list[str]) -> list[str]:
    """The command's own arguments, less those the budget sets, then the budget; the budget
    only names keys this command's config has (task.eval_generations is instruction's)."""
    cfg = compose(first_job(args))
    extra = []
    if "generations" in cfg.callbacks:
        extra.append("callbacks.generations.num_prompts=0")  # 3 greedy continuations a pass
    if "eval_generations" in cfg.task:
        extra.append("task.eval_generations=0")  # 32 scored answers a validation
    if cfg.data.streaming:
        # 20 rows held out for validation instead of 1,000: the test's files hold 300
        extra.append("data.streaming_validation_rows=20")
    budget = [*budget, *extra]
    keys = {_key(b) for b in budget}
    return [*(a for a in args if _key(a) not in keys), *budget]


def with_merged(command: ReadmeCommand, prior: Path) -> list[str]:
    """The command's arguments plus those of the commands MERGED_INTO it."""
    args = substituted(command, prior)
    for member, leader in MERGED_INTO.items():
        if leader == command.text:
            keys = {_key(a) for a in args}
            args += [a for a in substituted(BY_TEXT[member], prior) if _key(a) not in keys]
    return args


def _check_run(command: ReadmeCommand, run_cli, prior: Path, folder: Path) -> None:
    args = with_merged(command, prior)
    resumes = any(a.startswith("ckpt_path=") for a in args)
    args = _budgeted(args, RESUME_BUDGET if resumes else BUDGET)
    # W&B offline, as README's logger=wandb runs without an API key (conftest disables it)
    result = run_cli(args, cwd=folder, env={"WANDB_MODE": "offline"})
    assert result.returncode == 0, f"{shlex.join(args)}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr
    if "hparams_search=optuna" in args:
        (sweep,) = (folder / "outputs" / "multiruns").glob("*")
        assert len(_jobs(sweep)) == 2  # n_trials
        assert (sweep / "optimization_results.yaml").is_file()
        for job in _jobs(sweep):
            _assert_results(job)
        return
    named = [a.split("=", 1)[1] for a in args if _key(a) == "paths.output_dir"]
    if named:
        run_dir = folder / named[0]
    else:
        (run_dir,) = (d for d in (folder / "outputs" / "runs").iterdir() if d.name != "prior")
    results = _assert_results(run_dir, steps=4 if resumes else 2)
    if resumes:
        assert results["resumed_from"], results
    for promised in _promised_files(args, results):
        assert (run_dir / promised).exists(), promised


def _promised_files(args: list[str], results: dict) -> list[str]:
    """What README says such a run writes besides results.json."""
    text = " ".join(args)
    # GRPO logs no validation loss: on a 2-step budget its plot is of the reward (metrics.png)
    plot = "plots/metrics.png" if "grpo" in text else "plots/loss.png"
    files = ["hf_model", plot, "logs/version_0/metrics.csv"]
    files += ["tensorboard"] * ("tensorboard" in text) + ["mlruns"] * ("mlflow" in text)
    files += ["wandb"] * ("logger=wandb" in text)
    if "peft.export=adapter" in text:
        files.append("hf_model/adapter_config.json")
    if results.get("predictions"):
        files.append("predictions.jsonl")
    return files


def _check_plots(command, run_cli, prior: Path, folder: Path) -> None:
    for png in (prior / "plots").glob("*.png"):
        png.unlink()
    args = substituted(command, prior)
    result = run_cli(args, cwd=folder, module=command.module)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (prior / "plots" / "loss.png").is_file()
    assert str(prior / "plots" / "loss.png") in result.stdout


def _check_sweep_report(command, run_cli, prior: Path, sweep: Path, folder: Path) -> None:
    copy = folder / "outputs" / "multiruns" / sweep.name
    shutil.copytree(sweep, copy)
    args = substituted(command, prior, copy)
    result = run_cli(args, cwd=folder, module=command.module)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val/loss" in result.stdout and "*" in result.stdout  # the metrics, the best job
    assert (copy / "comparison.png").is_file()


def _check_chat(command: ReadmeCommand, prior: Path, folder: Path) -> None:
    """Fed what README pipes into it (an `echo` before it), else one line: a reply, exit 0."""
    import subprocess
    import sys

    echoed = [shlex.split(a)[1:] for a in command.after if shlex.split(a)[:1] == ["echo"]]
    text = " ".join(echoed[-1]) if echoed else "hello"
    args = [*substituted(command, prior), "--max-new-tokens", "8"]
    result = subprocess.run(
        [sys.executable, "-m", command.module, *args], input=text + "\n", cwd=folder,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), "no reply"


def _check_recipe(run_cli, folder: Path) -> None:
    # --out: the recipe's default target is the bundled model inside the package itself
    out = folder / "tiny-gpt2-pystdlib"
    args = ["--out", str(out), *BUDGET, "callbacks.generations.num_prompts=0"]
    args += ["trainer.val_check_interval=2", f"paths.output_dir={folder / 'pretrain'}"]
    result = run_cli(args, cwd=folder, module="lit_ft.recipes.tiny_gpt2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    record = json.loads((out / "pretraining_results.json").read_text())
    assert all(math.isfinite(v) for v in record["metrics"]["after"].values())
