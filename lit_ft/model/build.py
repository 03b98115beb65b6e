"""Resolving a model and tokenizer: AutoConfig -> task -> AutoModelFor...

`ModelSpec` is everything needed to rebuild the network, kept as plain values so it can be
stored in a checkpoint and loaded with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from lit_ft.errors import LitFtError
from lit_ft.model.tiny_vlm import FAMILIES, ensure_built
from lit_ft.problems import Problems

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelSpec:
    name_or_path: str
    task: str = "causal_lm"
    tokenizer: str | None = None  # defaults to name_or_path
    from_scratch: bool = False  # random init from the config instead of pretrained weights
    model_type: str | None = None  # from-scratch without a base config, e.g. "gpt2"
    config_overrides: dict[str, Any] | None = None
    dtype: str = "float32"
    attn_implementation: str | None = "sdpa"
    revision: str | None = None
    trust_remote_code: bool = False
    # recompute activations in backward: less memory; auto: when the run would not fit
    gradient_checkpointing: bool | str = "auto"
    pad_vocab_to_multiple_of: int | None = None  # lit_ft/model/vocab.py (run.py pads, export crops)
    chunked_loss: str | bool = "auto"  # causal LMs: lit_ft/model/chunked_loss.py
    loss_chunk_tokens: int = 512  # tokens per chunk of the chunked loss
    liger_kernel: bool = False  # CUDA + liger-kernel: lit_ft/model/liger.py
    freeze_vision_tower: bool = True  # vision-language models: lit_ft/model/vision_parts.py
    tiny_vlm: str | None = (
        None  # a tiny VLM built into name_or_path first: lit_ft/model/tiny_vlm.py
    )

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer or self.name_or_path

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_config(spec: ModelSpec):
    """The model's `PretrainedConfig` with the spec's overrides applied."""
    from transformers import AutoConfig

    ensure_built(spec.tiny_vlm, spec.name_or_path)  # a tiny VLM's folder, built on first use

    overrides = spec.config_overrides or {}
    try:
        if spec.model_type:
            config = AutoConfig.for_model(spec.model_type, **overrides)
        else:
            config = AutoConfig.from_pretrained(
                spec.name_or_path,
                revision=spec.revision,
                trust_remote_code=spec.trust_remote_code,
                **overrides,
            )
    except (OSError, ValueError) as err:
        raise LitFtError(f"model.name_or_path='{spec.name_or_path}': {err}") from err
    return config


def load_tokenizer(spec: ModelSpec):
    """The tokenizer, with a pad token set when it has none (GPT-2 and most causal LMs)."""
    from transformers import AutoTokenizer

    ensure_built(spec.tiny_vlm, spec.name_or_path)

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            spec.tokenizer_name, revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise LitFtError(f"tokenizer '{spec.tokenizer_name}' cannot be loaded: {err}") from err
    if tokenizer.pad_token is None:
        # Padding is masked through the attention mask, never through pad_token_id, so
        # reusing EOS is safe: real EOS tokens keep their labels.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_processor(spec: ModelSpec, tokenizer):
    """The model's `AutoProcessor` (an image processor beside the tokenizer), for tasks that
    feed images; it shares the run's tokenizer object, so both see the same tokens."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(
            spec.tokenizer_name, revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
    except (OSError, ValueError, AttributeError, ImportError) as err:
        raise LitFtError(
            f"model.name_or_path='{spec.tokenizer_name}': its processor (AutoProcessor) cannot "
            f"be loaded: {err}"
        ) from err
    if getattr(processor, "image_processor", None) is None:
        raise LitFtError(
            f"model.name_or_path='{spec.tokenizer_name}' has no image processor "
            f"({type(processor).__name__}); images need a vision-language model's processor"
        )
    processor.tokenizer = tokenizer
    return processor


def max_positions(config) -> int | None:
    """The longest sequence the model's position embeddings allow (None: unbounded)."""
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def build_model(
    spec: ModelSpec, auto_class, config=None, pretrained: bool | None = None, **load_kwargs
):
    """Instantiate `auto_class` (the Auto class the task chose, `Task.model_class()`):
    pretrained weights, or random init from the config. The task decides the class, so this
    package needs none of lit_ft.tasks.

    `load_kwargs` go to `from_pretrained` too (e.g. QLoRA's quantization_config).
    """
    config = config if config is not None else load_config(spec)
    kwargs = {"dtype": DTYPES[spec.dtype], **load_kwargs}
    if spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    use_weights = not spec.from_scratch if pretrained is None else pretrained
    try:
        if not use_weights:
            model = auto_class.from_config(
                config, trust_remote_code=spec.trust_remote_code, **kwargs
            )
        else:
            model = auto_class.from_pretrained(
                spec.name_or_path,
                config=config,
                revision=spec.revision,
                trust_remote_code=spec.trust_remote_code,
                **kwargs,
            )
    except (OSError, ValueError) as err:
        raise LitFtError(f"could not load model '{spec.name_or_path}': {err}") from err
    # transformers picks the loss from the class name and warns, for class names such as
    # GPT2LMHeadModel that carry no task suffix, that it falls back to the causal-LM loss:
    # for a causal-LM head that fallback is the right loss, so say so and skip the warning.
    if getattr(model, "loss_type", "") is None and auto_class.__name__ == "AutoModelForCausalLM":
        model.loss_type = "ForCausalLM"
    return model


def model_problems(model, given: bool = False) -> Problems:
    """The rules of `model.*` (conf/model). `given`: the model came as an object
    (lit_ft.FineTuner(model=...)), so `name_or_path` names nothing to load."""
    from lit_ft.model.chunked_loss import chunked_loss_problems
    from lit_ft.model.liger import liger_problems
    from lit_ft.preflight import model_path_problem

    problems = Problems()
    problems.need(
        given or bool(model.name_or_path),
        "model.name_or_path is empty: give a Hub id or a local directory",
    )
    problems.need(
        model.dtype in DTYPES,
        f"model.dtype='{model.dtype}' is unknown; use one of {', '.join(DTYPES)}",
    )
    tiny_vlm = model.get("tiny_vlm")
    problems.need(
        tiny_vlm in (None, *FAMILIES),
        f"model.tiny_vlm='{tiny_vlm}' is unknown; use one of {', '.join(FAMILIES)} or null",
    )
    if model.name_or_path and not given and not tiny_vlm:  # a tiny VLM's folder: built later
        problems.add(model_path_problem(model.name_or_path, not model.model_type))
    pad = model.get("pad_vocab_to_multiple_of")
    problems.need(
        pad is None or (isinstance(pad, int) and not isinstance(pad, bool) and pad > 0),
        f"model.pad_vocab_to_multiple_of must be a positive integer or null, got {pad!r}",
    )
    checkpointing = model.get("gradient_checkpointing", "auto")
    problems.need(
        checkpointing == "auto" or isinstance(checkpointing, bool),
        f"model.gradient_checkpointing must be auto, true or false, got {checkpointing!r}",
    )
    problems += chunked_loss_problems(model)
    problems += liger_problems(model)
    return problems
