"""peft=lora on the bundled (pretrained) tiny GPT-2: only adapters train, only they are
checkpointed, a run resumes from them, and the merged export computes the same logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import lit_ft
from lit_ft.export import load_checkpoint_model
from lit_ft.model.peft import LoraSettings, for_export, prepare_model

# The bundled GPT-2: 4 layers whose c_attn maps 128 -> 384. With r=4 each layer gains
# A (4 x 128) + B (384 x 4) = 2,048 weights: 8,192 trainable in all.
LORA_PARAMS = 4 * 4 * (128 + 384)


def _lora_overrides(text_file: Path, output_dir: Path) -> list[str]:
    return [
        "peft=lora",
        "peft.r=4",
        "data=text_files",
        f"data.data_files={text_file}",
        "data.block_size=32",
        "data.batch_size=8",
        "data.validation_split_percentage=5",
        "trainer.max_epochs=1",
        "trainer.max_steps=8",
        "trainer.val_check_interval=4",
        "callbacks.resumable_checkpoint.every_n_train_steps=4",
        "trainer.enable_progress_bar=false",
        "callbacks.generations.num_prompts=0",
        "optimizer.lr=1e-2",
        "trainer.precision=32-true",  # stated: not the host's `auto`
        f"paths.output_dir={output_dir}",
    ]


@pytest.fixture(scope="module")
def lora_run(text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    return lit_ft.train_from_overrides(_lora_overrides(text_file, out))


def _adapter_state(ckpt_path: str) -> dict[str, torch.Tensor]:
    return torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_only_adapter_weights_train_and_are_checkpointed(lora_run):
    state = _adapter_state(lora_run["last_checkpoint"])
    assert state and all(".lora_A." in k or ".lora_B." in k for k in state)
    assert sum(t.numel() for t in state.values()) == LORA_PARAMS
    # B starts at zero (the adapter starts as a no-op); training moved it.
    assert any(t.abs().sum() > 0 for k, t in state.items() if ".lora_B." in k)
    after = lora_run["metrics"]["after"]["val/loss"]
    assert after < lora_run["metrics"]["before"]["val/loss"]


@pytest.mark.slow
def test_merged_export_equals_the_adapter_applied_model(lora_run):
    merged = AutoModelForCausalLM.from_pretrained(lora_run["export_dir"]).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())  # a plain model
    adapted, _, _ = load_checkpoint_model(lora_run["best_checkpoint"])  # base + adapter, unmerged
    adapted.eval()
    input_ids = torch.randint(0, merged.config.vocab_size, (2, 24), generator=torch.manual_seed(0))
    with torch.no_grad():
        expected = adapted(input_ids=input_ids).logits
        assert torch.allclose(merged(input_ids=input_ids).logits, expected, atol=1e-5)
        # ... and the adapter matters: the pretrained base alone gives other logits.
        with adapted.disable_adapter():
            assert not torch.allclose(adapted(input_ids=input_ids).logits, expected, atol=1e-3)


@pytest.mark.slow
def test_lora_run_resumes_from_an_adapter_checkpoint(lora_run, text_file, tmp_path):
    # Resume in a fresh directory from the step-4 checkpoint: steps 5..8 again, then compare.
    step4 = Path(lora_run["output_dir"]) / "checkpoints" / "step000004.ckpt"
    resumed = lit_ft.train_from_overrides(
        [*_lora_overrides(text_file, tmp_path / "resumed"), f"ckpt_path={step4}"]
    )
    # results.json describes the whole run: 4 steps from the checkpoint's record, 4 run here
    assert resumed["metrics"]["train"]["steps"] == 8
    assert resumed["metrics"]["train"]["resumed_at_step"] == 4
    finished, again = (
        _adapter_state(lora_run["last_checkpoint"]),
        _adapter_state(resumed["last_checkpoint"]),
    )
    assert finished.keys() == again.keys()
    for name in finished:
        assert torch.equal(finished[name], again[name]), name


def test_adapter_export_and_gradient_checkpointing(tmp_path):
    """Unit level: peft.export=adapter writes adapter files; checkpointing still trains LoRA."""
    from lit_ft.config import asset_path

    base = AutoModelForCausalLM.from_pretrained(asset_path("tiny-gpt2-pystdlib"))
    model = prepare_model(
        base, gradient_checkpointing=True, lora=LoraSettings(r=2, export="adapter")
    )
    inner = model.base_model.model
    assert getattr(inner, "is_activation_checkpointing", None) or inner.is_gradient_checkpointing
    model.train()
    input_ids = torch.randint(0, 4096, (2, 16))
    model(input_ids=input_ids, labels=input_ids).loss.backward()
    # B starts at zero, so the first gradient of A is zero too: B shows the flow.
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(
        g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n
    )

    for_export(model).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["r"] == 2 and config["target_modules"] == ["c_attn"]
    assert (tmp_path / "adapter_model.safetensors").is_file()


def test_adapter_export_names_the_bundled_base_portably_and_loads_as_documented(tmp_path):
    """adapter_config.json must not name a directory inside this installation; the README's
    way of loading (the bundled base, then the adapter) gives the adapted model's logits."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from lit_ft.config import asset_path
    from lit_ft.export import export_pretrained

    base_dir = asset_path("tiny-gpt2-pystdlib")
    model = prepare_model(
        AutoModelForCausalLM.from_pretrained(base_dir), lora=LoraSettings(r=2, export="adapter")
    )
    with torch.no_grad():  # a non-zero B, so the adapter changes the logits
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    export_pretrained(model, AutoTokenizer.from_pretrained(base_dir), tmp_path / "hf_model")
    config = json.loads((tmp_path / "hf_model" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "lit_ft/assets/tiny-gpt2-pystdlib"
    assert str(Path(base_dir).parent) not in json.dumps(config)
    loaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir), tmp_path / "hf_model"
    )
    input_ids = torch.randint(0, 4096, (2, 16))
    model.eval(), loaded.eval()
    with torch.no_grad():
        expected = model(input_ids=input_ids).logits
        torch.testing.assert_close(loaded(input_ids=input_ids).logits, expected)
        with loaded.disable_adapter():
            assert not torch.allclose(loaded(input_ids=input_ids).logits, expected)
