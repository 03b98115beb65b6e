"""Hugging Face format out of a run: `from_pretrained`-ready model, tokenizer, generation config.

    python -m lit_ft.export <checkpoint.ckpt> <out_dir>

writes the same directory from any Lightning checkpoint that lit_ft saved.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from lit_ft.errors import EXIT_USER_ERROR, LitFtError


def export_pretrained(model, tokenizer, out_dir: str | Path, processor=None) -> Path:
    """Save model, tokenizer (or, for a vision-language model, its `processor`: image
    processor, tokenizer, chat template) and generation config into `out_dir`.

    Everything is written into a sibling temporary directory first and swapped in at the end,
    so an interrupted export never leaves a half-written directory where a good one stood.
    """
    from lit_ft.model.peft import for_export, portable_adapter_config
    from lit_ft.model.vocab import unpadded

    model = for_export(model)  # LoRA: merged into the weights, or the adapter alone
    model = unpadded(model)  # a padded vocabulary is cropped back to the tokenizer's
    out_dir = Path(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    padded_generation(getattr(model, "generation_config", None), tokenizer)  # generative only
    model.save_pretrained(staging)
    portable_adapter_config(staging)  # an adapter export: its base named for other machines
    _save_preprocessing(staging, tokenizer, processor)
    return _swap_in(staging, out_dir)


def _save_preprocessing(staging: Path, tokenizer, processor) -> None:
    # A vision-language model's processor (image processor, tokenizer, chat template), so
    # AutoProcessor and pipeline("image-text-to-text") load the export as they load the base
    (processor if processor is not None else tokenizer).save_pretrained(staging)


def padded_generation(generation_config, tokenizer):
    """The generation config told the tokenizer's pad token (generate() warns without it) and
    the chat template's end of turn, so `generate` and `pipeline` stop at the end of the
    answer (eos_token_id [EOS, <|im_end|>]) instead of writing the next turn too."""
    from lit_ft.tasks.chat import stop_at_end_of_turn

    if generation_config is not None and tokenizer.pad_token_id is not None:
        generation_config.pad_token_id = tokenizer.pad_token_id
    return stop_at_end_of_turn(generation_config, tokenizer)


def spec_and_config(checkpoint: dict):
    """The ModelSpec and Hugging Face config a lit_ft checkpoint stores of its network."""
    from transformers import AutoConfig

    from lit_ft.model.build import ModelSpec

    spec = ModelSpec(**checkpoint["lit_ft"]["model_spec"])
    hf_config = dict(checkpoint["lit_ft"]["hf_config"])
    return spec, AutoConfig.for_model(hf_config.pop("model_type"), **hf_config)


def _swap_in(staging: Path, out_dir: Path) -> Path:
    """Replace `out_dir` by the complete `staging` directory (the old one goes last)."""
    previous = out_dir.with_name(f".{out_dir.name}.previous")
    if out_dir.exists():
        shutil.rmtree(previous, ignore_errors=True)
        out_dir.rename(previous)
    staging.rename(out_dir)
    shutil.rmtree(previous, ignore_errors=True)
    return out_dir


def load_checkpoint_model(ckpt_path: str | Path):
    """Rebuild the network stored in a lit_ft checkpoint; return (model, tokenizer,
    processor), the processor None unless the task feeds images."""
    import torch

    from lit_ft.model.build import build_model
    from lit_ft.model.peft import CHECKPOINT_KEY, load_adapter_checkpoint
    from lit_ft.tasks import get_task

    path = Path(ckpt_path)
    if not path.is_file():
        raise LitFtError(f"checkpoint '{path}' does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise LitFtError(f"checkpoint '{path}' cannot be read ({err}); is it truncated?") from err
    if "lit_ft" not in checkpoint:
        raise LitFtError(f"checkpoint '{path}' was not written by lit_ft (no 'lit_ft' entry)")
    spec, config = spec_and_config(checkpoint)
    auto_class = get_task(spec.task).model_class()
    tokenizer, processor = checkpoint_preprocessing(checkpoint, spec)
    if CHECKPOINT_KEY in checkpoint:  # a LoRA run: adapter weights on the pretrained base
        adapted = load_adapter_checkpoint(checkpoint, spec, auto_class, config)
        return adapted, tokenizer, processor
    model = build_model(spec, auto_class, config=config, pretrained=False)
    prefix = "model."
    weights = {
        k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)
    }
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise LitFtError(f"checkpoint '{path}' does not match its own model config: {err}") from err
    return model, tokenizer, processor


def checkpoint_preprocessing(checkpoint: dict, spec):
    """(tokenizer, processor) of the run: the model's tokenizer with the chat template and
    end-of-turn token the run set on it (stored in the checkpoint by the LightningModule),
    and, for a task that feeds images, the model's processor around it (else None)."""
    from lit_ft.model.build import load_processor, load_tokenizer
    from lit_ft.tasks import get_task
    from lit_ft.tasks.chat import apply_chat_settings

    tokenizer = apply_chat_settings(load_tokenizer(spec), checkpoint["lit_ft"].get("tokenizer"))
    if not getattr(get_task(spec.task), "needs_processor", False):
        return tokenizer, None
    processor = load_processor(spec, tokenizer)
    processor.chat_template = tokenizer.chat_template
    return tokenizer, processor


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path) -> Path:
    from lit_ft.training.sharded_checkpoint import is_sharded_checkpoint

    if is_sharded_checkpoint(ckpt_path):  # trainer=fsdp2's directories
        return export_sharded_checkpoint(ckpt_path, out_dir)
    model, tokenizer, processor = load_checkpoint_model(ckpt_path)
    return export_pretrained(model, tokenizer, out_dir, processor)


