"""lit_ft's task=grpo vs TRL's GRPOTrainer on one job: seconds a step, generation, reward.

    python benchmarks/grpo_compare.py --steps 30 --repeats 1

The job (experiment=tiny_gpt2_docstring_grpo's): the bundled tiny GPT-2 writes one-line
docstrings for standard-library functions, rewarded by the unigram F1 of its first line with
the real summary (lit_ft.tasks.rewards:word_f1); prompts rendered with lit_ft's plain chat
template in both; 4 prompts x 8 completions of at most 24 tokens a step (temperature 1,
top_p 1, top_k off), loss dapo, advantages scaled by the group's std, no KL (beta 0), AdamW
lr 2e-4 constant, no clipping, fp32 (TRL's default bf16 autocast off: this CPU may emulate
bf16), evaluation off. Each framework draws prompts in its own shuffled order and samples
with its own generator, so their rewards are two samples of the same process, not equal.

Reported per framework: seconds a step (training time / steps: generation, reward, forward
and backward), completion tokens generated a second over the whole step, and the mean
training reward of the first and the last 5 steps. Each run is its own subprocess; runs
alternate (lit_ft, TRL, ...). Results: a printed table and benchmarks/results/grpo_*.json.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # alternate.py, beside this file
from alternate import compare_frameworks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
PROMPTS, GENERATIONS, NEW_TOKENS, LR = 4, 8, 24, 2e-4


def lit_ft_overrides(steps: int, output_dir: str) -> list[str]:
    return [
        "experiment=tiny_gpt2_docstring_grpo",
        "task.chat_template=plain",
        f"task.num_generations={GENERATIONS}",
        f"task.max_new_tokens={NEW_TOKENS}",
        f"data.batch_size={PROMPTS}",
        f"trainer.max_steps={steps}",
        "trainer.precision=32-true",
        "trainer.gradient_clip_val=null",
        f"optimizer.lr={LR}",
        "scheduler=constant",
        "scheduler.warmup_ratio=0",
        "trainer.limit_val_batches=0",
        "evaluate_before=false",
        "export=false",
        "predict=false",
        "trainer.enable_progress_bar=false",
        f"paths.output_dir={output_dir}",
    ]


def _first_and_last(per_step: list[float]) -> tuple[float, float]:
    return statistics.mean(per_step[:5]), statistics.mean(per_step[-5:])


def run_lit_ft(steps: int, workdir: str) -> dict:
    from lit_ft.run import train_from_overrides

    out = Path(workdir) / "lit_ft"
    started = time.perf_counter()
    results = train_from_overrides(lit_ft_overrides(steps, str(out)))
    wall = time.perf_counter() - started
    by_step: dict[int, list] = {}
    for line in (out / "completions.jsonl").read_text().splitlines():
        row = json.loads(line)
        by_step.setdefault(row["step"], []).append(row)
    rewards = [statistics.mean(r["reward"] for r in by_step[s]) for s in sorted(by_step)]
    train = results["metrics"]["train"]
    tokens = _completion_tokens(out / "completions.jsonl")
    first, last = _first_and_last(rewards)
    return {
        "framework": "lit_ft",
        "seconds_per_step": train["train_seconds"] / steps,
        "completion_tokens_per_s": tokens / train["train_seconds"],
        "reward_first_5": first,
        "reward_last_5": last,
        "wall_s": wall,
    }


def _completion_tokens(path: Path) -> int:
    from transformers import AutoTokenizer

    from lit_ft.config.compose import asset_path

    tokenizer = AutoTokenizer.from_pretrained(asset_path("tiny-gpt2-pystdlib"))
    texts = [json.loads(line)["completion"] for line in path.read_text().splitlines()]
    return sum(len(tokenizer(t)["input_ids"]) for t in texts)


def prompt_rows(workdir: str) -> list[dict]:
    """The prompts lit_ft trains on, as TRL's conversational rows with the reference."""
    from lit_ft.config import compose
    from lit_ft.data.corpora import corpus_file, materialize

    cfg = compose(lit_ft_overrides(1, f"{workdir}/rows"))
    path = materialize(cfg.data.corpus, corpus_file(cfg.data.corpus, cfg.data.corpus_dir))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [
        {"prompt": [{"role": "user", "content": r["prompt"]}], "chosen": r["chosen"]} for r in rows
    ]


def word_f1_of_messages(prompts, completions, **columns) -> list[float]:
    """lit_ft's word_f1 on TRL's conversational completions (lists of messages)."""
    from lit_ft.tasks.rewards import word_f1

    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return word_f1(prompts, texts, **columns)


def run_trl(steps: int, workdir: str) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from lit_ft.config.compose import asset_path
    from lit_ft.tasks.chat import NAMED_TEMPLATES

    model_dir = asset_path("tiny-gpt2-pystdlib")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = NAMED_TEMPLATES["plain"]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    args = GRPOConfig(
        output_dir=f"{workdir}/trl", per_device_train_batch_size=PROMPTS * GENERATIONS,
        num_generations=GENERATIONS, max_completion_length=NEW_TOKENS, max_steps=steps,
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=0.0, beta=0.0, loss_type="dapo", scale_rewards="group",
        temperature=1.0, top_p=1.0, top_k=0, logging_steps=1, report_to=[], use_cpu=True,
        save_strategy="no", seed=42, bf16=False,
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        reward_funcs=[word_f1_of_messages],
        args=args,
        train_dataset=datasets.Dataset.from_list(prompt_rows(workdir)),
        processing_class=tokenizer,
    )
    started = time.perf_counter()
    output = trainer.train()
    wall = time.perf_counter() - started
    logged = [e for e in trainer.state.log_history if "reward" in e]
    rewards = [e["reward"] for e in logged]
    lengths = [e.get("completions/mean_length", 0.0) for e in logged]
    runtime = output.metrics["train_runtime"]
    first, last = _first_and_last(rewards)
    return {
        "framework": "trl",
        "seconds_per_step": runtime / steps,
        "completion_tokens_per_s": sum(lengths) * PROMPTS * GENERATIONS / runtime,
        "reward_first_5": first,
        "reward_last_5": last,
        "wall_s": wall,
    }


def main() -> None:
    runners = {"lit_ft": run_lit_ft, "trl": run_trl}
    done = compare_frameworks(__doc__, __file__, runners, 30, 1, RESULTS_DIR)
    if done is None:  # a worker: one framework's run, written for the parent
        return
    args, runs, kind = done
    lines = [
        f"GRPO, bundled tiny GPT-2, {PROMPTS} prompts x {GENERATIONS} completions of <= "
        f"{NEW_TOKENS} tokens a step, {args.steps} steps, fp32; "
        f"{platform.processor() or platform.machine()} ({kind})",
        "| framework | s / step (median) | completion tokens/s | reward, first 5 steps | "
        "reward, last 5 steps |",
        "|---|---|---|---|---|",
    ]
    for framework in ("lit_ft", "trl"):
        mine = [r for r in runs if r["framework"] == framework]
        lines.append(
            f"| {framework} | {statistics.median(r['seconds_per_step'] for r in mine):.3f} | "
            f"{statistics.median(r['completion_tokens_per_s'] for r in mine):,.0f} | "
            f"{mine[0]['reward_first_5']:.4f} | {mine[0]['reward_last_5']:.4f} |"
        )
    table = "\n".join(lines)
    print(table)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"grpo_{args.steps}steps_cpu.json"
    path.write_text(json.dumps({"cpu": kind, "runs": runs, "table": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
