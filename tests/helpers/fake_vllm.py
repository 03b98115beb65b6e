"""A stand-in for the `vllm` package with its public surface that lit_ft uses (`LLM`,
`SamplingParams`, `LLM.apply_model`, `LLM.generate`, `LLM.reset_prefix_cache`), sampling with
Hugging Face `generate` on the weights it was sent. vLLM itself needs CUDA and is not installed
here; this checks lit_ft's side of the contract: the folder the engine is built from, the
weight names and values it receives, the prompts without padding, and how the completions come
back into the rollout tensors."""

from __future__ import annotations

import os
import types
from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    stop_token_ids: list = field(default_factory=list)
    seed: int | None = None


class _Network:
    """The engine's copy of the model: `load_weights` takes (name, tensor) pairs under the
    Hugging Face names, and every parameter must be sent."""

    def __init__(self, hf_model) -> None:
        self.hf = hf_model
        self.loaded: set[str] = set()

    def load_weights(self, weights) -> None:
        params = dict(self.hf.named_parameters())
        for name, tensor in weights:
            if name not in params:
                raise KeyError(f"the engine has no parameter {name}")
            with torch.no_grad():
                params[name].copy_(tensor)
            self.loaded.add(name)
        missing = set(params) - self.loaded
        if missing:
            raise KeyError(f"weights not sent: {sorted(missing)}")


class LLM:
    built: list[LLM] = []  # every engine made, for the tests to look at

    def __init__(self, model: str, load_format: str = "auto", **settings) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        self.folder, self.load_format, self.settings = model, load_format, settings
        # what vLLM's external launcher reads while it builds the engine
        self.launcher_env = {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
        self.tokenizer = AutoTokenizer.from_pretrained(model)  # the folder holds one
        torch.manual_seed(1234)  # "dummy" weights: anything but the policy's
        self.network = _Network(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model)))
        self.syncs = 0
        LLM.built.append(self)

    def apply_model(self, function):
        self.syncs += 1
        self.network.loaded.clear()
        return [function(self.network)]

    def reset_prefix_cache(self) -> None:
        pass

    def generate(self, prompts, sampling_params, use_tqdm=True):
        model = self.network.hf.eval()
        results = []
        for prompt, params in zip(prompts, sampling_params, strict=True):
            ids = torch.tensor([prompt["prompt_token_ids"]] * params.n)  # n samples a prompt
            sample = params.temperature > 0
            extra = {"temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
            with torch.random.fork_rng(), torch.no_grad():
                torch.manual_seed(params.seed or 0)
                out = model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=sample,
                    max_new_tokens=params.max_tokens,
                    eos_token_id=params.stop_token_ids, pad_token_id=params.stop_token_ids[0],
                    **(extra if sample else {}),
                )  # fmt: skip
            samples = []
            for row in out[:, ids.shape[1] :].tolist():
                stop = next((i for i, t in enumerate(row) if t in params.stop_token_ids), None)
                # like an engine that leaves the stop token out of token_ids
                tokens, reason = (row, "length") if stop is None else (row[:stop], "stop")
                samples.append(types.SimpleNamespace(token_ids=tokens, finish_reason=reason))
            results.append(types.SimpleNamespace(outputs=samples))
        return results


def as_module() -> types.ModuleType:
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = LLM, SamplingParams
    return module
