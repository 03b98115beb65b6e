"""What a run shows and leaves behind: loggers' files, PNG plots, progress lines, samples."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

import lit_ft
from lit_ft.plots import plot_run, read_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _short(overrides: list[str]) -> list[str]:
    # 10 steps, validating at 5 and 10: enough rows for every logger and plot.
    return [*overrides, "trainer.max_steps=10", "trainer.val_check_interval=5", "export=false"]


def _assert_png(path: Path) -> None:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    height, width, _ = imread(path).shape
    assert height > 100 and width > 100


@pytest.mark.slow
def test_run_writes_plots_every_logger_progress_lines_and_samples(
    tiny_overrides, monkeypatch, capsys
):
    """One run with all loggers at once (`logger=[...]` selects several from the group)."""
    monkeypatch.delenv("WANDB_MODE", raising=False)  # conftest disables W&B; here: mode=auto
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    results = lit_ft.train_from_overrides(
        [
            *_short(tiny_overrides),
            "logger=[tensorboard,wandb,mlflow]",
            "trainer.enable_progress_bar=true",
            "callbacks.progress.every_n_steps=5",
        ]
    )
    run_dir = Path(results["output_dir"])

    names = sorted(Path(p).name for p in results["plots"])
    assert names == ["learning_rate.png", "loss.png", "metrics.png"]
    for path in results["plots"]:
        _assert_png(Path(path))

    # CSV (always kept: the plots read it), with the run's config as hparams.yaml
    assert (run_dir / "logs" / "version_0" / "metrics.csv").is_file()
    assert (run_dir / "logs" / "version_0" / "hparams.yaml").is_file()
    # TensorBoard event files
    events = list((run_dir / "tensorboard" / "version_0").glob("events.out.tfevents.*"))
    assert events and sum(e.stat().st_size for e in events) > 0
    # W&B: offline at once without an API key, with the sync command printed
    out = capsys.readouterr().out
    assert "W&B offline (no WANDB_API_KEY" in out and "wandb sync" in out
    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")
    assert list(offline_run.glob("*.wandb"))  # the file `wandb sync` uploads
    # MLflow: a local file store, <experiment>/<run>/{meta.yaml,metrics,params}
    (meta,) = (run_dir / "mlruns").glob("*/*/meta.yaml")
    metrics = meta.parent / "metrics"
    assert (metrics / "val" / "loss").is_file() and (metrics / "train" / "loss").is_file()
    assert (meta.parent / "params" / "optimizer" / "lr").read_text() == "0.003"

    # Not a terminal (pytest captures stdout): plain lines, one per 5 steps and per validation.
    lines = [line for line in out.splitlines() if line.startswith("[lit_ft] step ")]
    assert lines and lines[0].startswith("[lit_ft] step 5/10 loss ")
    assert "tok/s" in lines[0] and " lr " in lines[0]
    # ... the peak memory so far (lit_ft/observe/memory.py), then elapsed and ~time left
    assert re.search(r" \d+(\.\d)?[MG] \d+:\d\d ~\d+:\d\d left$", lines[0]), lines[0]
    # Not a terminal: the same fields on every line, in the same order (read by column)
    fields = r"\[lit_ft\] step \d+/10 loss \S+ lr \S+ \S+ tok/s mfu \S+ \S+ \d+:\d\d ~\S+ left"
    assert all(re.fullmatch(fields, line) for line in lines), lines
    assert "[lit_ft] validation (step 10): val/loss" in out

    samples = [json.loads(x) for x in (run_dir / "generations.jsonl").read_text().splitlines()]
    # 3 prompts at the evaluation before training (step 0) and the validations at 5 and 10;
    # the evaluation after training repeats step 10 and is not written twice.
    assert [s["step"] for s in samples] == [0] * 3 + [5] * 3 + [10] * 3
    assert all(s["prompt"] and isinstance(s["completion"], str) for s in samples)


def _write_log(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "step", "train/loss", "val/loss"])
        writer.writeheader()
        writer.writerows(rows)


def test_resumed_run_logs_are_joined_by_step_newer_wins(tmp_path, run_cli):
    # version_0 ran to step 30 and died; its checkpoint was at step 20, so version_1 re-did
    # 20..30 and went on to 40. Steps 20 and 30 must come from version_1.
    _write_log(
        tmp_path / "logs" / "version_0" / "metrics.csv",
        [{"step": s, "train/loss": 9.0 - s / 10} for s in (10, 20, 30)]
        + [{"step": 20, "val/loss": 8.0}],
    )
    _write_log(
        tmp_path / "logs" / "version_1" / "metrics.csv",
        [{"step": s, "train/loss": 1.0} for s in (20, 30, 40)],
    )
    series = read_metrics(tmp_path)
    assert series["train/loss"] == {10: 8.0, 20: 1.0, 30: 1.0, 40: 1.0}
    assert series["val/loss"] == {20: 8.0}
    assert [p.name for p in plot_run(tmp_path)] == ["loss.png"]  # no lr or other metrics logged

    # Redrawing from the command line; a directory without logs is refused clearly.
    (tmp_path / "plots" / "loss.png").unlink()
    result = run_cli([str(tmp_path)], module="lit_ft.plots")
    assert result.returncode == 0 and (tmp_path / "plots" / "loss.png").is_file()
    result = run_cli([str(tmp_path / "nothing")], module="lit_ft.plots")
    assert result.returncode == 2 and "has no logs/version_N/metrics.csv" in result.stderr


def test_debug_fast_dev_run_goes_through_every_step(tiny_overrides):
    results = lit_ft.train_from_overrides([*tiny_overrides, "debug=fast_dev_run"])
    assert results["metrics"]["train"]["steps"] == 1
    assert results["export_dir"] is None and results["metrics"]["before"] is None


def test_instruction_samples_prompt_with_the_whole_prompt_and_generate_the_answer():
    from lit_ft.observe.generations import prompt_of

    row = {"input_ids": [5, 6, 7, 8, 9, 10], "labels": [-100, -100, -100, 8, 9, 10]}
    assert prompt_of(row, prompt_tokens=2) == [5, 6, 7]  # the prompt, not its first 2 tokens
    assert prompt_of({"input_ids": list(range(40))}, prompt_tokens=16) == list(range(16))


@pytest.mark.slow
def test_learning_rate_is_logged_through_the_warmup(tiny_overrides, tmp_path):
    from lit_ft.plots import read_metrics

    overrides = [o for o in tiny_overrides if not o.startswith("trainer.max_steps")]
    lit_ft.train_from_overrides(
        [
            *overrides,
            "trainer.max_steps=8",
            "trainer.log_every_n_steps=5",
            "scheduler.warmup_steps=4",
            "evaluate_before=false",
            "callbacks.generations.num_prompts=0",
        ]
    )
    series = read_metrics(tmp_path / "run")
    (name, *_) = sorted(n for n in series if n.startswith("lr-"))
    steps = sorted(series[name])
    # every warmup step (the rate of step k logged at k, steps counted from 1), then the cadence
    assert steps[:5] == [1, 2, 3, 4, 5], steps
    assert series[name][1] < series[name][3] < series[name][5]  # rising: the warmup shows
    # the linear warmup by hand: step k (from 1) trains at lr x (k - 1) / 4
    assert series[name][3] == pytest.approx(3e-3 * 2 / 4)


def test_sample_prompts_and_answers_fit_the_model_positions():
    from types import SimpleNamespace

    from lit_ft.observe.generations import fit_positions

    config = SimpleNamespace(n_positions=64, model_type="gpt2")
    prompt, new = fit_positions(list(range(60)), 32, config)
    assert new == 32 and prompt == list(range(28, 60)) and len(prompt) + new <= 64
    assert fit_positions([1, 2, 3], 32, config) == ([1, 2, 3], 32)


# -- the figures behind MFU ------------------------------------------------------------------
def _real_flops_per_token(model, seq_len: int) -> float:
    """The reference: torch's FLOP counter over a real forward + backward of the model itself
    (not a meta copy), per token."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.randint(0, model.config.vocab_size, (1, seq_len))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids).logits.float().sum().backward()
    return counter.get_total_flops() / seq_len


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_flops_per_token_match_a_real_forward_and_backward(lora):
    """Under LoRA the frozen weights still cost their forward and input-gradient matmuls:
    the count is the real model's, not 6 x the trainable parameters."""
    from helpers.tiny_models import gpt2

    from lit_ft.model.peft import LoraSettings, apply_lora
    from lit_ft.observe.throughput import count_flops_per_token

    model = gpt2()
    # Attention as explicit matmuls: torch's counter does not see the CPU's fused attention
    # kernel, so the real pass would leave attention out (2 layers x 393,216 FLOPs at 32).
    model.set_attn_implementation("eager")
    if lora:
        model = apply_lora(model, LoraSettings(r=4, dropout=0.0, target_modules=["c_attn"]))
    flops, method = count_flops_per_token(model, seq_len=32)
    assert method == "measured"
    assert flops == pytest.approx(_real_flops_per_token(model, 32), rel=1e-6)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if lora:
        assert flops > 20 * 6 * trainable  # the old fallback's 6 x trainable is far off


