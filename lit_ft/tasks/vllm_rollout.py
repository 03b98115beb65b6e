"""GRPO's rollouts from a vLLM engine in the training process (`task.rollout=vllm`, CUDA only).

Generation dominates a GRPO step; vLLM's paged KV cache and continuous batching sample far
faster than Hugging Face `generate` on a GPU. The engine is colocated: it lives in each
training process, on that process's GPU, and takes `task.vllm_gpu_memory_utilization` of its
memory (0.3 of 141 GB = 42 GB for its weights and KV cache; training keeps the rest).

- **Built without reading weights**: the policy's config and tokenizer are written to a
  temporary folder and vLLM builds the network there with `load_format="dummy"`; the real
  weights arrive by the sync below. So a model whose vocabulary lit_ft resized, a checkpoint
  resumed mid-run or a model built from a config all start the engine alike.
- **Weights synced when the policy moved**: before sampling, if the optimizer has stepped since
  the last sync (`policy_step`), every parameter goes to the engine through vLLM's public
  `LLM.apply_model` (`model.load_weights`). A LoRA policy is merged for the copy and unmerged
  after, so the engine samples from the adapted policy, never the base model.
- **Seeded per prompt**: prompt i of a micro-batch samples with seed `step seed + i`, so a
  resumed run draws the same completions as the uninterrupted one.
- **The same tensors as the `generate` path**: left-padded prompts, then each completion padded
  to `max_new_tokens`, group members of prompt i in rows i*G .. i*G + G-1; GRPOTask.rollout
  masks them the same way.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import tempfile
from typing import Any

import torch

from lit_ft.errors import LitFtError
from lit_ft.problems import Problems

ROLLOUTS = ("generate", "vllm")
SHARDED_STRATEGIES = ("fsdp", "deepspeed")


def rollout_problems(options, accelerator: str, strategy: Any) -> Problems:
    """`task.rollout` and, for vllm, what the engine needs: the package, a CUDA GPU, and a
    strategy whose processes each hold the whole model (one process or DDP)."""
    problems = Problems()
    rollout = options.get("rollout", "generate")
    problems.need(
        rollout in ROLLOUTS,
        f"task.rollout='{rollout}' is unknown; use one of {', '.join(ROLLOUTS)}",
    )
    if rollout != "vllm":
        return problems
    problems.need(
        importlib.util.find_spec("vllm") is not None,
        "task.rollout=vllm needs the vllm package, which is not installed: pip install vllm "
        "(CUDA GPUs only), or task.rollout=generate (Hugging Face generate with a KV cache)",
    )
    problems.need(
        accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available(),
        f"task.rollout=vllm samples on a CUDA GPU, and this run has none "
        f"(trainer.accelerator={accelerator}, CUDA available: {torch.cuda.is_available()}); "
        "use task.rollout=generate",
    )
    name = str(strategy).lower()
    problems.need(
        not any(s in name for s in SHARDED_STRATEGIES),
        f"task.rollout=vllm copies the whole policy into each process's engine, and "
        f"trainer.strategy={strategy} shards it; use one GPU or DDP, or task.rollout=generate",
    )
    share = options.get("vllm_gpu_memory_utilization")
    problems.need(
        isinstance(share, float) and 0 < share < 1,
        f"task.vllm_gpu_memory_utilization must be a fraction in (0, 1) of the GPU's memory "
        f"for the engine, got {share!r}",
    )
    return problems


def policy_weights(model: torch.nn.Module):
    """(name, tensor) of the policy under the names of the plain Hugging Face model, as vLLM's
    `load_weights` reads them: a LoRA model's adapters merged into its base layers (call it
    inside `_Merged(model)`); `compile.enabled` compiles in place, so its names are plain."""
    is_peft = hasattr(model, "merge_adapter")
    for name, param in model.named_parameters():
        if is_peft:
            # base_model.model.transformer.h.0.attn.c_attn.base_layer.weight -> transformer.h.0...
            if "lora_" in name or "original_module" in name:
                continue  # the adapters are merged into the base layer already
            name = name.removeprefix("base_model.model.").replace(".base_layer", "")
            name = name.replace(".modules_to_save.default", "")
        yield name, param.detach()


class _Merged:
    """A LoRA policy's adapters merged into its weights for the copy, unmerged after."""

    def __init__(self, model) -> None:
        self.model = model
        self.is_peft = hasattr(model, "merge_adapter")

    def __enter__(self):
        if self.is_peft:
            self.model.merge_adapter()
        return self.model

    def __exit__(self, *exc) -> None:
        if self.is_peft:
            self.model.unmerge_adapter()


