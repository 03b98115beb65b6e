"""DDP on CPU (2 processes, gloo): same curve as one process, one run dir, exact resume, sweeps."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from helpers.config import tiny_run_overrides

HELPERS = str(Path(__file__).parent)
# Per-step |loss(1 process, batch 8) - mean over 2 processes of loss(batch 4)|. The global
# batch, data and weights are the same; only the order of float sums differs (gradients are
# averaged by an all-reduce), which moves the loss by ~1e-6 over 12 steps here.
TOLERANCE = 1e-4
NO_DROPOUT = "{n_layer: 2, n_head: 2, n_embd: 32, n_positions: 64, vocab_size: 512, "
NO_DROPOUT += "bos_token_id: 0, eos_token_id: 0, resid_pdrop: 0, embd_pdrop: 0, attn_pdrop: 0}"
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=4"]


def _args(tokenizer_dir, text_file, out: Path | None, log: Path, extra=()) -> list[str]:
    args = tiny_run_overrides(tokenizer_dir, text_file, out or Path("unused"))
    if out is None:  # let the run name its own directory (the ${now:...} one)
        args = [a for a in args if not a.startswith("paths.output_dir=")]
    args = [a for a in args if not a.startswith("model.config_overrides=")]
    return [
        *args,
        f"model.config_overrides={NO_DROPOUT}",
        "trainer.max_steps=12",
        "callbacks.resumable_checkpoint.every_n_train_steps=3",
        "evaluate_before=false",
        f"+callbacks.loss_log={{_target_: helpers.callbacks.LossLog, path: '{log}'}}",
        *extra,
    ]


def _env(root: Path) -> dict[str, str]:
    path = os.pathsep.join([HELPERS, os.environ.get("PYTHONPATH", "")])
    return {"PYTHONPATH": path, "LIT_FT_OUTPUT_ROOT": str(root)}


def _by_step(log: Path) -> dict[int, list[dict]]:
    """Records per optimizer step (1-based: the step a batch's update completes)."""
    steps = defaultdict(list)
    for line in log.read_text().splitlines():
        record = json.loads(line)
        steps[record["step"]].append(record)
    return steps


@pytest.mark.slow
def test_ddp_matches_one_process_and_resumes_exactly(
    run_cli, tiny_tokenizer_dir, text_file, tmp_path
):
    import lit_ft

    single_log, ddp_log = tmp_path / "single.jsonl", tmp_path / "ddp.jsonl"
    # The one-process reference runs in this process: a subprocess would add only start-up.
    lit_ft.train_from_overrides(_args(tiny_tokenizer_dir, text_file, tmp_path / "one", single_log))

    # Two processes of batch 4 (the same global batch of 8); rank 1 alone gets SIGTERM at
    # step 6: both ranks must stop there, rank 0 saves last.ckpt, the run exits 3.
    root = tmp_path / "outputs"
    kill = "+callbacks.kill={_target_: helpers.callbacks.KillAt, step: 6, sig: SIGTERM, rank: 1}"
    cut = run_cli(_args(tiny_tokenizer_dir, text_file, None, ddp_log, [*DDP, kill]), env=_env(root))
    assert cut.returncode == 3, cut.stderr[-3000:]
    run_dirs = list((root / "runs").iterdir())
    assert len(run_dirs) == 1, run_dirs  # one directory for both ranks
    run_dir = run_dirs[0]
    resumed = run_cli(
        _args(tiny_tokenizer_dir, text_file, run_dir, ddp_log, [*DDP, "ckpt_path=last"]),
        env=_env(root),
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(list((root / "runs").iterdir())) == 1
    assert "[lit_ft] resuming from" in resumed.stdout
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "last.ckpt",
        "step000009.ckpt",
        "step000012.ckpt",
    ]
    assert (run_dir / "hf_model").is_dir()
    train = json.loads((run_dir / "results.json").read_text())["metrics"]["train"]
    # the whole run (results.json describes it, not only the resumed part): 12 steps of
    # 8 sequences x 32 tokens, both ranks' tokens added
    assert train["steps"] == 12 and train["resumed_at_step"] == 6
    assert train["tokens"] == 12 * 8 * 32

    single, ddp = _by_step(single_log), _by_step(ddp_log)
    diffs = []
    for step, (record,) in single.items():
        ranks = sorted(ddp[step], key=lambda r: r["rank"])
        # After the resume each step appears once per rank: nothing repeated or skipped.
        assert [r["rank"] for r in ranks] == [0, 1], (step, ranks)
        # The two ranks saw distinct halves of the one-process batch.
        assert sorted(ranks[0]["first_ids"] + ranks[1]["first_ids"]) == sorted(record["first_ids"])
        diffs.append(abs(record["loss"] - (ranks[0]["loss"] + ranks[1]["loss"]) / 2))
    print(f"DDP vs one process, per-step |loss diff|: max {max(diffs):.2e} over {len(diffs)}")
    assert len(diffs) == 12 and max(diffs) < TOLERANCE


@pytest.mark.slow
def test_multirun_sweep_of_ddp_jobs(run_cli, tiny_tokenizer_dir, text_file, tmp_path):
    log = tmp_path / "sweep.jsonl"
    args = _args(tiny_tokenizer_dir, text_file, None, log, DDP)
    args = [a for a in args if not a.startswith("trainer.max_steps")]
    result = run_cli(
        ["-m", *args, "trainer.max_steps=2", "export=false", "optimizer.lr=1e-3,3e-3"],
        env=_env(tmp_path / "o"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "o" / "multiruns").iterdir()
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]  # one directory per job, none for the child ranks
    assert not (tmp_path / "o" / "runs").exists()
    for job in jobs:
        assert (sweep / job / "results.json").is_file()
        assert [p.name for p in (sweep / job / "checkpoints").iterdir()] == ["last.ckpt"]
    # Both jobs trained on two ranks: 2 steps x 2 ranks x 2 jobs.
    assert len(log.read_text().splitlines()) == 8


def _processes_with(marker: str) -> list[int]:
    """Processes whose environment holds `marker` (this test's own output root)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if marker.encode() in entry.joinpath("environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_failed_ddp_jobs_of_a_sweep_leave_no_process(
    run_cli, tiny_tokenizer_dir, text_file, tmp_path
):
    """Rank 0 of each job fails at step 1; rank 1 would wait in its next all-reduce."""
    log = tmp_path / "sweep.jsonl"
    args = _args(tiny_tokenizer_dir, text_file, None, log, DDP)
    fail = "+callbacks.fail={_target_: helpers.callbacks.FailAt, step: 1}"
    sweep = ["-m", *args, fail, "export=false", "optimizer.lr=1e-3,3e-3"]
    # A rank left alive would hold the output pipe open: the timeout turns a hang into a failure.
    result = run_cli(sweep, env=_env(tmp_path / "o"), timeout=240)
    assert result.returncode != 0
    assert "rank 0 fails at step 1" in result.stderr, result.stderr[-3000:]
    # Job 1 ran too: the failed job's ranks, ended, did not take the sweep down with them
    # (Lightning's launcher SIGKILLs its process when a rank it watches exits non-zero).
    (sweep_dir,) = (tmp_path / "o" / "multiruns").iterdir()
    assert "accumulation x 2 devices" in (sweep_dir / "1" / "run.log").read_text()  # pre-flight
    assert _processes_with(str(tmp_path / "o")) == []  # no rank of either job survives


@pytest.mark.parametrize(
    ("env", "task", "hydra", "refused"),
    [
        ({"WORLD_SIZE": "8", "LOCAL_RANK": "3"}, [], [], True),  # torchrun, no output dir named
        ({"WORLD_SIZE": "8", "LOCAL_RANK": "3"}, ["paths.output_dir=/shared/r"], [], False),
        ({"SLURM_NTASKS": "4", "SLURM_PROCID": "0"}, [], [], True),
        ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, [], [], False),  # one task: one dir
        ({"WORLD_SIZE": "2", "LOCAL_RANK": "1"}, [], ['hydra.run.dir="/r"'], False),  # our child
    ],
)
def test_external_launchers_must_name_the_run_dir(monkeypatch, env, task, hydra, refused):
    from omegaconf import OmegaConf

    from lit_ft.distributed import require_one_output_dir
    from lit_ft.errors import LitFtError

    for key in ("WORLD_SIZE", "LOCAL_RANK", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    hydra_cfg = OmegaConf.create({"overrides": {"task": task, "hydra": hydra}})
    if refused:
        with pytest.raises(LitFtError, match="set paths.output_dir to one directory"):
            require_one_output_dir(hydra_cfg)
    else:
        require_one_output_dir(hydra_cfg)


def test_sampler_splits_an_epoch_between_ranks_and_resumes_over_all(monkeypatch):
    import lit_ft.data.sampler as sampler_module
    from lit_ft.data.sampler import ResumableRandomSampler

    def ranks(sampler, world):
        out = []
        for rank in range(world):
            monkeypatch.setattr(sampler_module, "rank_and_world", lambda r=rank: (r, world))
            out.append(list(sampler))
        return out

    sampler = ResumableRandomSampler(101, seed=3)
    order = sampler.order(0)
    rank0, rank1 = ranks(sampler, 2)
    assert len(rank0) == len(rank1) == 51  # 101 padded to 102 with the first index again
    assert sorted(rank0 + rank1) == sorted([*range(101), order[0]])
    # Batch k of 4 on each rank = positions [8k, 8k+8) of the order: one process, batch 8.
    assert sorted(rank0[4:8] + rank1[4:8]) == sorted(order[8:16])

    # Resume after 3 batches of 4 on 2 ranks = 24 samples of the epoch, whatever the ranks.
    for world in (2, 3):
        resumed = []
        for rank in range(world):
            sampler.resume(0, 24)
            monkeypatch.setattr(sampler_module, "rank_and_world", lambda r=rank, w=world: (r, w))
            resumed.append(list(sampler))
        rest = sorted(i for part in resumed for i in part)
        padded = order + order[: -len(order) % world]
        assert rest == sorted(padded[24:])  # nothing trained twice, nothing skipped


def test_sampler_repeats_each_steps_window_for_grpo_iterations(monkeypatch):
    """task.num_iterations=2, accumulation 2, batch 2: each window of 2 x 2 positions twice,
    the epoch padded to whole windows; on 2 ranks each step's window is 2 x 2 x 2."""
    import lit_ft.data.sampler as sampler_module
    from lit_ft.data.sampler import ResumableRandomSampler

    sampler = ResumableRandomSampler(10, seed=3, shuffle=False, batch_size=2,
                                     repeat_windows=(2, 2))  # fmt: skip
    w = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]  # the last window padded from the start
    assert list(sampler) == w[0] * 2 + w[1] * 2 + w[2] * 2
    assert sampler.epoch_positions == len(sampler) == 24  # ceil(10 / 4) x 4 x 2
    sampler.resume(0, 6)  # 3 batches of 2 done: the second use of window 0 is half done
    assert list(sampler) == [2, 3] + w[1] * 2 + w[2] * 2

    ranks = []
    for rank in range(2):
        monkeypatch.setattr(sampler_module, "rank_and_world", lambda r=rank: (r, 2))
        ranks.append(list(sampler))
    # window 0 = positions 0-7 on 2 ranks, given twice; rank r takes every second one
    assert ranks[0][:8] == [0, 2, 4, 6] * 2 and ranks[1][:8] == [1, 3, 5, 7] * 2
    assert len(ranks[0]) == len(ranks[1]) == sampler.num_samples == 16  # ceil(10/8) x 8 x 2 / 2


