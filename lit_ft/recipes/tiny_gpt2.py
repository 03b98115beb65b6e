"""Rebuild the tiny GPT-2 that ships in `lit_ft/assets/tiny-gpt2-pystdlib`.

    python -m lit_ft.recipes.tiny_gpt2 [--out DIR] [hydra overrides...]

1. writes the `python_source` corpus (the standard library's own code) to the cache;
2. trains a 4,096-token byte-level BPE tokenizer on it;
3. pretrains a 4-layer, 128-wide GPT-2 from scratch with lit_ft itself
   (`experiment=pretrain_tiny_gpt2`);
4. stores the exported model in float16 (half the bytes; lit_ft loads it back as float32)
   with its tokenizer in DIR (default: the package's assets folder).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from lit_ft.config import asset_path, compose
from lit_ft.data import corpora
from lit_ft.model.tokenizer_training import train_byte_level_bpe

ASSET = "tiny-gpt2-pystdlib"


def build(out_dir: Path, overrides: list[str]) -> dict:
    from lit_ft.run import train

    cfg = compose(["experiment=pretrain_tiny_gpt2", *overrides])
    corpus = Path(corpora.files_to_read(cfg.data.data_files, cfg.data.corpus, cfg.data.corpus_dir))
    texts = (json.loads(line)["text"] for line in corpus.open(encoding="utf-8"))
    overrides_cfg = cfg.model.config_overrides
    train_byte_level_bpe(
        texts,
        vocab_size=overrides_cfg.vocab_size,
        model_max_length=overrides_cfg.n_positions,
        out_dir=cfg.model.name_or_path,
    )
    results = train(cfg)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(results["export_dir"]).half()
    tokenizer = AutoTokenizer.from_pretrained(results["export_dir"])
    shutil.rmtree(out_dir, ignore_errors=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    record = {k: results[k] for k in ("metrics", "tokens_per_s", "wall_time_s")}
    record["command"] = " ".join(["python -m lit_ft.recipes.tiny_gpt2", *overrides])
    (out_dir / "pretraining_results.json").write_text(json.dumps(record, indent=2) + "\n")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1].strip())
    parser.add_argument("--out", type=Path, default=Path(asset_path(ASSET)))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. trainer.max_steps=100")
    args = parser.parse_args()
    results = build(args.out, args.overrides)
    print(f"pretrained tiny GPT-2 -> {args.out} (validation loss {results['metrics']['after']})")


if __name__ == "__main__":
    main()
