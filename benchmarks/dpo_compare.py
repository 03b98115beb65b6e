"""lit_ft's task=dpo vs TRL's DPOTrainer on one job: tokens/s of training, and the losses.

    python benchmarks/dpo_compare.py --steps 40 --repeats 2

The job: the bundled tiny GPT-2 (lit_ft/assets/tiny-gpt2-pystdlib) on the offline preference
pairs (conf/data/python_docstring_preferences.yaml), rendered with ChatML, 8 pairs (16
sequences) per step, AdamW lr 5e-4 constant, no clipping, fp32 (TRL's default bf16 autocast
switched off: this CPU may emulate bf16), a frozen copy of the starting model as reference.
Both draw their batches from the same corpus file (lit_ft writes it; TRL gets its rows as
conversational prompt/chosen/rejected), each in its own shuffled order. Tokens/s counts the
real (non-padding) tokens of chosen and rejected sequences over training time (TRL:
`train_runtime`; lit_ft: results.json's `tokens_per_s`, validation excluded); evaluation is
off in both.

Each run is its own subprocess; runs alternate (lit_ft, TRL, lit_ft, TRL, ...) so drift on a
shared machine hits both alike. Results: a printed table and benchmarks/results/dpo_*.json.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # alternate.py, beside this file
from alternate import compare_frameworks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
BATCH, LR, BETA = 8, 5e-4, 0.1


def lit_ft_overrides(steps: int, output_dir: str) -> list[str]:
    return [
        "experiment=tiny_gpt2_docstring_dpo",
        "task.chat_template=chatml",
        f"task.beta={BETA}",
        f"trainer.max_steps={steps}",
        "trainer.precision=32-true",
        "trainer.gradient_clip_val=null",
        f"data.batch_size={BATCH}",
        f"optimizer.lr={LR}",
        "scheduler=constant",
        "scheduler.warmup_ratio=0",
        "trainer.limit_val_batches=2",  # the final evaluation only: 2 batches
        "evaluate_before=false",
        "export=false",
        "predict=false",
        f"paths.output_dir={output_dir}",
    ]


def run_lit_ft(steps: int, workdir: str) -> dict:
    from lit_ft.run import train_from_overrides

    results = train_from_overrides(lit_ft_overrides(steps, f"{workdir}/lit_ft"))
    train = results["metrics"]["train"]
    return {
        "framework": "lit_ft",
        "tokens_per_s": results["tokens_per_s"],
        "first_loss": train["loss_first_step"],
        "last_loss": train["loss_last_10_steps"],
    }


def training_pairs(workdir: str) -> list[dict]:
    """The corpus lit_ft trains on, in TRL's conversational format."""
    from lit_ft.config import compose
    from lit_ft.data.corpora import corpus_file, materialize

    cfg = compose(lit_ft_overrides(1, f"{workdir}/rows"))
    path = materialize(cfg.data.corpus, corpus_file(cfg.data.corpus, cfg.data.corpus_dir))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in rows
    ]


def run_trl(steps: int, workdir: str) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from lit_ft.config.compose import asset_path
    from lit_ft.tasks.chat import NAMED_TEMPLATES

    model_dir = asset_path("tiny-gpt2-pystdlib")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = NAMED_TEMPLATES["chatml"]
    args = DPOConfig(
        output_dir=f"{workdir}/trl", per_device_train_batch_size=BATCH, max_steps=steps,
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=0.0, beta=BETA, loss_type=["sigmoid"], logging_steps=1, report_to=[],
        use_cpu=True, save_strategy="no", seed=42, max_length=128, bf16=False,
    )  # fmt: skip
    trainer = DPOTrainer(
        # fp32 as lit_ft loads it (the files hold fp16, which from_pretrained keeps by default)
        model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        ref_model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        args=args,
        train_dataset=datasets.Dataset.from_list(training_pairs(workdir)),
        processing_class=tokenizer,
    )
    output = trainer.train()
    logged = [e for e in trainer.state.log_history if "loss" in e and "num_tokens" in e]
    last = [e["loss"] for e in logged[-10:]]
    return {
        "framework": "trl",
        "tokens_per_s": logged[-1]["num_tokens"] / output.metrics["train_runtime"],
        "first_loss": logged[0]["loss"],
        "last_loss": sum(last) / len(last),
    }


def main() -> None:
    runners = {"lit_ft": run_lit_ft, "trl": run_trl}
    done = compare_frameworks(__doc__, __file__, runners, 40, 2, RESULTS_DIR)
    if done is None:  # a worker: one framework's run, written for the parent
        return
    args, runs, kind = done
    lines = [
        f"DPO, bundled tiny GPT-2, {BATCH} pairs/step, {args.steps} steps, fp32; "
        f"{platform.processor() or platform.machine()} ({kind})",
        "| framework | tokens/s (median) | first-step loss | mean loss, last 10 steps |",
        "|---|---|---|---|",
    ]
    for framework in ("lit_ft", "trl"):
        mine = [r for r in runs if r["framework"] == framework]
        rate = statistics.median(r["tokens_per_s"] for r in mine)
        lines.append(
            f"| {framework} | {rate:,.0f} | {mine[0]['first_loss']:.4f} | "
            f"{mine[0]['last_loss']:.4f} |"
        )
    table = "\n".join(lines)
    print(table)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"dpo_{args.steps}steps_cpu.json"
    path.write_text(json.dumps({"cpu": kind, "runs": runs, "table": table}, indent=2) + "\n")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
