"""trainer=fsdp2 on CPU (2 processes, gloo): sharded directory checkpoints that resume bit for
bit, an export that from_pretrained loads (a safetensors file at a time), and the
combinations it refuses up front."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from helpers.config import tiny_run_overrides
from safetensors.torch import load_file

HELPERS = str(Path(__file__).parent)
FSDP2 = ["trainer=fsdp2", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=4"]


def _args(tokenizer_dir, text_file, out: Path, log: Path, extra=()) -> list[str]:
    return [
        *tiny_run_overrides(tokenizer_dir, text_file, out),
        *FSDP2,
        "trainer.max_steps=12",
        "callbacks.resumable_checkpoint.every_n_train_steps=3",
        "callbacks.generations.num_prompts=0",
        "evaluate_before=false",
        "export_last=true",  # hf_model_last/: the final weights, from the last checkpoint
        f"+callbacks.loss_log={{_target_: helpers.callbacks.LossLog, path: '{log}'}}",
        *extra,
    ]


def _env() -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([HELPERS, os.environ.get("PYTHONPATH", "")])}


def _losses(log: Path) -> dict[tuple[int, int], float]:
    records = [json.loads(line) for line in log.read_text().splitlines()]
    return {(r["step"], r["rank"]): r["loss"] for r in records}


@pytest.mark.slow
def test_sharded_run_resumes_bit_identical_and_exports_for_from_pretrained(
    run_cli, tiny_tokenizer_dir, text_file, tmp_path
):
    from transformers import AutoModelForCausalLM

    from lit_ft.export import export_sharded_checkpoint
    from lit_ft.training.sharded_checkpoint import is_sharded_checkpoint, read_sharded

    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    full = run_cli(
        _args(tiny_tokenizer_dir, text_file, full_dir, tmp_path / "full.jsonl"), env=_env()
    )
    assert full.returncode == 0, full.stderr[-3000:]
    # rank 1 alone gets SIGTERM at step 6: both ranks stop, each saves its shards, exit 3
    kill = "+callbacks.kill={_target_: helpers.callbacks.KillAt, step: 6, sig: SIGTERM, rank: 1}"
    cut = run_cli(
        _args(tiny_tokenizer_dir, text_file, cut_dir, tmp_path / "cut.jsonl", [kill]), env=_env()
    )
    assert cut.returncode == 3, cut.stderr[-3000:]
    last = cut_dir / "checkpoints" / "last.ckpt"
    assert is_sharded_checkpoint(last) and sorted(p.name for p in last.glob("*.distcp")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    assert read_sharded(last)["global_step"] == 6
    resumed_log = tmp_path / "resumed.jsonl"
    resumed = run_cli(
        _args(tiny_tokenizer_dir, text_file, cut_dir, resumed_log, ["ckpt_path=last"]), env=_env()
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"[lit_ft] resuming from {last}" in resumed.stdout
    assert "training loss plain (trainer=fsdp2" in resumed.stdout

    reference, after = _losses(tmp_path / "full.jsonl"), _losses(resumed_log)
    assert sorted({step for step, _ in after}) == list(range(7, 13))
    assert all(after[key] == reference[key] for key in after)  # both ranks, bit for bit
    a, b = (load_file(d / "hf_model_last" / "model.safetensors") for d in (full_dir, cut_dir))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # The export loads with no key missing or left over, equal to the checkpoint's weights;
    # tied weights (GPT-2's head is its input embedding) are written once.
    model, info = AutoModelForCausalLM.from_pretrained(
        cut_dir / "hf_model_last", output_loading_info=True
    )
    assert not any(info.values()), info
    assert "lm_head.weight" not in b and "transformer.wte.weight" in b
    assert torch.equal(model.lm_head.weight, b["transformer.wte.weight"])
    # Files of at most 20 kB: Hugging Face's sharded layout, with its index, loads the same.
    split = export_sharded_checkpoint(
        cut_dir / "checkpoints" / "last.ckpt", tmp_path / "split", 2 * 10**4
    )
    index = json.loads((split / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 3 and files[0].endswith("-of-" + f"{len(files):05d}.safetensors")
    again = AutoModelForCausalLM.from_pretrained(split)
    assert all(
        torch.equal(p, q)
        for p, q in zip(again.state_dict().values(), model.state_dict().values(), strict=True)
    )


def test_fsdp2_refuses_what_it_does_not_combine_with(tmp_path):
    from lit_ft.config import compose
    from lit_ft.errors import ConfigError
    from lit_ft.validate import validate_config

    cfg = compose(
        [
            "trainer=fsdp2",
            "peft=lora",
            "model.pad_vocab_to_multiple_of=64",
            f"paths.output_dir={tmp_path}",
        ]
    )
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    text = str(err.value)
    assert "trainer=fsdp2 with peft is not supported" in text
    assert "trainer=fsdp2 with model.pad_vocab_to_multiple_of is not supported" in text
    assert "runs on CUDA GPUs only" not in text  # FSDP1's refusal on CPU is not fsdp2's
