"""The run's network step: the Auto-class model (or a given one) made ready to train.

The vocabulary grows by the tokens the task added and is padded, Liger kernels and LoRA go
in, the task checks the model and chooses its training loss, and the model is compiled when
asked. Gradient checkpointing `auto` is not decided here but by the memory plan
(lit_ft/training/memory_plan.py), once the whole network exists.
"""

from __future__ import annotations

from lit_ft.log import say
from lit_ft.model.build import ModelSpec, build_model
from lit_ft.model.chunked_loss import choose_loss
from lit_ft.model.compile import compile_model
from lit_ft.model.fsdp2 import FullyShardedStrategy
from lit_ft.model.liger import apply_liger
from lit_ft.model.peft import prepare_model, quantization_kwargs
from lit_ft.model.vision_parts import (
    PROJECTOR,
    VISION,
    freeze_vision_tower,
    has_vision_tower,
    parts_text,
)
from lit_ft.model.vocab import grow_vocab, pad_vocab


def build_network(
    spec: ModelSpec,
    data,
    lora,
    compile_options: dict,
    batch_size: int,
    strategy=None,
    given_model=None,
):
    """`data`: the prepared data (lit_ft/data/prepare.py: tokenizer, model config, task,
    datamodule). `given_model`: a model built by the caller (lit_ft.FineTuner(model=...)),
    prepared the same way instead of loaded."""
    task, tokenizer = data.task, data.tokenizer
    model = given_model
    if model is None:
        # QLoRA on a VLM quantizes the language model only (lit_ft/model/vision_parts.py)
        keep = VISION + PROJECTOR if task.auto_class == "AutoModelForImageTextToText" else ()
        load = quantization_kwargs(lora, keep)
        model = build_model(spec, task.model_class(), data.hf_config, **load)
    vision = has_vision_tower(model)  # a vision-language model: which parts train
    if vision and spec.freeze_vision_tower:
        freeze_vision_tower(model)
    model = grow_vocab(model, tokenizer)  # tokens the task added, e.g. <|im_end|>
    model = pad_vocab(model, spec.pad_vocab_to_multiple_of)
    task.stop_generation_at_end_of_turn(model)
    if spec.liger_kernel:  # on the bare model, before LoRA wraps its modules
        say(apply_liger(model))
    model = prepare_model(
        model, gradient_checkpointing=spec.gradient_checkpointing is True, lora=lora
    )
    if vision:  # after LoRA, which may freeze more
        say(f"parts: {parts_text(model)}")
    task.check_model(model)  # e.g. packing needs attention that reads position ids
    if task.shifted_labels:  # causal: before compiling, the probe runs a small forward
        # e.g. 4 x 1,024 = 4,096 tokens per micro-batch; dpo: 4 pairs x 2 x 1,024 = 8,192
        tokens = batch_size * task.sequences_per_row * task.sequence_length
        task.loss_choice = choose_loss(
            spec.chunked_loss,
            model,
            tokens,
            spec.loss_chunk_tokens,
            compiled=bool(compile_options.get("enabled")),
            liger=spec.liger_kernel,
            fully_sharded=isinstance(strategy, FullyShardedStrategy),
        )
    task.prepare_with_model(model, data.datamodule)  # e.g. DPO's reference log-probs
    compile_model(model, **compile_options)
    return model