def test_flops_fallback_counts_frozen_weights_forward_and_input_gradient(monkeypatch):
    """A model the meta device cannot build: 4 x frozen + 6 x trainable parameters, by hand."""
    import torch

    from lit_ft.observe import throughput

    def refuse(model):
        raise RuntimeError("no meta copy")

    monkeypatch.setattr(throughput, "_meta_copy", refuse)
    model = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.Linear(10, 10))  # 110 each
    model[0].requires_grad_(False)
    flops, method = throughput.count_flops_per_token(model, seq_len=8)
    assert flops == 4 * 110 + 6 * 110 and "frozen" in method


@pytest.mark.parametrize(
    "flag,dtype,name",
    [
        ("bf16-mixed", "bfloat16", "bf16"),
        ("bf16-true", "bfloat16", "bf16"),
        ("16-mixed", "float16", "fp16"),
        ("32-true", "float32", "fp32"),
    ],
)
def test_cpu_peak_is_timed_in_the_dtype_the_matmuls_run_in(monkeypatch, flag, dtype, name):
    """Under bf16-mixed the matmuls run in bf16 (on an AMX CPU ~4x fp32's rate): an fp32
    peak would read MFU ~4x too high. The timing is faked: each dtype its own rate."""
    from types import SimpleNamespace

    import torch

    from lit_ft.observe import throughput
    from lit_ft.training.amp import ClippingMixedPrecision

    fake_rate = {torch.float32: 1e11, torch.bfloat16: 4e11, torch.float16: 2e11}
    monkeypatch.setattr(throughput, "matmul_flops_per_s", lambda d: fake_rate[d])
    if flag.endswith("-mixed"):  # lit_ft's own plugin, as the run builds it on a CPU
        plugin = ClippingMixedPrecision(flag, "cpu")
    else:
        plugin = SimpleNamespace(precision=flag)
    trainer = SimpleNamespace(
        precision_plugin=plugin, strategy=SimpleNamespace(root_device=torch.device("cpu"))
    )
    peak, source, shown = throughput.peak_flops(trainer, configured=None)
    assert peak == fake_rate[getattr(torch, dtype)]
    assert shown == name and source == f"measured {name} matmul on this CPU"
    configured = throughput.peak_flops(trainer, configured=5e12)
    assert configured == (5e12, "configured", name)


