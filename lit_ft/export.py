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


def export_pretrained(model, tokenizer, out_dir: str | Path) -> Path:
    """Save model, tokenizer and generation config into `out_dir`.

    Everything is written into a sibling temporary directory first and swapped in at the end,
    so an interrupted export never leaves a half-written directory where a good one stood.
    """
    from lit_ft.model.peft import for_export
    from lit_ft.model.vocab import unpadded

    model = for_export(model)  # LoRA: merged into the weights, or the adapter alone
    model = unpadded(model)  # a padded vocabulary is cropped back to the tokenizer's
    out_dir = Path(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    generation_config = getattr(model, "generation_config", None)  # generative models only
    if generation_config is not None and tokenizer.pad_token_id is not None:
        generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    previous = out_dir.with_name(f".{out_dir.name}.previous")
    if out_dir.exists():
        shutil.rmtree(previous, ignore_errors=True)
        out_dir.rename(previous)
    staging.rename(out_dir)
    shutil.rmtree(previous, ignore_errors=True)
    return out_dir


def load_checkpoint_model(ckpt_path: str | Path):
    """Rebuild the network stored in a lit_ft checkpoint; return (model, tokenizer)."""
    import torch
    from transformers import AutoConfig

    from lit_ft.model.build import ModelSpec, build_model, load_tokenizer
    from lit_ft.model.peft import CHECKPOINT_KEY, load_adapter_checkpoint

    path = Path(ckpt_path)
    if not path.is_file():
        raise LitFtError(f"checkpoint '{path}' does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise LitFtError(f"checkpoint '{path}' cannot be read ({err}); is it truncated?") from err
    if "lit_ft" not in checkpoint:
        raise LitFtError(f"checkpoint '{path}' was not written by lit_ft (no 'lit_ft' entry)")
    spec = ModelSpec(**checkpoint["lit_ft"]["model_spec"])
    hf_config = dict(checkpoint["lit_ft"]["hf_config"])
    config = AutoConfig.for_model(hf_config.pop("model_type"), **hf_config)
    if CHECKPOINT_KEY in checkpoint:  # a LoRA run: adapter weights on the pretrained base
        return load_adapter_checkpoint(checkpoint, spec, config), load_tokenizer(spec)
    model = build_model(spec, config=config, pretrained=False)
    prefix = "model."
    weights = {
        k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)
    }
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise LitFtError(f"checkpoint '{path}' does not match its own model config: {err}") from err
    return model, load_tokenizer(spec)


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path) -> Path:
    model, tokenizer = load_checkpoint_model(ckpt_path)
    return export_pretrained(model, tokenizer, out_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lit_ft.export",
        description="Write a from_pretrained-ready directory from a lit_ft checkpoint.",
    )
    parser.add_argument("checkpoint", help="a .ckpt file written by a lit_ft run")
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