SHARD_BYTES = 2 * 2**30  # safetensors files of at most 2 GB, as Hub models commonly are


def export_sharded_checkpoint(
    ckpt_path: str | Path, out_dir: str | Path, max_shard_bytes: int = SHARD_BYTES
) -> Path:
    """A sharded (trainer=fsdp2) checkpoint to `from_pretrained` form, one safetensors file
    at a time: each file's tensors are read whole from every rank's shards, written and
    dropped, so memory peaks at one file (2 GB), not the model (an 8B model is 32 GB in
    fp32). The names and the tied weights (written once) come from the model built on
    the meta device, which costs no memory."""

    import torch
    from transformers import GenerationConfig

    from lit_ft.tasks import get_task
    from lit_ft.training.sharded_checkpoint import read_sharded

    saved = read_sharded(ckpt_path)
    spec, config = spec_and_config(saved)
    with torch.device("meta"):
        model = get_task(spec.task).model_class().from_config(config)
    kept = model.state_dict().keys()  # persistent buffers too; tied weights appear twice...
    names = [n for n, _ in model.named_parameters() if n in kept]  # ...parameters once
    names += [n for n, _ in model.named_buffers() if n in kept]
    out_dir = Path(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shapes = {name: saved["state_dict"][f"model.{name}"] for name in names}  # meta tensors
    _write_weight_files(ckpt_path, shapes, staging, max_shard_bytes)
    config.save_pretrained(staging)
    tokenizer, processor = checkpoint_preprocessing(saved, spec)
    if model.can_generate():
        generation = padded_generation(GenerationConfig.from_model_config(config), tokenizer)
        generation.save_pretrained(staging)
    _save_preprocessing(staging, tokenizer, processor)
    return _swap_in(staging, out_dir)


def _write_weight_files(ckpt_path, shapes: dict, staging: Path, max_shard_bytes: int):
    """model.safetensors, or Hugging Face's model-0000i-of-0000n.safetensors + index when
    the weights pass one file's size. huggingface_hub plans the files from the weights'
    shapes (meta tensors: nothing read yet); each file's tensors are then read, written
    and dropped."""
    import json

    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    from lit_ft.training.sharded_checkpoint import read_weights

    plan = split_torch_state_dict_into_shards(shapes, max_shard_size=max_shard_bytes)
    for filename, names in plan.filename_to_tensors.items():
        tensors = read_weights(ckpt_path, [f"model.{name}" for name in names])
        tensors = {name.removeprefix("model."): t.contiguous() for name, t in tensors.items()}
        save_file(tensors, staging / filename, metadata={"format": "pt"})
        del tensors  # one file's weights in memory at a time
    if plan.is_sharded:  # the index from_pretrained reads: tensor -> file, and the total
        index = {"metadata": plan.metadata, "weight_map": plan.tensor_to_filename}
        (staging / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def export_run(
    cfg, trainer, model, tokenizer, output_dir: Path, best: str | None, processor=None
) -> dict:
    """The run's export step: hf_model/ (the weights the run hands on), hf_model_last/ on
    request (`export_last`), the Hub upload (`push_to_hub`). Returns the paths and URL."""
    from lit_ft.config import to_plain
    from lit_ft.hub import push_to_hub
    from lit_ft.training.checkpoint import last_checkpoint

    done: dict[str, str | None] = {"export_dir": None, "export_last_dir": None, "hub_url": None}
    last = last_checkpoint(trainer)
    if cfg.export:
        exported = export_model(trainer, model, tokenizer, output_dir / "hf_model", best, processor)
        done["export_dir"] = str(exported)
    if cfg.export_last and last:
        done["export_last_dir"] = str(export_checkpoint(last, output_dir / "hf_model_last"))
    upload = to_plain(cfg.push_to_hub)
    if upload.pop("enabled") and done["export_dir"]:
        done["hub_url"] = push_to_hub(done["export_dir"], **upload)
    return done


def export_model(
    trainer, model, tokenizer, out_dir: Path, best: str | None, processor=None
) -> Path:
    """The weights the run hands on in Hugging Face format (from_pretrained loads them): the
    module's own, or, when each process holds only its shard, the checkpoint's."""
    from lit_ft.model.strategy import shards_weights
    from lit_ft.training.checkpoint import last_checkpoint

    if shards_weights(trainer):  # the module holds only this rank's shard
        return export_checkpoint(best or last_checkpoint(trainer), out_dir)
    return export_pretrained(model, tokenizer, out_dir, processor)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lit_ft.export",
        description="Write a from_pretrained-ready directory from a lit_ft checkpoint.",
    )
    parser.add_argument(
        "checkpoint", help="a .ckpt file (or trainer=fsdp2's .ckpt directory) of a lit_ft run"
    )
    parser.add_argument("out_dir", help="directory to write (replaced if it exists)")
    args = parser.parse_args(argv)
    try:
        out = export_checkpoint(args.checkpoint, args.out_dir)
    except LitFtError as err:
        print(f"lit_ft: error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    print(f"exported {args.checkpoint} -> {out}")


if __name__ == "__main__":
    main()