def test_bf16_run_prints_true_model_size_no_lightning_summary_and_time_to_first_step(
    tiny_overrides, tmp_path, capsys, caplog, recwarn
):
    """Lightning's summary table ("Total FLOPs: 0", and its bf16-mixed size warning) is off;
    the pre-flight's own counts match a hand count of the tiny GPT-2 and the checkpoint.

    The same run's time to the first step counts from the run's start: not from what /proc
    says the process started at (a container's clock can put that before the run by
    minutes), so within the run's wall time, and after the data preparation that comes
    before any step."""
    overrides = [o for o in tiny_overrides if not o.startswith("trainer.precision")]
    results = lit_ft.train_from_overrides(
        [
            *overrides,
            "trainer.precision=bf16-mixed",
            "trainer.max_steps=2",
            "evaluate_before=false",
            "export=false",
            "callbacks.generations.num_prompts=0",
        ]
    )
    captured = capsys.readouterr()
    console = captured.out + captured.err + caplog.text + " ".join(str(w.message) for w in recwarn)
    assert "Total FLOPs" not in console
    assert "is not supported by the model summary" not in console
    # By hand, GPT-2 with 2 layers, width 32, 64 positions, 512 tokens (the head is tied to
    # the embedding): 512x32 + 64x32 + 2 x (2x64 + 32x96+96 + 32x32+32 + 32x128+128
    # + 128x32+32) + 64 = 16,384 + 2,048 + 2 x 12,704 + 64 = 43,904.
    assert "model: 43,904 parameters (all trainable); checkpoint ~" in captured.out
    # fp32 weights + AdamW's two moments: 43,904 x 12 bytes = 526,848 = 514 KB
    assert "checkpoint ~514 KB" in captured.out
    # the file really is about that: the weights and moments plus a little loop state
    saved = (tmp_path / "run" / "checkpoints" / "last.ckpt").stat().st_size
    assert 526_848 <= saved <= 1.25 * 526_848, saved
    first_step = results["throughput"]["time_to_first_step_s"]
    assert results["data_prep_s"] <= first_step <= results["wall_time_s"]


