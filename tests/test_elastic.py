"""Resuming on another process count or micro-batch keeps the global batch, data and result.

The reference is one uninterrupted process of batch 8 (dropout off, fp32). Each case is
SIGKILLed after its step-6 checkpoint and resumed on other hardware without naming the
accumulation: lit_ft recomputes what keeps the global batch of 8, and steps 7-12 must log
the reference's step losses (metrics.csv, the loss over all processes and micro-batches) and
end with its weights, to the order of float sums (1e-5 relative). Two cases run in epochs of
4 steps (`trainer.limit_train_batches=4`): resumed mid-epoch, they cross the epoch boundary at
step 8 on the new layout, whose per-process limit lit_ft rescales to keep 32 sequences an epoch.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers.config import tiny_run_overrides

from lit_ft.errors import LitFtError
from lit_ft.plots import read_metrics
from lit_ft.training.elastic import GlobalBatch, keep_global_batch

HELPERS = str(Path(__file__).parent)
NO_DROPOUT = (
    "model.config_overrides={n_layer: 2, n_head: 2, n_embd: 32, n_positions: 64, "
    "vocab_size: 512, bos_token_id: 0, eos_token_id: 0, resid_pdrop: 0, embd_pdrop: 0, "
    "attn_pdrop: 0}"
)
TWO_PROCESSES = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
FSDP2 = ["trainer=fsdp2", "trainer.accelerator=cpu", "callbacks.generations.num_prompts=0"]
KILL_AFTER_STEP_6 = "+callbacks.kill={_target_: helpers.callbacks.KillAt, step: 7}"


def _args(tokenizer_dir, text_file, out: Path, *extra: str) -> list[str]:
    args = tiny_run_overrides(tokenizer_dir, text_file, out)
    replaced = ("model.config_overrides=", "trainer.max_steps", "trainer.max_epochs")
    args = [a for a in args if not a.startswith(replaced)]
    return [
        *args,
        NO_DROPOUT,
        "trainer.max_steps=12",
        "trainer.max_epochs=4",  # only the epochs of 4 steps reach a second epoch
        "trainer.log_every_n_steps=1",
        "callbacks.resumable_checkpoint.every_n_train_steps=3",
        "evaluate_before=false",
        *extra,
    ]


def _env() -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([HELPERS, os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def reference(tiny_tokenizer_dir, text_file, tmp_path_factory):
    """One process, batch 8, never interrupted: step losses and final weights (one run per
    set of shared settings, e.g. the epochs of 4 steps)."""
    import lit_ft

    runs = {}

    def run(*shared: str):
        if shared not in runs:
            out = tmp_path_factory.mktemp("reference")
            lit_ft.train_from_overrides(_args(tiny_tokenizer_dir, text_file, out, *shared))
            last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
            runs[shared] = read_metrics(out)["train/loss"], last["state_dict"]
        return runs[shared]

    return run


def _final_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.is_dir():  # trainer=fsdp2: the shards of every rank, read whole
        from lit_ft.training.sharded_checkpoint import read_sharded, read_weights

        return read_weights(path, list(read_sharded(path)["state_dict"]))
    return torch.load(path, weights_only=True)["state_dict"]


EPOCHS_OF_4_STEPS = ("trainer.limit_train_batches=4",)  # 4 batches of 8 sequences an epoch
CASES = {
    # name: (first life, resumed life, the pre-flight line the resume must print[, the
    # reference's own settings])
    "1 -> 2 processes": ([], [*TWO_PROCESSES], "data.batch_size 8 -> 4"),
    "2 -> 1 process": (
        [*TWO_PROCESSES, "data.batch_size=4"],
        ["data.batch_size=4"],
        "trainer.accumulate_grad_batches 1 -> 2",
    ),
    "batch 8 x 1 -> 4 x 2": ([], ["data.batch_size=4"], "trainer.accumulate_grad_batches 1 -> 2"),
    # sharded directory checkpoints, re-sharded on load by torch.distributed.checkpoint
    "fsdp2 2 -> 1 process": (
        [*FSDP2, "trainer.devices=2", "data.batch_size=4"],
        [*FSDP2, "trainer.devices=1", "data.batch_size=4"],
        "trainer.accumulate_grad_batches 1 -> 2",
    ),
    "fsdp2 1 -> 2 processes": (
        [*FSDP2, "trainer.devices=1"],
        [*FSDP2, "trainer.devices=2"],
        "data.batch_size 8 -> 4",
    ),
    # an epoch boundary after the resume, each epoch 32 sequences on either layout
    "batch 8 x 1 -> 4 x 2, epochs of 4 steps": (
        [*EPOCHS_OF_4_STEPS],
        ["data.batch_size=4", *EPOCHS_OF_4_STEPS],
        "trainer.limit_train_batches 4 -> 8 keeps 32 sequences an epoch",
        EPOCHS_OF_4_STEPS,
    ),
    "2 -> 1 process, epochs of 4 steps": (
        [*TWO_PROCESSES, "data.batch_size=4", "trainer.limit_train_batches=4"],
        ["data.batch_size=4", "trainer.limit_train_batches=4"],
        "trainer.limit_train_batches 4 -> 8 keeps 32 sequences an epoch",
        EPOCHS_OF_4_STEPS,  # its 4 batches of 8 are the first life's 4 of 4 on 2 processes
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_resumed_on_other_hardware_matches(
    case, reference, run_cli, tiny_tokenizer_dir, text_file, tmp_path
):
    first, then, said, *reference_settings = CASES[case]
    out = tmp_path / "run"
    killed = run_cli(
        _args(tiny_tokenizer_dir, text_file, out, *first, KILL_AFTER_STEP_6), env=_env()
    )
    assert killed.returncode != 0
    assert (out / "checkpoints" / "step000006.ckpt").exists()  # fsdp2: a directory
    resumed = run_cli(
        _args(tiny_tokenizer_dir, text_file, out, *then, "ckpt_path=last"), env=_env()
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert said in resumed.stdout and "keeps the global batch of 8" in resumed.stdout

    want_losses, want_weights = reference(*(reference_settings[0] if reference_settings else ()))
    losses = read_metrics(out)["train/loss"]
    assert sorted(losses) == sorted(want_losses)  # every step logged once, none skipped
    loss_gap = max(abs(losses[step] - loss) / abs(loss) for step, loss in want_losses.items())
    for step, loss in want_losses.items():
        assert losses[step] == pytest.approx(loss, rel=1e-5), step
    weights = _final_weights(out / "checkpoints" / "last.ckpt")
    # GPT-2's output layer is its embedding: one of the two names may be stored
    assert len(want_weights.keys() - weights.keys()) <= 1, want_weights.keys() - weights.keys()
    for name in want_weights.keys() & weights.keys():
        torch.testing.assert_close(weights[name], want_weights[name], rtol=1e-5, atol=1e-5)
    weight_gap = max(
        float((weights[n] - want_weights[n]).abs().max())
        for n in want_weights.keys() & weights.keys()
    )
    print(
        f"{case}: largest step-loss difference {loss_gap:.1e} (relative), weights {weight_gap:.1e}"
    )


@pytest.mark.slow
def test_a_global_batch_no_setting_keeps_is_refused(
    run_cli, tiny_tokenizer_dir, text_file, tmp_path
):
    """Batch 8 on 1 process, resumed on 3: neither 8/3 nor any batch x accumulation works."""
    out = tmp_path / "run"
    first = run_cli(_args(tiny_tokenizer_dir, text_file, out, "trainer.max_steps=3"), env=_env())
    assert first.returncode == 0, first.stderr[-3000:]
    again = [*TWO_PROCESSES[:2], "trainer.devices=3", "ckpt_path=last"]
    result = run_cli(_args(tiny_tokenizer_dir, text_file, out, *again), env=_env())
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "global batch" in result.stderr and "1 process x batch 8" in result.stderr
    assert "resume on 1, 2, 4, 8 process(es)" in result.stderr


def test_the_setting_left_alone_is_recomputed():
    saved = GlobalBatch(batch_size=4, accumulation=1, world_size=2)
    # nothing named: the accumulation is fitted first
    kept, said = keep_global_batch(saved, GlobalBatch(4, 1, 1))
    assert kept == GlobalBatch(4, 2, 1) and "accumulate_grad_batches 1 -> 2" in said
    # the accumulation cannot fit (8 / (8 x 2)): the batch is
    kept, _ = keep_global_batch(GlobalBatch(8, 1, 1), GlobalBatch(8, 1, 2))
    assert kept == GlobalBatch(4, 1, 2)
    # the user halved the batch (out of memory): the accumulation doubles
    kept, _ = keep_global_batch(GlobalBatch(8, 1, 1), GlobalBatch(4, 1, 1))
    assert kept == GlobalBatch(4, 2, 1)
    # same global batch, other split: accepted as it is, nothing said
    assert keep_global_batch(GlobalBatch(8, 1, 1), GlobalBatch(2, 2, 2)) == (
        GlobalBatch(2, 2, 2),
        "",
    )
    # both named and the product differs: refused, with settings that would work
    with pytest.raises(LitFtError, match="data.batch_size=2 trainer.accumulate_grad_batches=2"):
        keep_global_batch(GlobalBatch(4, 1, 2), GlobalBatch(3, 3, 2))
    with pytest.raises(LitFtError, match=r"resume on 1, 3, 9 process\(es\)"):
        keep_global_batch(GlobalBatch(3, 1, 3), GlobalBatch(3, 1, 2))


def test_an_epoch_limit_keeps_its_sequences():
    from lit_ft.training.elastic import keep_epoch_limit

    saved = GlobalBatch(8, 1, 1)  # limit 4: 4 x 8 = 32 sequences an epoch
    assert keep_epoch_limit(4, saved, GlobalBatch(4, 2, 1)) == (
        8,
        "trainer.limit_train_batches 4 -> 8 keeps 32 sequences an epoch",
    )
    assert keep_epoch_limit(4, saved, GlobalBatch(4, 1, 2)) == (4, "")  # 4 x 2 processes
    assert keep_epoch_limit(0.5, saved, GlobalBatch(4, 2, 1)) == (0.5, "")  # a fraction
    assert keep_epoch_limit(4, None, GlobalBatch(4, 2, 1)) == (4, "")  # not a resume
    # 1 batch of 3 sequences, resumed as batches of 2 on 3 processes (6 a batch): refused
    with pytest.raises(LitFtError, match=r"limit_train_batches=1: .* 1 x 3 = 3 sequences"):
        keep_epoch_limit(1, GlobalBatch(3, 2, 1), GlobalBatch(2, 1, 3))


def test_micro_batch_counters_follow_the_accumulation():
    from lit_ft.compat import rescale_batch_progress

    def checkpoint(done: int, total: int, last: bool = False):
        counts = {"ready": done, "started": done, "processed": done, "completed": done - 1}
        totals = {k: v + total - done for k, v in counts.items()}
        progress = {"current": counts, "total": totals, "is_last_batch": last}
        return {"loops": {"fit_loop": {"epoch_loop.batch_progress": progress}}}

    ckpt = checkpoint(7, 100)  # 7 steps at accumulation 1, after 93 micro-batches of epoch 0
    rescale_batch_progress(ckpt, old=1, new=2)
    progress = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    assert progress["current"] == {"ready": 14, "started": 14, "processed": 14, "completed": 13}
    assert progress["total"]["ready"] == 107
    ckpt = checkpoint(12, 12)  # 6 steps at accumulation 2 -> 6 micro-batches at 1
    rescale_batch_progress(ckpt, old=2, new=1)
    assert ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["ready"] == 6
    with pytest.raises(ValueError, match="inside an accumulation window"):
        rescale_batch_progress(checkpoint(5, 5), old=2, new=1)
    ckpt = checkpoint(95, 95, last=True)  # the epoch's end: the next one starts from 0
    rescale_batch_progress(ckpt, old=1, new=2)
    assert ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["ready"] == 95
