"""Tiny vision-language models built offline from configs: `model=tiny_vlm` (LLaVA layout) and
`model=tiny_vlm_idefics3` (Idefics3 / SmolVLM layout), for task=vision_instruction.

Each is written once, where its model config says (`model.name_or_path`, in the cache; the
config's `model.tiny_vlm` names the family to build there on first use), as an ordinary
Hugging Face folder: config, random weights
(seeded, so every machine builds the same model), and a processor with the bundled tiny
GPT-2 tokenizer, its image tokens added and a chat template. So the task's path through
`AutoProcessor` and `AutoModelForImageTextToText` is the one a real VLM takes.

The two families drive their processors differently, which is why both are here:
- LLaVA: every image is resized and cropped to 32 x 32 and becomes (32 / 8)^2 = 16 `<image>`
  tokens; pixel_values [images, 3, 32, 32].
- Idefics3: an image is split into crops of at most 32 x 32 (rows x columns, plus a global
  view), each (32 / 8)^2 / 2^2 = 4 `<image>` tokens between row/column markers, so the token
  count follows the image's size; pixel_values [rows, crops, 3, 32, 32] and a
  pixel_attention_mask.

Random weights: they learn only what the fine-tuning data teaches (the vision tower, frozen by
default, stays a fixed random feature extractor that the trained projector reads).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from lit_ft.config.compose import ASSETS_DIR
from lit_ft.errors import LitFtError

# "USER: <image>\nWhat colour is the shape? ASSISTANT: red<|endoftext|>\n"; the generation
# prompt ends at "ASSISTANT:", so an answer starts with its space (" red", one BPE token).
LLAVA_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}ASSISTANT:{{ ' ' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}{%- else -%}"
    "{%- for part in message['content'] if part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endfor -%}{%- endif -%}{{ eos_token }}{{ '\\n' }}"
    "{%- else -%}{{ message['role'] | upper }}:{{ ' ' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}<image>{{ '\\n' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{{ ' ' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}ASSISTANT:{%- endif -%}"
)

# "<|im_start|>User:<image>What colour is the shape?<end_of_utterance>\nAssistant: red
# <end_of_utterance>\n": <end_of_utterance> ends every turn and generation.
IDEFICS3_TEMPLATE = (
    "<|im_start|>"
    "{%- for message in messages -%}"
    "{{ message['role'] | capitalize }}:"
    "{%- if message['content'] is string -%}{{ ' ' }}{{ message['content'] }}{%- else -%}"
    "{%- if message['role'] == 'assistant' -%}{{ ' ' }}{%- endif -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}<image>"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}<end_of_utterance>{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}Assistant:{%- endif -%}"
)
IDEFICS3_TOKENS = [
    "<|im_start|>",
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
    "<global-img>",
    *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
]

IMAGE, PATCH = 32, 8  # the vision tower's input size and patch size (both families)
# Both families' vision towers: 2 layers, 64 wide, 32 x 32 images in 8 x 8 patches
VISION = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": IMAGE,
    "patch_size": PATCH,
}


def _text_config(tokenizer, eos_token_id: int) -> dict:
    return {
        "model_type": "llama",
        "vocab_size": len(tokenizer),
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _tokenizer(source: Path, tokens: list[str], template: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.add_special_tokens({"additional_special_tokens": tokens})
    tokenizer.chat_template = template
    return tokenizer


def _llava(tokenizer_dir: Path):
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    tokenizer = _tokenizer(tokenizer_dir, ["<image>"], LLAVA_TEMPLATE)
    images = LlavaImageProcessorPil(
        size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE}
    )
    # 16 patches + CLIP's class token, which the "default" feature strategy drops: 16 tokens
    processor = LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config={"model_type": "clip_vision_model", **VISION, "projection_dim": 64},
        text_config=_text_config(tokenizer, tokenizer.eos_token_id),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(IMAGE // PATCH) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        tie_word_embeddings=True,
    )
    return LlavaForConditionalGeneration(config), processor


def _idefics3(tokenizer_dir: Path):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import (
        Idefics3ImageProcessorPil,
    )

    tokenizer = _tokenizer(tokenizer_dir, IDEFICS3_TOKENS, IDEFICS3_TEMPLATE)
    end = tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    scale = 2  # pixel shuffle: 16 patch features -> 4 tokens per crop
    images = Idefics3ImageProcessorPil(
        size={"longest_edge": 2 * IMAGE},  # at most 2 x 2 crops of 32, plus the global view
        max_image_size={"longest_edge": IMAGE},
        do_image_splitting=True,
    )
    processor = Idefics3Processor(
        image_processor=images,
        tokenizer=tokenizer,
        image_seq_len=(IMAGE // PATCH) ** 2 // scale**2,
        chat_template=IDEFICS3_TEMPLATE,
    )
    config = Idefics3Config(
        text_config=_text_config(tokenizer, end),
        vision_config=VISION,
        scale_factor=scale,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=True,
    )
    model = Idefics3ForConditionalGeneration(config)
    model.generation_config.eos_token_id = end
    return model, processor


FAMILIES = {"llava": _llava, "idefics3": _idefics3}


def ensure_built(family: str | None, target: str) -> None:
    """`model.tiny_vlm=<family>`: build that tiny VLM into `model.name_or_path` unless it is
    there already (a new VERSION gets a new folder name in conf/model/tiny_vlm*.yaml)."""
    if not family:
        return
    if family not in FAMILIES:
        raise LitFtError(f"model.tiny_vlm='{family}' is unknown; available: {', '.join(FAMILIES)}")
    if not (Path(target) / "config.json").is_file():
        build(family, Path(target).expanduser(), ASSETS_DIR / "tiny-gpt2-pystdlib")


def build(family: str, target: Path, tokenizer_dir: Path) -> Path:
    """Write the model and its processor to `target`, atomically: a concurrent or interrupted
    build never leaves half a folder where a run would read it."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same weights on every machine
        model, processor = FAMILIES[family](tokenizer_dir)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(staging, target)
    except OSError:  # another process finished first: its folder is the same model
        shutil.rmtree(staging, ignore_errors=True)
    return target