def test_one_step_numbering_in_console_metrics_csv_and_plots(tiny_overrides, tmp_path, capsys):
    """The console's "step N loss x" is metrics.csv's row N, and "validation (step N)" its
    validation row N, N counted by hand: the N-th training batch (no accumulation: one
    optimizer step each), recorded by a test callback that knows nothing of Lightning's
    counters."""
    losses = tmp_path / "losses.jsonl"
    results = lit_ft.train_from_overrides(
        [
            *_short(tiny_overrides),
            "trainer.enable_progress_bar=true",
            "callbacks.progress.every_n_steps=5",
            "callbacks.generations.num_prompts=0",
            f"+callbacks.losses={{_target_: helpers.callbacks.LossLog, path: '{losses}'}}",
        ]
    )
    out = capsys.readouterr().out
    by_hand = {
        n: json.loads(line)["loss"]
        for n, line in enumerate(losses.read_text().splitlines(), start=1)
    }
    assert len(by_hand) == 10
    series = read_metrics(results["output_dir"])

    console = dict(re.findall(r"\[lit_ft\] step (\d+)/10 loss (\S+) ", out))
    assert sorted(int(n) for n in console) == [5, 10]
    for n, shown in console.items():
        assert float(shown) == pytest.approx(by_hand[int(n)], rel=1e-3)  # shown to 4 digits
        assert series["train/loss"][int(n)] == pytest.approx(by_hand[int(n)], rel=1e-6)
    assert sorted(series["train/loss"]) == [5, 10]  # the rows of log_every_n_steps=5

    validations = dict(re.findall(r"\[lit_ft\] validation \(step (\d+)\): val/loss (\S+)", out))
    assert sorted(validations) == ["10", "5"]
    for n, shown in validations.items():
        assert series["val/loss"][int(n)] == pytest.approx(float(shown), rel=1e-3)
    assert 0 in series["val/loss"]  # the evaluation before training: step 0
    # the evaluation's return and results.json hold no row number among the metrics
    assert "step" not in results["metrics"]["after"] and "step" not in results["metrics"]["before"]


@pytest.mark.slow
def test_a_resumed_run_reports_the_whole_run(tiny_overrides, tmp_path):
    """Resumed at step 4 and run to 8: results.json counts 8 steps from 0, the first step's
    loss is the original run's, and the tokens are both parts' (8 steps x 8 rows x 32)."""
    quiet = ["export=false", "evaluate_before=false", "callbacks.generations.num_prompts=0"]
    quiet.append("trainer.val_check_interval=4")  # last.ckpt at step 4, from a validation
    overrides = [o for o in tiny_overrides if not o.startswith("trainer.max_steps")]
    first = lit_ft.train_from_overrides([*overrides, *quiet, "trainer.max_steps=4"])
    whole = lit_ft.train_from_overrides(
        [*overrides, *quiet, "trainer.max_steps=8", "ckpt_path=last"]
    )
    part, train = first["metrics"]["train"], whole["metrics"]["train"]
    assert part["steps"] == 4 and part["resumed_at_step"] is None
    assert train["steps"] == 8 and train["resumed_at_step"] == 4
    assert train["loss_first_step"] == part["loss_first_step"]
    assert train["tokens"] == 8 * 8 * 32  # every LM block is full: no padding
    assert train["train_seconds"] > part["train_seconds"]
    # the resumed part's rows on the cadence of the run's one numbering (every 5 steps)
    assert sorted(read_metrics(whole["output_dir"])["train/loss"]) == [5]


def test_mfu_that_cannot_be_computed_is_left_out_with_the_reason():
    from lit_ft.observe.throughput import ThroughputLogger

    counter = ThroughputLogger()
    counter.flops_per_token, counter.peak_source = 1e6, "cuda:0 is not in Lightning's table"
    counter._measured.update(tokens=5_120, samples=160, seconds=2.0, steps=10)
    summary = counter.summary()
    assert "mfu" not in summary and summary["tokens_per_s"] == 2_560  # 5,120 tokens / 2 s
    assert summary["mfu_left_out"] == "no peak FLOP/s (cuda:0 is not in Lightning's table)"
    counter.peak = 1e10  # by hand: 2,560 tok/s x 1e6 FLOPs per token / 1e10 = 0.256
    assert counter.summary()["mfu"] == 0.256 and "mfu_left_out" not in counter.summary()
