"""`python -m lit_ft.run` end to end in a subprocess, on a tiny GPT-2 and local text."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from helpers.config import tiny_run_overrides
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_overrides(tiny_tokenizer_dir, text_file, tmp_path_factory) -> list[str]:
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    return tiny_run_overrides(tiny_tokenizer_dir, text_file, run_dir)


@pytest.fixture(scope="module")
def finished_run(run_cli, run_overrides):
    """One 30-step run shared by the tests below (the resume test, last, extends it)."""
    result = run_cli([*run_overrides, "trainer.val_check_interval=10", "export_last=true"])
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(run_overrides[-1].split("=", 1)[1]), result


def test_run_trains_and_writes_complete_results(finished_run):
    run_dir, result = finished_run
    results = json.loads((run_dir / "results.json").read_text())
    before, after, train = (results["metrics"][k] for k in ("before", "after", "train"))
    assert set(before) == set(after) == {"val/loss", "val/ppl"}
    assert after["val/loss"] < before["val/loss"]
    assert after["val/ppl"] == pytest.approx(
        torch.exp(torch.tensor(after["val/loss"])).item(), rel=1e-5
    )
    assert train["steps"] == 30 and train["loss_last_10_steps"] < train["loss_first_step"]
    assert results["tokens_per_s"] > 0 and results["wall_time_s"] > 0
    # No GPU table on a CPU: MFU against a matmul timed on this machine.
    assert 0 < results["throughput"]["mfu"] < 1.5  # above 1 only if the matmul was disturbed
    assert results["throughput"]["peak_flops_from"] == "measured fp32 matmul on this CPU"
    assert train["tokens"] == 30 * 8 * 32  # steps x batch x block
    assert Path(results["best_checkpoint"]).is_file()
    assert Path(results["last_checkpoint"]).name == "last.ckpt"
    assert results["export_dir"] == str(run_dir / "hf_model")
    assert "validation perplexity" in result.stdout

    with open(run_dir / "logs" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("train/loss") for r in rows) and any(r.get("val/ppl") for r in rows)
    # The linear schedule was sized from the real step count: it has decayed at the last step.
    lrs = [float(r["lr-AdamW/pg1"]) for r in rows if r.get("lr-AdamW/pg1")]
    # the rates of steps 5, 10, ..., 30 (logged under those numbers) of a linear decay from
    # 3e-3: step k trains at 3e-3 x (31 - k) / 30, so 26/30 at step 5 and 1/30 at step 30
    assert max(lrs) == pytest.approx(3e-3 * 26 / 30) and lrs[-1] == pytest.approx(3e-3 / 30)
    assert (run_dir / "config.yaml").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()


def test_export_loads_with_auto_classes_and_generates(finished_run):
    run_dir, _ = finished_run
    export = run_dir / "hf_model"
    model = AutoModelForCausalLM.from_pretrained(export)
    tokenizer = AutoTokenizer.from_pretrained(export)
    inputs = tokenizer("The assert statement", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 8
    assert isinstance(tokenizer.decode(out[0]), str)
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id

    # The export holds the best checkpoint's weights (load_best_model_at_end).
    results = json.loads((run_dir / "results.json").read_text())
    state = torch.load(results["best_checkpoint"], weights_only=True)["state_dict"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[f"model.{name}"]), name


def test_last_checkpoint_export_on_request(finished_run):
    run_dir, _ = finished_run
    results = json.loads((run_dir / "results.json").read_text())
    assert results["export_last_dir"] == str(run_dir / "hf_model_last")
    model = AutoModelForCausalLM.from_pretrained(run_dir / "hf_model_last")
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(t, state[f"model.{n}"]) for n, t in model.state_dict().items())


def test_export_cli_from_any_checkpoint(finished_run, run_cli, tmp_path):
    run_dir, _ = finished_run
    out = tmp_path / "exported"
    result = run_cli([str(run_dir / "checkpoints" / "last.ckpt"), str(out)], module="lit_ft.export")
    assert result.returncode == 0, result.stderr[-2000:]
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    reference = AutoModelForCausalLM.from_pretrained(run_dir / "hf_model").eval()
    reference.load_state_dict({k[len("model.") :]: v for k, v in state.items()})
    ids = AutoTokenizer.from_pretrained(out)("x = 1", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(exported(ids).logits, reference(ids).logits)


def test_resume_from_last_continues_the_run(finished_run, run_cli, run_overrides):
    run_dir, _ = finished_run
    result = run_cli([*run_overrides, "trainer.max_steps=40", "ckpt_path=last"])
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    # the newest checkpoint: last.ckpt or the best one, both written at step 30
    assert Path(results["resumed_from"]).parent == run_dir / "checkpoints"
    # the whole run: 30 steps before the resume and 10 after (the record rides in the checkpoint)
    assert results["metrics"]["train"]["steps"] == 40
    assert results["metrics"]["train"]["resumed_at_step"] == 30
    # The resumed part logs next to the first part's metrics, which stay intact.
    first, resumed = (run_dir / "logs" / v / "metrics.csv" for v in ("version_0", "version_1"))
    with open(first) as f:
        assert max(int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")) == 30
    with open(resumed) as f:
        assert max(int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")) == 40


def test_early_stopping_stops_the_run(run_cli, tiny_overrides, tmp_path):
    result = run_cli(
        [
            *tiny_overrides,
            "callbacks=early_stopping",
            "callbacks.early_stopping.patience=1",
            "callbacks.early_stopping.min_delta=100",  # no improvement can count
            "trainer.val_check_interval=5",
        ]
    )
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["metrics"]["train"]["steps"] == 10  # validations at 5 and 10, then stop


def test_push_to_hub_is_refused_before_training(run_cli, tiny_overrides, tmp_path):
    args = [*tiny_overrides, "push_to_hub.enabled=true", "push_to_hub.repo_id=me/tiny"]
    result = run_cli(args, env={"HF_TOKEN": ""})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "push_to_hub.enabled=true but the upload cannot happen" in result.stderr
    assert "no Hugging Face token" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was trained


def test_user_errors_exit_2_with_one_message(run_cli, tiny_overrides, tmp_path):
    result = run_cli([*tiny_overrides, "ckpt_path=last", "task.name=translation"])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "task.name='translation' is unknown; available: causal_lm, instruction" in result.stderr
    assert not (tmp_path / "run").exists()  # Hydra made it; the refused run removed it again

    result = run_cli([*tiny_overrides, "ckpt_path=last"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "holds no checkpoint" in result.stderr and "paths.output_dir" in result.stderr


# words of the --help page's group lines that are prose, not options
HELP_PROSE = {"default", "or", "with", "a", "whole", "recipe", "e", "g", "model", "name_or_path"}
HELP_PROSE |= {"hub", "id", "local", "directory", "m", "chats", "preference", "pairs"}


def test_help_is_our_own_page_and_names_only_what_exists(run_cli):
    import re

    from lit_ft.config import compose, config_dir

    result = run_cli(["--help"])
    assert result.returncode == 0, result.stderr
    page = result.stdout
    assert page.startswith("lit_ft: fine-tune") and "Examples:" in page and "--hydra-help" in page
    choose = page.split("Choose (GROUP=OPTION):")[1].split("Common keys")[0]
    group, named = None, {}
    for line in choose.splitlines():
        for match in re.finditer(r"(\w+)=\s+([^=]+?)(?=\s{2,}\w+=|$)", line):
            group = match.group(1)
            named.setdefault(group, []).append(match.group(2))
        if "=" not in line and line.strip() and group:
            named[group].append(line)
    assert {"model", "data", "task", "trainer", "peft", "experiment", "hparams_search"} <= set(
        named
    )
    assert "tiny_bart" in " ".join(named["model"])  # continuation lines are read too
    for group, texts in named.items():
        options = re.findall(r"\b([a-z][a-z0-9_]+)\b", " ".join(texts))
        options = [o for o in options if o not in HELP_PROSE]
        for option in options:
            if (config_dir() / group / f"{option}.yaml").is_file():
                continue
            raise AssertionError(f"--help names {group}={option}, which has no conf file")
    keys = re.findall(r"\b([a-z_]+(?:\.[a-z_]+)+)=", page.split("Common keys")[1].split("Ex")[0])
    # a line that starts with task=<name> names that task's own keys
    tasks = dict(re.findall(r"^\s*task=(\w+) (.*)$", page, re.M))
    task_keys = {k: name for name, line in tasks.items() for k in re.findall(r"(task\.\w+)=", line)}
    for key in keys:
        cfg = compose([f"task={task_keys[key]}"] if key in task_keys else [])
        node = cfg
        for part in key.split("."):
            assert part in node, f"--help names {key}, which is not a config key"
            node = node[part]


# What the --help examples are run with: a tiny budget, outputs kept in the test's folder.
EXAMPLE_BUDGET = ["trainer.max_steps=2", "trainer.limit_val_batches=2"]


def _help_examples(page: str) -> list[list[str]]:
    import shlex

    lines = page.split("Examples:")[1].split("More:")[0].strip().splitlines()
    prefix = ["python", "-m", "lit_ft.run"]
    examples = [shlex.split(line) for line in lines]
    assert examples and all(e[:3] == prefix for e in examples), lines
    return [e[3:] for e in examples]


def _runs_offline(args: list[str]) -> bool:
    """The example's model and data are on this machine (the bundled model, local files)."""
    from lit_ft.config import compose
    from lit_ft.hub import LOCAL_DATA_BUILDERS, is_local_model

    one_job = [a.split(",")[0] for a in args if a != "-m"]  # a sweep's first job
    cfg = compose([a for a in one_job if not a.startswith(("paths.", "ckpt_path"))])
    return is_local_model(cfg.model.name_or_path) and cfg.data.path in LOCAL_DATA_BUILDERS


