"""Speed features: FLOPs/MFU logging, fused AdamW, vocab padding (and its export), compile."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from lit_ft.model.compile import compile_model
from lit_ft.model.vocab import UNPADDED_KEY, pad_vocab, unpadded
from lit_ft.observe.throughput import count_flops_per_token, process_start_time
from lit_ft.training.optim import adamw


def tiny_gpt2(vocab_size: int = 500) -> GPT2LMHeadModel:
    config = GPT2Config(
        n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=vocab_size,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


def test_flops_are_measured_on_the_meta_device():
    layers, width, seq, vocab = 2, 32, 64, 500
    flops, how = count_flops_per_token(tiny_gpt2(vocab), seq)
    # Training = 3 x forward; forward = 2 FLOPs per weight of every matmul (12 d^2 per layer:
    # qkv 3d^2, proj d^2, mlp 8d^2; plus the d x vocab output) + attention 2 x 2 x seq x d.
    per_token = 3 * (2 * (12 * layers * width**2 + width * vocab) + 4 * layers * seq * width)
    assert how == "measured" and flops == per_token


def test_flops_fall_back_to_six_times_parameters():
    model = torch.nn.Linear(4, 3)  # no config: cannot be rebuilt on the meta device
    # all 15 weights trainable: 4 x 0 frozen + 6 x 15
    assert count_flops_per_token(model, 8) == (6.0 * 15, "4 x frozen + 6 x trainable parameters")


@pytest.mark.slow  # a subprocess that imports torch and Lightning
def test_process_start_time_is_within_the_process_lifetime_seen_from_outside():
    """A fresh process reports its own age: between 0 and the time its parent saw it run."""
    import subprocess
    import sys
    import time

    if process_start_time() is None:
        pytest.skip("no /proc here")
    code = "import time; from lit_ft.observe.throughput import process_start_time as s; "
    code += "print(time.time() - s())"
    before = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    outside = time.perf_counter() - before
    assert 0 <= float(out.stdout) <= outside + 0.02  # 0.02 s: clock ticks of 1/100 s


def test_adamw_is_fused_where_the_device_has_the_kernel():
    param = torch.nn.Parameter(torch.zeros(3))
    assert adamw([{"params": [param]}], lr=1e-3).defaults["fused"] is True  # CPU has one
    assert adamw([param], lr=1e-3, fused=False).defaults["fused"] is False
    # an integer tensor has no fused kernel: auto leaves it to the per-tensor path
    assert adamw([torch.zeros(3, dtype=torch.long)], lr=1e-3).defaults["fused"] is False


def test_vocab_padding_and_the_cropped_copy():
    model = pad_vocab(tiny_gpt2(500), 64)
    assert model.get_input_embeddings().num_embeddings == 512 == model.config.vocab_size
    assert getattr(model.config, UNPADDED_KEY) == 500
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied
    cropped = unpadded(model)
    assert cropped.config.vocab_size == 500 and not hasattr(cropped.config, UNPADDED_KEY)
    assert model.config.vocab_size == 512  # the training model keeps its shape
    assert torch.equal(cropped.transformer.wte.weight, model.transformer.wte.weight[:500])
    assert pad_vocab(tiny_gpt2(512), 64).config.vocab_size == 512  # already a multiple
    assert unpadded(tiny_gpt2(500)).config.vocab_size == 500  # never padded: itself


def test_compile_in_place_keeps_state_dict_keys():
    model = tiny_gpt2()
    keys = list(model.state_dict())
    compile_model(model, enabled=True, backend="eager")
    ids = torch.randint(0, 500, (2, 16))
    assert model(input_ids=ids, labels=ids).loss.isfinite()
    assert list(model.state_dict()) == keys and model._compiled_call_impl is not None


@pytest.mark.slow
def test_run_logs_mfu_compiles_and_exports_unpadded(tiny_overrides, tmp_path):
    """One run with every speed option on: MFU in the logs and results.json, a compiled model
    that trains, checkpoints and exports, and a padded vocabulary that exports cropped."""
    from lit_ft import compose, train
    from lit_ft.export import export_checkpoint

    results = train(
        compose(
            [
                *tiny_overrides,
                "trainer.max_steps=12",
                "evaluate_before=false",
                "compile.enabled=true",
                "compile.backend=eager",  # the wiring, without minutes of C++ compilation
                "model.pad_vocab_to_multiple_of=48",  # 512 -> 528 rows
                "callbacks.throughput.peak_flops_per_s=1e11",
                "callbacks.throughput.warmup_steps=2",
            ]
        )
    )
    throughput = results["throughput"]
    assert throughput["measured_steps"] == 10 and throughput["flops_counted_by"] == "measured"
    assert throughput["tokens_per_s"] > 0 and 0 < throughput["mfu"] < 1
    # one window for all the rates: MFU = tokens/s x FLOPs per token / peak (4 digits kept)
    flops_per_s = throughput["tokens_per_s"] * throughput["flops_per_token"]
    assert throughput["flops_per_s"] == pytest.approx(flops_per_s, rel=2e-3)
    assert throughput["mfu"] == pytest.approx(flops_per_s / 1e11, rel=2e-3)
    assert 0 < throughput["time_to_first_step_s"] <= results["wall_time_s"]
    assert throughput["peak_flops_per_s"] == 1e11 and throughput["peak_flops_from"] == "configured"
    run_dir = tmp_path / "run"
    assert json.loads((run_dir / "results.json").read_text())["throughput"] == throughput
    with open(run_dir / "logs" / "version_0" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("throughput/mfu")]
    assert [int(r["step"]) for r in rows] == [7, 12]  # every 5 steps after 2 warm-up steps
    checkpoint = torch.load(results["last_checkpoint"], weights_only=True)
    assert checkpoint["state_dict"]["model.transformer.wte.weight"].shape[0] == 528

    for export in (
        run_dir / "hf_model",
        export_checkpoint(results["last_checkpoint"], tmp_path / "e"),
    ):
        model = AutoModelForCausalLM.from_pretrained(export)
        tokenizer = AutoTokenizer.from_pretrained(export)
        assert model.config.vocab_size == 512 and not hasattr(model.config, UNPADDED_KEY)
        out = model.generate(**tokenizer("def", return_tensors="pt"), max_new_tokens=5)
        assert out.shape[1] > 1 and int(out.max()) < 512


def test_cpu_peak_is_a_measured_matmul_rate():
    """No table for CPUs: the peak is timed; a plain CPU run still reports an MFU."""
    from lit_ft.observe.throughput import matmul_flops_per_s

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    rate = matmul_flops_per_s(torch.float32, size=256)
    assert 1e8 < rate < 1e14  # 0.1 GFLOP/s .. 100 TFLOP/s: a real measurement, not a constant
    assert torch.equal(torch.rand(3), expected)  # the global random state is untouched


def test_speed_keys_are_validated_together():
    from lit_ft import compose
    from lit_ft.errors import ConfigError
    from lit_ft.validate import validate_config

    cfg = compose(
        ["optimizer.fused=maybe", "model.pad_vocab_to_multiple_of=0", "compile.enabled=2"]
    )
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    message = str(err.value)
    assert "optimizer.fused" in message and "model.pad_vocab_to_multiple_of" in message
    assert "compile.enabled" in message