def test_fsdp_policy_wraps_the_models_own_blocks():
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    from lit_ft.model.strategy import block_classes, transformer_block_policy

    model = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=16, n_head=2, vocab_size=64))
    wrapper = torch.nn.ModuleDict({"model": model})  # as inside the LightningModule
    assert block_classes(wrapper) == {GPT2Block}
    wrapped = transformer_block_policy()._run_policy(wrapper, set(), {"device_id": None})
    assert list(wrapped) == list(model.transformer.h)  # the 3 blocks, nothing else


def test_a_failed_job_leaves_no_child_rank_behind():
    """Rank 1 asleep in a collective after rank 0 failed: ended; other children are left."""
    import subprocess

    from lit_ft.distributed import end_child_ranks

    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    rank_1 = subprocess.Popen(sleep, env={**os.environ, "LOCAL_RANK": "1"})
    other = subprocess.Popen(sleep, env={k: v for k, v in os.environ.items() if k != "LOCAL_RANK"})
    try:
        assert end_child_ranks(grace_s=0.2) == [rank_1.pid]
        assert rank_1.wait(timeout=5) == -signal.SIGTERM  # gone, not asleep
        assert other.poll() is None  # not a rank: not ours to end
    finally:
        for proc in (rank_1, other):
            proc.kill()
            proc.wait()