def test_help_examples_that_can_run_offline_do(run_cli, tmp_path, reference_text):
    """Every `--help` example whose model and data need no network runs to the end, on a tiny
    budget, from a folder holding the files it names (notes.txt; r.csv with text,label)."""
    page = run_cli(["--help"]).stdout
    # 300 lines: 5% held out = 15 lines, over one block of the model's 256 positions
    paragraphs = [p for p in reference_text.split("\n\n") if p.strip()][:300]
    (tmp_path / "notes.txt").write_text("\n".join(p.replace("\n", " ") for p in paragraphs))
    with open(tmp_path / "r.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for paragraph in paragraphs[:60]:
            writer.writerow([paragraph[:200], "long" if len(paragraph) > 300 else "short"])
    # The resume example continues an earlier run: the default run, which --help promises.
    first = run_cli([*EXAMPLE_BUDGET, "paths.output_dir=outputs/runs/first"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    ran = []
    for args in _help_examples(page):
        if not _runs_offline(args):
            continue
        args = [a.replace("outputs/runs/<run>", "outputs/runs/first") for a in args]
        budget = ["trainer.max_steps=4"] if "ckpt_path=last" in args else EXAMPLE_BUDGET
        args = [a for a in args if a.split("=")[0] not in {b.split("=")[0] for b in budget}]
        result = run_cli([*args, *budget], cwd=tmp_path)
        assert result.returncode == 0, f"{args}:\n{result.stderr[-3000:]}"
        assert "Traceback" not in result.stderr, args
        ran.append(args)
    # all but `model=gpt2 data=wikitext` (the Hub's GPT-2 and WikiText)
    assert len(ran) == len(_help_examples(page)) - 1, ran
    assert len(list((tmp_path / "outputs" / "multiruns").glob("*/*/results.json"))) == 3
    resumed = json.loads((tmp_path / "outputs/runs/first/results.json").read_text())
    assert resumed["resumed_from"], resumed


def test_console_and_run_log_hold_lit_ft_lines_not_library_noise(run_cli, tmp_path):
    """The bundled model with a new head (transformers' load report), LoRA (peft's deprecated
    call), output to a pipe as in `> log 2>&1`: no carriage-return progress bars, no load report,
    no Lightning INFO lines re-stamped by Hydra, no library deprecation warnings."""
    rows = [("fine and clear", "good"), ("broken and slow", "bad")] * 20
    with open(tmp_path / "r.csv", "w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    result = run_cli(
        [
            "task=sequence_classification",
            "data.path=csv",
            f"data.data_files={tmp_path / 'r.csv'}",
            "peft=lora",
            "trainer.max_steps=2",
            f"paths.output_dir={tmp_path / 'run'}",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # bytes: read_text (and the captured output's text mode) would turn a "\r" into "\n"
    run_log = (tmp_path / "run" / "run.log").read_bytes().decode()
    assert "\r" not in run_log
    for text in (result.stdout + result.stderr, run_log):
        assert "LOAD REPORT" not in text and "\x1b[" not in text  # no escape codes
        assert "][lightning" not in text  # Hydra's "[time][lightning...][INFO] - ..." lines
        assert "_pytree" not in text and "is_gradient_checkpointing" not in text
        assert "Tokenizing train" not in text and "Loading weights" not in text
    assert "[lit_ft] done in" in result.stdout and "[lit_ft] done in" in run_log
