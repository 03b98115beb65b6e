"""Parameter-efficient fine-tuning: LoRA (and QLoRA) through the `peft` library, and
gradient checkpointing.

The run touches this file at three points:
- `prepare_model` after the model is built: gradient checkpointing, then LoRA adapters (only
  they stay trainable);
- `AdapterCheckpoint`, a callback: checkpoints hold only the adapter weights (a 124M GPT-2
  with r=8 on c_attn saves 0.3M parameters instead of 124M), and resuming loads them back
  onto the pretrained base;
- `for_export` when the Hugging Face directory is written: the merged model (a plain model,
  no peft needed to load it) or the adapter alone, as `peft.export` says.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L

from lit_ft.errors import LitFtError
from lit_ft.log import say
from lit_ft.model.vision_parts import LORA_DEFAULTS
from lit_ft.problems import Problems

# Which Linear layers get adapters, by `config.model_type`: the attention projections, as in
# the LoRA paper. Architectures not listed fall back to peft's own table
# (peft.utils.constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING).
TARGET_MODULES = {
    "gpt2": ["c_attn"],  # GPT-2 fuses q, k, v into one Conv1D
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    "t5": ["q", "v"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
}
EXPORTS = ("merged", "adapter")
CHECKPOINT_KEY = "lit_ft_peft"


@dataclass
class LoraSettings:
    """`peft=lora` (conf/peft/lora.yaml); `peft=qlora` adds 4-bit base weights."""

    r: int = 8  # adapter rank: each adapted d_in x d_out matrix gains r x (d_in + d_out) weights
    alpha: float = 16  # the update is scaled by alpha / r
    dropout: float = 0.05
    target_modules: list[str] | str | None = None  # None: TARGET_MODULES, then peft's table
    bias: str = "none"  # none | all | lora_only
    modules_to_save: list[str] | None = None  # extra modules trained in full (e.g. a new head)
    export: str = "merged"  # merged | adapter
    load_in_4bit: bool = False  # QLoRA: base weights in 4-bit (bitsandbytes, CUDA only)
    bnb_4bit_quant_type: str = "nf4"
    bnb_4bit_compute_dtype: str = "bfloat16"
    extra: dict[str, Any] = field(default_factory=dict)  # any other peft.LoraConfig argument


def quantization_kwargs(
    settings: LoraSettings | None, keep: tuple[str, ...] = ()
) -> dict[str, Any]:
    """`from_pretrained` arguments for QLoRA's 4-bit base weights (empty otherwise). `keep`:
    module names left in full precision, wherever they sit (a VLM's vision tower and
    projector: the projector trains in full beside the adapters, which a 4-bit layer cannot,
    and the image features stay as the encoder was trained). Naming any replaces
    transformers' default list, so the output embedding (`lm_head`) is named too."""
    if settings is None or not settings.load_in_4bit:
        return {}
    import torch
    from transformers import BitsAndBytesConfig

    skip = [f".*{name}" for name in keep] + ["lm_head"] if keep else None
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=settings.bnb_4bit_quant_type,
            bnb_4bit_compute_dtype=getattr(torch, settings.bnb_4bit_compute_dtype),
            bnb_4bit_use_double_quant=True,
            llm_int8_skip_modules=skip,  # despite the name, 4-bit reads it too
        )
    }