class VLLMRollout:
    """One vLLM engine for this process, built at the first rollout."""

    def __init__(self, tokenizer, max_model_len: int, gpu_memory_utilization: float, dtype: str):
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.gpu_memory_utilization = gpu_memory_utilization
        self.dtype = dtype
        self.llm = None
        self.synced_step: int | None = None
        self._folder: tempfile.TemporaryDirectory | None = None

    def _engine(self, model):
        if self.llm is not None:
            return self.llm
        # The engine runs inside this process (vLLM's external launcher), beside training:
        # one engine per process, each on its own GPU, as torch.distributed numbers them.
        rank, world = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        try:
            from vllm import LLM
        except ImportError as err:
            raise LitFtError(
                "task.rollout=vllm: vllm does not import here; pip install vllm, or "
                f"task.rollout=generate ({err})"
            ) from err
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._folder = tempfile.TemporaryDirectory(prefix="lit_ft_vllm_")
        base.config.save_pretrained(self._folder.name)
        self.tokenizer.save_pretrained(self._folder.name)
        launcher = {
            "RANK": rank, "LOCAL_RANK": torch.cuda.current_device() if torch.cuda.is_available()
            else 0, "WORLD_SIZE": world, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": 29511,
            "VLLM_ENABLE_V1_MULTIPROCESSING": 0,  # the engine in this process, not a child
        }  # fmt: skip
        with _launcher_env(launcher):
            self.llm = LLM(
                model=self._folder.name,
                load_format="dummy",  # no weights read: the policy's own arrive by sync_weights
                dtype=self.dtype,
                gpu_memory_utilization=self.gpu_memory_utilization,
                max_model_len=self.max_model_len,
                distributed_executor_backend="external_launcher",
                seed=rank,
                enable_prefix_caching=True,  # a group's G completions share their prompt's cache
            )
        return self.llm

    def sync_weights(self, model, policy_step: int) -> None:
        """The policy's current weights into the engine, once per optimizer step."""
        if self.synced_step == policy_step:
            return
        llm = self._engine(model)
        with torch.no_grad(), _Merged(model) as merged:
            weights = list(policy_weights(merged))
            llm.apply_model(lambda network: network.load_weights(weights))
        llm.reset_prefix_cache()  # cached prompts were computed by the old weights
        self.synced_step = policy_step

    def generate(self, model, ids, mask, generations: int, settings: dict, seed: int, stops,
                 pad: int, max_new_tokens: int, policy_step: int) -> torch.Tensor:  # fmt: skip
        """[b x G, prompt width + max_new_tokens]: the left-padded prompts, each followed by
        its completion and then `pad`."""
        from vllm import SamplingParams

        self.sync_weights(model, policy_step)
        prompts = [
            {"prompt_token_ids": row[keep.bool()].tolist()}
            for row, keep in zip(ids, mask, strict=True)
        ]
        temperature = settings["temperature"] if settings["do_sample"] else 0.0  # 0: greedy
        params = [
            SamplingParams(
                n=generations,
                temperature=temperature,
                top_p=settings.get("top_p", 1.0),
                max_tokens=max_new_tokens,
                stop_token_ids=list(stops),
                seed=(seed + i) % 2**63,
            )
            for i in range(len(prompts))
        ]
        outputs = self._engine(model).generate(prompts, sampling_params=params, use_tqdm=False)
        completions = []
        for request in outputs:
            for sample in request.outputs:
                tokens = list(sample.token_ids)
                # A completion that stopped on a stop token ends with it (the mask trains on
                # it: the policy learns to stop); add it where the engine left it out.
                if sample.finish_reason == "stop" and (not tokens or tokens[-1] not in stops):
                    tokens.append(stops[0])
                completions.append(tokens[:max_new_tokens])
        tail = torch.full((len(completions), max_new_tokens), pad, dtype=ids.dtype)
        for row, tokens in enumerate(completions):
            tail[row, : len(tokens)] = torch.tensor(tokens, dtype=ids.dtype)
        prompt_rows = ids.repeat_interleave(generations, dim=0)
        return torch.cat([prompt_rows, tail.to(ids.device)], dim=1)


@contextlib.contextmanager
def _launcher_env(values: dict[str, Any]):
    """vLLM's external launcher reads the rank variables (and vLLM whether to run the engine in
    a child process) while the engine is built; a run that no launcher started lacks them. Set
    the missing ones for that moment only: left behind, LOCAL_RANK would make the next job of
    a sweep (or any process this one starts) believe torchrun launched it."""
    added = [key for key in values if key not in os.environ]
    os.environ.update({key: str(values[key]) for key in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)
