"""An interrupted and resumed run is bit-identical to the uninterrupted one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from helpers.callbacks import REPRODUCIBLE_ENV
from helpers.config import tiny_run_overrides
from safetensors.torch import load_file

pytestmark = pytest.mark.slow
HELPERS = str(Path(__file__).parent)


def _run(run_cli, overrides, log: Path, extra=()):
    args = [
        *overrides,
        # weights: true logs a digest of the weights each micro-batch used
        "+callbacks.loss_log={_target_: helpers.callbacks.LossLog, "
        f"path: '{log}', weights: true}}",
        *extra,
    ]
    env = {
        "PYTHONPATH": os.pathsep.join([HELPERS, os.environ.get("PYTHONPATH", "")]),
        **REPRODUCIBLE_ENV,
    }
    return run_cli(args, env=env)


def _losses(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return state["state_dict"]


CASES = {
    # name: (extra overrides, kill at optimizer step, micro-batch into the next window, signal)
    "mid_epoch": ([], 22, 0, "SIGKILL"),
    "across_epoch_boundary": ([], 27, 0, "SIGKILL"),  # resumes at step 24 or 25, epoch 0
    "accumulation_off_boundary": (["trainer.accumulate_grad_batches=3"], 7, 1, "SIGKILL"),
    "warmup_schedule": (["scheduler=cosine", "scheduler.warmup_steps=10"], 13, 0, "SIGKILL"),
    # SIGTERM mid-window: the run finishes the window, saves, exits 3; resuming is exact.
    "sigterm_preemption": (["trainer.accumulate_grad_batches=2"], 6, 1, "SIGTERM"),
    # bf16-mixed (what `auto` picks on bf16 CPUs and GPUs): lit_ft's AMP plugin with fused
    # AdamW and clipping. One epoch (25 steps): this host may emulate bf16 slowly.
    "bf16_mixed_sigkill": (
        ["trainer.precision=bf16-mixed", "trainer.max_epochs=1"],
        14,
        0,
        "SIGKILL",
    ),
    "bf16_mixed_sigterm": (
        [
            "trainer.precision=bf16-mixed",
            "trainer.max_epochs=1",
            "trainer.accumulate_grad_batches=2",
        ],
        6,
        1,
        "SIGTERM",
    ),
}


# Known, open: with accumulation 3, one resumed loss moved by one float32 rounding step
# (5.848184586 against 5.848185062, 8e-8 relative) in 2 of 3 fresh-clone CI runs [Xeon AMX],
# never in 30 repeats on the same machine kind, idle or loaded, and MKL_CBWR=AUTO,STRICT did
# not remove it. The case may drift that far and no further: it is then reported as an
# expected failure whose reason says which records moved and whether the weights had.
KNOWN_DRIFT = {"accumulation_off_boundary": 1e-6}


@pytest.mark.parametrize("case", list(CASES))
def test_killed_and_resumed_run_matches_uninterrupted(
    case, run_cli, tiny_tokenizer_dir, text_file, tmp_path
):
    extra, kill_step, micro, sig = CASES[case]
    common = [
        "data.batch_size=32",  # 25 batches per epoch: 2 epochs, every kill point before 50
        "trainer.max_epochs=2",
        "trainer.max_steps=-1",
        "callbacks.resumable_checkpoint.every_n_train_steps=4",
        # GPT-2 configs keep dropout at 0.1: the RNG state matters for every step
        "evaluate_before=false",
        *extra,
    ]
    _check_kill_and_resume(
        run_cli, tmp_path, common, tiny_tokenizer_dir, text_file, kill_step, micro, sig,
        drift=KNOWN_DRIFT.get(case),
    )  # fmt: skip


def test_length_grouped_instruction_run_resumes_exactly(
    run_cli, tiny_tokenizer_dir, text_file, tmp_path
):
    """Variable-length SFT examples in length-grouped order (data.group_by_length=true):
    the resumed run continues the same grouped epoch, across an epoch boundary."""
    words = text_file.read_text().split()
    rows = [
        {"prompt": " ".join(words[i : i + 2 + i % 9]), "response": words[i + 1]}
        for i in range(0, 4000, 10)
    ]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    common = [
        "task=instruction",
        "data.path=json",
        f"data.data_files={data}",
        "data.group_by_length=true",
        "data.batch_size=16",  # 360 training rows: 23 batches per epoch
        "trainer.max_epochs=2",
        "trainer.max_steps=-1",
        "callbacks.resumable_checkpoint.every_n_train_steps=4",
        "evaluate_before=false",
    ]
    _check_kill_and_resume(run_cli, tmp_path, common, tiny_tokenizer_dir, text_file, 30, 0)


def test_dpo_run_resumes_exactly(run_cli, tiny_tokenizer_dir, text_file, tmp_path):
    """Preference tuning with a frozen reference copy: the resumed run's reference is again
    the starting model (copied before the checkpoint loads), so losses match bit for bit."""
    words = text_file.read_text().split()
    rows = [
        {"prompt": " ".join(words[i : i + 3]), "chosen": words[i + 3], "rejected": words[i + 7]}
        for i in range(0, 1700, 10)
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    common = [
        "task=dpo",
        "data.path=json",
        f"data.data_files={data}",
        "data.batch_size=8",  # 161 training pairs: 21 batches, one epoch
        "trainer.max_epochs=1",
        "trainer.max_steps=-1",
        "callbacks.resumable_checkpoint.every_n_train_steps=4",
        "callbacks.generations.num_prompts=0",
        "evaluate_before=false",
    ]
    _check_kill_and_resume(run_cli, tmp_path, common, tiny_tokenizer_dir, text_file, 10, 0)


def test_reward_model_run_resumes_exactly(run_cli, tiny_tokenizer_dir, text_file, tmp_path):
    """A reward model on pairs with margins, dropout left on (task.disable_dropout=false), so
    the resumed run must also restore the random state its dropout masks come from."""
    words = text_file.read_text().split()
    rows = [
        {"prompt": " ".join(words[i : i + 3]), "chosen": words[i + 3], "rejected": words[i + 7],
         "margin": (i % 3) / 2}
        for i in range(0, 1700, 10)
    ]  # fmt: skip
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    common = [
        "task=reward_model",
        "task.disable_dropout=false",
        "data.path=json",
        f"data.data_files={data}",
        "data.margin_column=margin",
        "data.batch_size=8",  # 161 training pairs: 21 batches, one epoch
        "trainer.max_epochs=1",
        "trainer.max_steps=-1",
        "callbacks.resumable_checkpoint.every_n_train_steps=4",
        "callbacks.generations.num_prompts=0",
        "evaluate_before=false",
    ]
    _check_kill_and_resume(run_cli, tmp_path, common, tiny_tokenizer_dir, text_file, 10, 0)


GRPO_CASES = {
    # name: (extra overrides, kill at optimizer step, micro-batch into the next window)
    "each_window_once": ([], 10, 0),
    # 3 steps on each window's rollouts, 2 micro-batches a step: the checkpoint of step 8 is
    # inside a window (8 = 2 x 3 + 2), so the resumed step 9 trains on rollouts that only the
    # checkpoint holds (their sampling policy is gone)
    "num_iterations": (["task.num_iterations=3", "trainer.accumulate_grad_batches=2"], 10, 1),
}


@pytest.mark.parametrize("case", list(GRPO_CASES))
def test_grpo_run_resumes_exactly(case, run_cli, tiny_tokenizer_dir, text_file, tmp_path):
    """GRPO samples its own training data: the resumed run must sample the same completions
    (the rollout stream is seeded by seed, step, batch and rank), and its dropout (on here)
    must draw the same masks, so losses and weights match bit for bit."""
    extra, kill_step, micro = GRPO_CASES[case]
    words = text_file.read_text().split()
    rows = [{"prompt": " ".join(words[i : i + 4])} for i in range(0, 1200, 20)]
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    common = [
        "task=grpo",
        "task.reward_funcs=[lit_ft.tasks.rewards:length_penalty]",
        "task.num_generations=4",
        "task.max_new_tokens=8",
        "data.path=json",
        f"data.data_files={data}",
        "data.batch_size=2",  # 54 training prompts: 27 batches, one epoch
        "trainer.max_epochs=1",
        "trainer.max_steps=-1",
        "callbacks.resumable_checkpoint.every_n_train_steps=4",
        "callbacks.generations.num_prompts=0",
        "evaluate_before=false",
        *extra,
    ]
    _check_kill_and_resume(
        run_cli, tmp_path, common, tiny_tokenizer_dir, text_file, kill_step, micro
    )


@pytest.mark.parametrize("mode", ["with_replacement", "without_replacement"])
def test_mixture_run_resumes_exactly(mode, run_cli, tiny_tokenizer_dir, text_file, tmp_path):
    """data=mixture: the resumed run draws the rest of the interrupted epoch, and the next
    epochs, from the sources as the uninterrupted one does."""
    words = text_file.read_text().split()
    half = len(words) // 2
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps({"text": " ".join(words[i : i + 40])}) + "\n"
                         for i in range(0, half, 40)))  # fmt: skip
    b.write_text("".join(json.dumps({"body": " ".join(words[i : i + 40])}) + "\n"
                         for i in range(half, len(words), 40)))  # fmt: skip
    sources = (
        f"[{{label: a, path: json, data_files: '{a}', weight: 0.7}},"
        f" {{label: b, path: json, data_files: '{b}', weight: 0.3,"
        " columns: {text_column: body}}]"
    )
    common = [
        "data=mixture",
        f"data.sources={sources}",
        f"data.mixture_mode={mode}",
        "data.mixture_size=160",  # 20 batches of 8 an epoch: the kill at 10, 2 epochs
        "trainer.max_epochs=2",
        "trainer.max_steps=-1",
        "callbacks.resumable_checkpoint.every_n_train_steps=4",
        "evaluate_before=false",
    ]
    _check_kill_and_resume(run_cli, tmp_path, common, tiny_tokenizer_dir, text_file, 10, 0)


def _check_kill_and_resume(
    run_cli, tmp_path, common, tokenizer_dir, text_file, kill_step, micro, sig="SIGKILL",
    drift: float | None = None,
):  # fmt: skip
    """Run to the end; run again, killed at `kill_step`; resume with ckpt_path=last: the
    resumed losses, the weights each micro-batch used, and the final weights must equal the
    uninterrupted run's, bit for bit. `drift`: a known case whose losses may move by up to
    this relative amount (an expected failure that says what moved; more fails)."""
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    full = tiny_run_overrides(tokenizer_dir, text_file, full_dir) + common
    cut = tiny_run_overrides(tokenizer_dir, text_file, cut_dir) + common
    for args in (full, cut):
        args.remove("trainer.max_steps=30")

    result = _run(run_cli, full, tmp_path / "full.jsonl")
    assert result.returncode == 0, result.stderr[-3000:]

    kill = (
        "+callbacks.kill={_target_: helpers.callbacks.KillAt, "
        f"step: {kill_step}, micro_batch: {micro}, sig: {sig}}}"
    )
    result = _run(run_cli, cut, tmp_path / "cut.jsonl", [kill])
    if sig == "SIGTERM":
        assert result.returncode == 3, result.stderr[-3000:]
        assert "SIGTERM received: saved" in result.stdout and "ckpt_path=last" in result.stdout
        assert "Traceback" not in result.stderr
    else:
        assert result.returncode == -9
    result = _run(run_cli, cut, tmp_path / "resumed.jsonl", ["ckpt_path=last"])
    assert result.returncode == 0, result.stderr[-3000:]

    reference = _losses(tmp_path / "full.jsonl")
    resumed = _losses(tmp_path / "resumed.jsonl")
    start = len(reference) - len(resumed)
    assert 0 < start < len(reference)
    full_w, cut_w = _final_weights(full_dir), _final_weights(cut_dir)
    assert full_w.keys() == cut_w.keys()
    same_end = all(torch.equal(full_w[k], cut_w[k]) for k in full_w)
    if resumed != reference[start:] or not same_end:
        report, worst = _drift_report(
            reference, resumed, start, _losses(tmp_path / "cut.jsonl"), same_end
        )
        if drift is not None and worst <= drift:
            pytest.xfail(report)
        raise AssertionError(report)
    full_x, cut_x = (load_file(d / "hf_model" / "model.safetensors") for d in (full_dir, cut_dir))
    assert full_x.keys() == cut_x.keys()
    assert all(torch.equal(full_x[k], cut_x[k]) for k in full_x)  # the export too


def _drift_report(reference, resumed, start, cut_life, same_end) -> tuple[str, float]:
    """What moved between the uninterrupted run and the resumed life, and the largest
    relative loss difference (inf when a record is of another batch)."""
    pairs = list(zip(resumed, reference[start:], strict=True))
    moved = [i for i, (a, b) in enumerate(pairs) if a != b]
    worst = 0.0
    for i in moved:
        a, b = pairs[i]
        if _batch_of(a) != _batch_of(b):
            worst = float("inf")  # other batches: not a rounding step
        else:
            worst = max(worst, abs(a["loss"] - b["loss"]) / abs(b["loss"]))
    weights_moved = next(
        (i for i in moved if pairs[i][0]["weights"] != pairs[i][1]["weights"]), None
    )
    lines = [
        f"{len(moved)} of {len(pairs)} resumed records differ (largest relative loss change "
        f"{worst:.2e})",
        *(f"  record {i} (step {a['step']}, batch {a['batch']}): "
          + (f"loss {a['loss']!r} != {b['loss']!r}" if a["loss"] != b["loss"] else "same loss")
          + ("" if a["weights"] == b["weights"] else ", other weights")
          for i, (a, b) in ((i, pairs[i]) for i in moved[:5])),
        "  the weights each micro-batch used: "
        + ("identical" if weights_moved is None else f"moved from record {weights_moved} on"),
        f"  the final weights: {'identical' if same_end else 'differ'}",
        "  the killed run's first life "
        + ("matched" if cut_life == reference[: len(cut_life)] else "did not match")
        + " the uninterrupted run",
    ]  # fmt: skip
    return "\n".join(lines), worst


def _batch_of(record: dict) -> dict:
    """A record without what the arithmetic makes (the loss, the weights): which batch."""
    return {k: v for k, v in record.items() if k not in ("loss", "weights")}


def test_resume_onto_changed_data_is_refused(run_cli, tiny_tokenizer_dir, text_file, tmp_path):
    run_dir = tmp_path / "run"
    args = tiny_run_overrides(tiny_tokenizer_dir, text_file, run_dir) + [
        "trainer.max_steps=8",
        "callbacks.resumable_checkpoint.every_n_train_steps=4",
        "evaluate_before=false",
    ]
    assert run_cli(args).returncode == 0

    other = tmp_path / "other.txt"
    other.write_text(text_file.read_text()[::-1])  # same size, different text
    changed = [
        a if not a.startswith("data.data_files=") else f"data.data_files={other}" for a in args
    ]
    result = run_cli([*changed, "trainer.max_steps=12", "ckpt_path=last"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "refusing to resume" in result.stderr and "train_data" in result.stderr
    assert "force_resume=true" in result.stderr

    result = run_cli([*args, "trainer.max_steps=12", "ckpt_path=last", "seed=7"])
    assert result.returncode == 2 and "sampler_seed (42 -> 7)" in result.stderr

    forced = run_cli([*changed, "trainer.max_steps=12", "ckpt_path=last", "force_resume=true"])
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert "force_resume=true: resuming although" in forced.stderr


def test_a_finished_run_resumed_with_more_steps_trains_them(
    run_cli, tiny_tokenizer_dir, text_file, tmp_path
):
    """4 steps (stopped mid-epoch by max_steps, saved at the epoch-end hook), then resumed
    with max_steps=8: steps 5-8 are trained, on the 8-step schedule from step 5 on."""
    from lit_ft.plots import read_metrics

    run_dir = tmp_path / "run"
    args = [
        *tiny_run_overrides(tiny_tokenizer_dir, text_file, run_dir),
        "trainer.log_every_n_steps=1",
        "evaluate_before=false",
        "scheduler=linear",
    ]
    assert run_cli([*args, "trainer.max_steps=4"]).returncode == 0
    result = run_cli([*args, "trainer.max_steps=8", "ckpt_path=last"])
    assert result.returncode == 0, result.stderr[-3000:]
    train = json.loads((run_dir / "results.json").read_text())["metrics"]["train"]
    assert train["steps"] == 8 and train["resumed_at_step"] == 4
    metrics = read_metrics(run_dir)
    assert sorted(metrics["train/loss"]) == list(range(1, 9))
    # linear decay over 8 steps, no warmup: step 5 trains at 3e-3 x (8 - 4) / 8
    (lr,) = [name for name in metrics if name.startswith("lr-")][:1]
    assert metrics[lr][5] == pytest.approx(3e-3 * 4 / 8)


def test_vision_run_resumes_exactly(run_cli, tiny_tokenizer_dir, text_file, tmp_path):
    """task=vision_instruction: the resumed run loads the same images for the same chats in
    the same order (pixels are made per batch, not cached), so losses and weights match."""
    from helpers.tiny_models import tiny_vlm_dir

    common = [
        "task=vision_instruction",
        "model=tiny_vlm",
        f"model.name_or_path={tiny_vlm_dir('llava')}",
        "model.from_scratch=false",
        "model.model_type=null",
        "model.config_overrides=null",
        "data=shape_chats",
        "data.data_files=null",
        "data.block_size=128",
        "data.batch_size=16",  # 90 batches an epoch: the kill at 7, the last save at 4
        "trainer.max_epochs=1",
        "trainer.max_steps=12",
        "task.eval_generations=8",
        "callbacks.resumable_checkpoint.every_n_train_steps=4",
        "callbacks.generations.num_prompts=0",
        "evaluate_before=false",
    ]
    _check_kill_and_resume(run_cli, tmp_path, common, tiny_tokenizer_dir, text_file, 7, 0)