def qlora_problem() -> str | None:
    """Why 4-bit QLoRA cannot run here, or None when it can."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return (
            "peft.load_in_4bit=true (QLoRA) needs a CUDA GPU (bitsandbytes 4-bit kernels) and "
            "this machine has none; use peft=lora for LoRA on full-precision weights"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        return "peft.load_in_4bit=true (QLoRA) needs bitsandbytes: pip install 'lit-ft[qlora]'"
    return None


def prepare_model(model, gradient_checkpointing: bool = False, lora: LoraSettings | None = None):
    """Switch on gradient checkpointing and wrap the model with LoRA adapters, as configured."""
    if lora is not None and lora.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        # Casts norms to fp32 and freezes the quantized base.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing
        )
    if gradient_checkpointing:
        enable_checkpointing(model)
        say("gradient checkpointing on")
    return apply_lora(model, lora) if lora is not None else model


def enable_checkpointing(model) -> None:
    """Recompute each block's activations in backward (the Hugging Face model itself, also
    under a LoRA wrapper: its blocks are the same modules)."""
    # Non-reentrant checkpointing also works when the inputs' embeddings are frozen (LoRA),
    # where the reentrant kind would see no tensor requiring grad and skip the backward.
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # its name in newer transformers
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False  # the cache is recomputed anyway; HF warns otherwise


def apply_lora(model, settings: LoraSettings):
    from peft import LoraConfig, get_peft_model
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT

    model_type = model.config.model_type
    vlm_targets, vlm_full = LORA_DEFAULTS.get(model_type, (None, None))
    targets = (
        settings.target_modules
        or vlm_targets
        or TARGET_MODULES.get(model_type)
        or PEFT.get(model_type)
    )
    if not targets:
        raise LitFtError(
            f"peft.target_modules: lit_ft and peft know no default for model type '{model_type}'; "
            f"set it, e.g. peft.target_modules=[{','.join(_linear_names(model)[:4])}] "
            "(or 'all-linear')"
        )
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
        bias=settings.bias,
        modules_to_save=settings.modules_to_save or vlm_full,
        task_type=_task_type(model),
        fan_in_fan_out=model_type == "gpt2",  # GPT-2's Conv1D stores weights transposed
        **settings.extra,
    )
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as err:  # e.g. a target module that does not exist
        raise LitFtError(f"peft.target_modules={targets}: {err}") from err
    peft_model.lit_ft_settings = settings
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    say(
        f"LoRA r={settings.r} alpha={settings.alpha} on {targets}: {trainable:,} "
        f"trainable of {total:,} parameters ({100 * trainable / total:.2f}%)"
    )
    return peft_model


def _task_type(model):
    """peft's task type from the Hugging Face head class (any task lit_ft adds maps itself)."""
    from peft import TaskType

    name = type(model).__name__
    if model.config.is_encoder_decoder:
        return TaskType.SEQ_2_SEQ_LM
    for suffix, task_type in (
        ("ForCausalLM", TaskType.CAUSAL_LM),
        ("LMHeadModel", TaskType.CAUSAL_LM),
        ("ForSequenceClassification", TaskType.SEQ_CLS),
        ("ForTokenClassification", TaskType.TOKEN_CLS),
        ("ForQuestionAnswering", TaskType.QUESTION_ANS),
    ):
        if name.endswith(suffix):
            return task_type
    return None  # e.g. masked LM: peft wraps the model without a task-specific class


def _linear_names(model) -> list[str]:
    import torch

    linear = (name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear))
    return sorted({name.rsplit(".", 1)[-1] for name in linear})


def is_adapted(model) -> bool:
    return hasattr(model, "lit_ft_settings")


def for_export(model):
    """What goes into the Hugging Face directory: the merged model, or the adapter model as is
    (its `save_pretrained` writes adapter_config.json + adapter_model.safetensors)."""
    if not is_adapted(model) or model.lit_ft_settings.export == "adapter":
        return model
    # A merged copy: the trained model itself stays as it is (the run may still evaluate it).
    return copy.deepcopy(model).merge_and_unload()


