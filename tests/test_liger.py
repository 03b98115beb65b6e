"""model.liger_kernel (lit_ft/model/liger.py): refused before any work without the package or
a CUDA GPU, refused for an architecture Liger does not cover, and when applied its fused loss
replaces lit_ft's chunked one. Liger itself runs only in benchmarks/gpu_check.py (CUDA)."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from lit_ft.errors import LitFtError
from lit_ft.model.chunked_loss import choose_loss
from lit_ft.model.liger import apply_liger, liger_problems


def test_off_by_default_and_asking_without_cuda_or_package_says_what_to_do(monkeypatch):
    from omegaconf import OmegaConf

    import lit_ft
    from lit_ft.validate import validate_config

    assert not liger_problems(OmegaConf.create({"liger_kernel": False}))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("lit_ft.model.liger.liger_installed", lambda: False)
    problems = liger_problems(OmegaConf.create({"liger_kernel": True}))
    assert len(problems) == 2
    assert "pip install liger-kernel" in problems[0] and "CUDA GPU" in problems[1]
    # the whole config check reports them with the rest, before anything is built
    cfg = lit_ft.compose(["model.liger_kernel=true", "optimizer.lr=-1"])
    with pytest.raises(LitFtError) as err:
        validate_config(cfg)
    assert "model.liger_kernel=true needs a CUDA GPU" in str(err.value)
    assert "optimizer.lr must be a positive number" in str(err.value)
    bad = liger_problems(OmegaConf.create({"liger_kernel": "yes"}))
    assert "model.liger_kernel" in bad[0]


@pytest.fixture
def fake_liger(monkeypatch):
    """liger_kernel.transformers.monkey_patch as lit_ft reads it: the patch function per
    model type (a stand-in: the real package needs Triton and CUDA)."""
    calls = []
    module = types.ModuleType("liger_kernel.transformers.monkey_patch")
    module.MODEL_TYPE_TO_APPLY_LIGER_FN = {
        "llama": lambda model: calls.append(model),
        "qwen2": lambda model: calls.append(model),
    }
    for name in ("liger_kernel", "liger_kernel.transformers"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return calls


def test_apply_patches_a_covered_architecture_and_refuses_others(fake_liger):
    llama = types.SimpleNamespace(config=types.SimpleNamespace(model_type="llama"))
    assert "for llama" in apply_liger(llama) and fake_liger == [llama]
    gpt2 = types.SimpleNamespace(config=types.SimpleNamespace(model_type="gpt2"))
    covered = "no kernels for model_type 'gpt2'; it covers llama, qwen2"
    with pytest.raises(LitFtError, match=covered):
        apply_liger(gpt2)


def test_with_liger_the_chunked_loss_stays_off():
    choice = choose_loss("auto", model=None, tokens_per_batch=10**6, chunk_tokens=512, liger=True)
    assert not choice.chunked and "Liger's fused linear cross-entropy" in choice.text()
