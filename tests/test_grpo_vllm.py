"""task.rollout=vllm: refused clearly without the package, a CUDA GPU or with a sharded
strategy (before the model loads); and lit_ft's side of the engine contract, against a stand-in
`vllm` (tests/helpers/fake_vllm.py) that samples with Hugging Face `generate` on the weights it
was sent: the engine gets the LoRA-merged policy's weights under the plain model's names, once
per optimizer step, and its greedy rollouts are the `generate` path's, token for token."""

from __future__ import annotations

import copy
import importlib.util
import os
import sys

import datasets
import pytest
import torch
from helpers import fake_vllm, tiny_models
from omegaconf import OmegaConf

from lit_ft.tasks import TaskContext
from lit_ft.tasks.grpo import GRPOTask
from lit_ft.tasks.vllm_rollout import rollout_problems


def _gpt2():
    return tiny_models.gpt2(bos_token_id=0, eos_token_id=0)


def _lora_policy():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_gpt2(), LoraConfig(r=4, target_modules=["c_attn"]))
    with torch.no_grad():  # trained adapters: B is no longer zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 2.0)
    return model


def _task(tokenizer, **options):
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = None
    settings = {"num_generations": 3, "max_new_tokens": 8, "reward_funcs": [len]}
    return GRPOTask(tokenizer, {"prompt_column": "prompt"}, 32, **{**settings, **options})


def _batch(task):
    data = datasets.Dataset.from_dict({"prompt": ["Count:", "Add two and two.", "Say it"]})
    rows = list(task.preprocess(data, "train", TaskContext("t", load_from_cache=False)))
    return task.collate()(rows)


@pytest.fixture
def engine(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm.as_module())
    fake_vllm.LLM.built.clear()
    return fake_vllm.LLM.built


def test_vllm_greedy_rollouts_are_the_generate_paths_from_the_merged_lora_policy(
    gpt2_tokenizer, engine
):
    model = _lora_policy().train()
    before = {n: p.clone() for n, p in model.named_parameters()}
    plain = _task(gpt2_tokenizer)
    batch = _batch(plain)
    want, want_mask, width = plain.rollout(model, batch, 3, False, 0)
    task = _task(gpt2_tokenizer, rollout="vllm")
    got, got_mask, got_width = task.rollout(model, batch, 3, False, 0)
    assert got_width == width and torch.equal(got_mask, want_mask)
    assert torch.equal(got, want)  # pad = EOS here, so even the padding agrees
    (llm,) = engine
    assert llm.load_format == "dummy"  # built from config + tokenizer, no weights read
    merged = copy.deepcopy(model).merge_and_unload()
    for name, value in merged.named_parameters():  # the independent reference: peft's merge
        torch.testing.assert_close(dict(llm.network.hf.named_parameters())[name], value)
    for name, value in model.named_parameters():  # unmerged after the copy, adapters kept
        torch.testing.assert_close(value, before[name])
    assert model.training  # the policy's mode is untouched


def test_the_engine_syncs_once_per_optimizer_step_and_samples_reproducibly(gpt2_tokenizer, engine):
    environment = dict(os.environ)
    model = _gpt2()
    task = _task(gpt2_tokenizer, rollout="vllm")
    batch = _batch(task)
    task.window_position = (0, 0)
    first, _, _ = task.rollout(model, batch, 3, True, 7)
    again, _, _ = task.rollout(model, batch, 3, True, 7)  # same step: no second copy
    (llm,) = engine
    assert llm.syncs == 1 and torch.equal(first, again)
    with torch.no_grad():
        model.transformer.wte.weight.mul_(3.0)  # the optimizer stepped
    task.window_position = (1, 0)
    task.rollout(model, batch, 3, True, 7)
    assert llm.syncs == 2
    torch.testing.assert_close(llm.network.hf.transformer.wte.weight, model.transformer.wte.weight)
    # a single process: the rank variables vLLM's launcher reads were set for the build only
    # (left behind, the next job of a sweep would think torchrun started it)
    assert llm.launcher_env == {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
    assert dict(os.environ) == environment


def _problems(**task):
    options = OmegaConf.create({"rollout": "vllm", "vllm_gpu_memory_utilization": 0.3, **task})
    return list(rollout_problems(options, "auto", "auto"))


def test_vllm_rollouts_are_refused_without_the_package_or_a_cuda_gpu(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    problems = " | ".join(_problems())
    assert "pip install vllm" in problems and "task.rollout=generate" in problems
    assert "CUDA" in problems
    unknown = rollout_problems(OmegaConf.create({"rollout": "sglang"}), "auto", "auto")
    assert list(unknown) == ["task.rollout='sglang' is unknown; use one of generate, vllm"]


def test_vllm_rollouts_are_refused_with_a_sharded_strategy_or_a_bad_memory_share(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _problems() == []
    (sharded,) = rollout_problems(
        OmegaConf.create({"rollout": "vllm", "vllm_gpu_memory_utilization": 0.3}), "gpu", "fsdp"
    )
    assert "trainer.strategy=fsdp shards it" in sharded
    (share,) = _problems(vllm_gpu_memory_utilization=1.5)
    assert "task.vllm_gpu_memory_utilization" in share


def test_a_vllm_run_is_refused_before_the_model_loads(run_cli, tmp_path):
    result = run_cli([
        "experiment=tiny_gpt2_docstring_grpo", "task.rollout=vllm", "trainer.accelerator=cpu",
        f"paths.output_dir={tmp_path / 'run'}",
    ])  # fmt: skip
    assert result.returncode != 0
    assert "task.rollout=vllm" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