def portable_adapter_config(directory: str | Path) -> None:
    """An exported adapter's adapter_config.json names its base model so that the name means
    the same on another machine. peft writes the path the base was loaded from: for the bundled
    model, a directory inside this installation (e.g. .../site-packages/lit_ft/assets/...),
    wrong for anyone else. It becomes `lit_ft/assets/<name>` (what it is, relative to where
    lit_ft is installed; README: loading an adapter). Hub ids and the user's own directories
    stay as given."""
    from lit_ft.config.compose import ASSETS_DIR

    path = Path(directory) / "adapter_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    base = Path(config.get("base_model_name_or_path") or "")
    if base.is_absolute() and base.resolve().is_relative_to(ASSETS_DIR.resolve()):
        bundled = base.resolve().relative_to(ASSETS_DIR.resolve())
        config["base_model_name_or_path"] = f"lit_ft/assets/{bundled.as_posix()}"
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def adapter_base(directory: str | Path) -> str:
    """Where an adapter export's base model is: its adapter_config.json's name, with
    `lit_ft/assets/<name>` (portable_adapter_config's name for the bundled model) read as this
    installation's copy."""
    from lit_ft.config.compose import ASSETS_DIR

    config = json.loads((Path(directory) / "adapter_config.json").read_text())
    base = config["base_model_name_or_path"]
    if base.startswith("lit_ft/assets/"):
        return str(ASSETS_DIR / base.removeprefix("lit_ft/assets/"))
    return base


class AdapterCheckpoint(L.Callback):
    """Checkpoints of a LoRA run hold the trainable (adapter) weights only.

    Resuming loads them onto the freshly built pretrained base, which is why loading is
    non-strict: the base's frozen weights are expected to be missing from the file.
    """

    def __init__(self, settings: LoraSettings) -> None:
        self.settings = settings

    def setup(self, trainer, pl_module, stage: str) -> None:
        pl_module.strict_loading = False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        trainable = {name for name, p in pl_module.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if k in trainable
        }
        checkpoint[CHECKPOINT_KEY] = asdict(self.settings)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if CHECKPOINT_KEY not in checkpoint:
            raise LitFtError(
                "this run uses peft=lora but the checkpoint holds a full model (saved without "
                "peft); resume it without peft, or start the LoRA run fresh"
            )
        expected = {name for name, p in pl_module.named_parameters() if p.requires_grad}
        missing = sorted(expected - set(checkpoint["state_dict"]))
        if missing:
            raise LitFtError(
                f"the checkpoint's adapter does not match the peft settings: {len(missing)} "
                f"adapter weights missing (e.g. {missing[0]}); resume with the peft.* values "
                "it was saved with"
            )


def load_adapter_checkpoint(checkpoint: dict[str, Any], spec, auto_class, config):
    """The adapted model stored in an adapter-only lit_ft checkpoint (for `lit_ft.export`)."""
    from lit_ft.model.build import build_model

    settings = LoraSettings(**checkpoint[CHECKPOINT_KEY])
    kwargs = quantization_kwargs(settings)
    base = build_model(spec, auto_class, config=config, pretrained=True, **kwargs)
    model = apply_lora(base, settings)
    prefix = "model."
    weights = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items()}
    result = model.load_state_dict(weights, strict=False)
    if result.unexpected_keys:
        raise LitFtError(f"adapter weights do not fit the model: {result.unexpected_keys[:3]}")
    return model


def peft_problems(peft, from_scratch: bool) -> Problems:
    """The rules of `peft.*` (peft=lora / qlora)."""
    import importlib.util

    problems = Problems()
    if not peft:
        return problems
    if importlib.util.find_spec("peft") is None:
        problems.append("peft=lora needs the peft library: pip install 'lit-ft[peft]'")
    problems.positive_int("peft.r", peft.r)
    problems.need(
        isinstance(peft.dropout, int | float) and 0 <= peft.dropout < 1,
        f"peft.dropout must be in [0, 1), got {peft.dropout!r}",
    )
    problems.need(
        peft.export in EXPORTS,
        f"peft.export='{peft.export}' is unknown; use one of {', '.join(EXPORTS)}",
    )
    problems.need(
        not from_scratch,
        "peft adapts pretrained weights, but model.from_scratch=true starts from random ones: "
        "train from scratch without peft",
    )
    if peft.load_in_4bit:
        problems.add(qlora_problem())
    problems.need(
        not (peft.load_in_4bit and peft.export == "merged"),
        "peft.export=merged with peft.load_in_4bit=true would merge into 4-bit weights "
        "and lose the update; use peft.export=adapter",
    )
    return problems
