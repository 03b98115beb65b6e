"""Peak memory and tokens/s: the HF Trainer at its defaults, lit_ft at its defaults, and lit_ft
with chunked loss + gradient checkpointing, on GPT-2 124M built from a config (no download).

    python benchmarks/memory.py                    # GPT-2 124M, seq 1,024, batch 2, 4 steps
    python benchmarks/memory.py --preset=tiny      # the harness's smoke test
    python benchmarks/memory.py --max-batch=64     # CUDA: also the largest batch each fits

The job is benchmarks/compare.py's (its data, model shapes, hyper-parameters and helpers,
imported from there): the bundled corpus in blocks of 1,024 tokens, GPT2Config()'s shape with
its 50,257-token vocabulary (the bundled tokenizer's ids use the first 4,096 rows). The HF
Trainer's default batch is 8; on a 2-core CPU a step of 8 x 1,024 tokens takes about a minute,
so every framework runs at --batch (2 by default) for --steps (4, the first not timed): a few
minutes in all. Each run is its own subprocess, so each peak is its own: on a GPU
`max_memory_allocated`, on a CPU the process's peak RSS (Python, libraries and data included,
for every framework alike). No evaluation runs (lit_ft's is switched off), so the peak is
training's. For lit_ft the pre-flight estimate (lit_ft/training/memory_estimate.py) is
printed next to the measured peak.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # compare.py, beside this file
import compare  # noqa: E402

ROOT, RESULTS_DIR = compare.ROOT, compare.RESULTS_DIR
PRESETS = {"gpt2-124m": compare.PRESETS["gpt2-124m"], "tiny": compare.PRESETS["tiny"]}
RUNS = {
    "hf": "HF Trainer, defaults",
    "lit_ft": "lit_ft, defaults",
    "lit_ft_plain": "lit_ft, model.chunked_loss=false",
    "lit_ft_chunked_gc": "lit_ft, chunked loss + gradient checkpointing",
}
LIT_FT_SETTINGS = {
    "lit_ft": [],
    "lit_ft_plain": ["model.chunked_loss=false"],
    "lit_ft_chunked_gc": ["model.chunked_loss=true", "model.gradient_checkpointing=true"],
}


def run_lit_ft(name: str, preset: dict, steps: int, workdir: str) -> dict:
    from omegaconf import open_dict

    import lit_ft

    overrides = compare.lit_ft_overrides(preset, steps, workdir)
    # memory of training alone: no evaluation before, one batch of one after, no export
    overrides += [
        "evaluate_before=false",
        "data.eval_batch_size=1",
        "trainer.limit_val_batches=1",
        "export=false",
        "predict=false",
        *LIT_FT_SETTINGS[name],
    ]
    cfg = lit_ft.compose(overrides)
    with open_dict(cfg):
        cfg.callbacks.bench_clock = {"_target_": "compare.LightningClock"}
    results = lit_ft.train(cfg)
    memory = results["memory"]
    return {
        "settings": LIT_FT_SETTINGS[name] or ["(defaults)"],
        "peak_memory_mb": memory["measured_peak_mb"],  # at the end of training
        "estimated_mb": memory["estimated_mb"],
        "estimate_parts_mb": memory["estimate_parts_mb"],
        "training_loss": results["training_loss"],
    }


def run_hf(name: str, preset: dict, steps: int, workdir: str) -> dict:
    from transformers import (
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    class HFClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            compare.CLOCK.step_done(state.global_step)

    _, _, tokenizer, data, hf_config = compare.load_job(preset, steps, workdir)
    args = TrainingArguments(  # its defaults, but for the batch, the steps and no saving
        output_dir=workdir,
        per_device_train_batch_size=preset["batch"],
        max_steps=steps,
        report_to="none",
        save_strategy="no",
        seed=compare.SEED,
    )
    trainer = Trainer(
        model=compare.new_model(hf_config),
        args=args,
        train_dataset=data.datasets["train"],
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        callbacks=[HFClock()],
    )
    trainer.train()
    return {"settings": ["(defaults)"], "peak_memory_mb": compare.peak_memory_mb()}


def worker(args) -> None:
    preset = {**PRESETS[args.preset], "batch": args.batch}
    compare.CLOCK = compare.Clock(args.warmup, args.steps)
    with tempfile.TemporaryDirectory(prefix="lit_ft_membench_") as workdir:
        run = run_hf if args.run == "hf" else run_lit_ft
        try:
            out = run(args.run, preset, args.steps, workdir)
        except Exception as err:  # the batch search's answer: this batch does not fit
            if "out of memory" not in str(err).lower():
                raise
            Path(args.out).write_text(json.dumps({"out_of_memory": str(err)[:300]}))
            return
    tokens = (args.steps - args.warmup) * preset["batch"] * preset["block"]
    out["tokens_per_s"] = tokens / compare.CLOCK.seconds
    Path(args.out).write_text(json.dumps(out))


def launch(name: str, args, out: Path, batch: int | None = None) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        f"--run={name}",
        f"--preset={args.preset}",
        f"--batch={batch or args.batch}",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        f"--out={out}",
    ]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def largest_batch(name: str, args, out: Path) -> dict:
    """Doubling the batch from twice --batch (which the table's run trained) up to
    --max-batch until a run is out of GPU memory: the largest that trained, and the first
    that did not (each in its own process)."""
    fits, failed = args.batch, None
    batch = args.batch * 2
    while batch <= args.max_batch:
        result = launch(name, args, out, batch=batch)
        if "out_of_memory" in result:
            failed = batch
            break
        fits, batch = batch, batch * 2
    return {"largest_batch": fits, "first_out_of_memory": failed, "searched_up_to": args.max_batch}


def print_table(runs: dict, meta: dict) -> str:
    hf = runs.get("hf")
    lines = [
        f"machine: {meta['machine']['cpu']} ({meta['machine']['cores']} cores, "
        f"{meta['machine'].get('gpu', meta['machine']['device'])}); bf16: {meta['bf16_cpu']}",
        f"job: {meta['preset']} {meta['shape']}; {meta['steps']} steps, first "
        f"{meta['warmup']} not timed; peak memory: {meta['measured_by']}",
        "",
        "| run | peak memory MB | vs HF | tokens/s | vs HF | lit_ft estimate MB "
        "(estimate / measured) | training loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        vs_mem = f"{run['peak_memory_mb'] / hf['peak_memory_mb']:.2f}x" if hf else "-"
        vs_tps = f"{run['tokens_per_s'] / hf['tokens_per_s']:.2f}x" if hf else "-"
        estimate = run.get("estimated_mb")
        estimate = f"{estimate:,.0f} ({estimate / run['peak_memory_mb']:.2f})" if estimate else "-"
        lines.append(
            f"| {RUNS[name]} | {run['peak_memory_mb']:,.0f} | {vs_mem} | "
            f"{run['tokens_per_s']:,.0f} | {vs_tps} | {estimate} | "
            f"{run.get('training_loss', 'the model computes it (full logits)')} |"
        )
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="gpt2-124m", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=2, help="sequences per step (HF: 8)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1, help="optimizer steps not timed")
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument(
        "--max-batch",
        type=int,
        default=0,
        help="CUDA only: also find the largest batch (1, 2, 4, ... up to this) each run fits",
    )
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if not 0 < args.warmup < args.steps:
        parser.error("need 0 < --warmup < --steps")
    from lit_ft.observe.memory import how_measured

    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.exists() else ""
    meta = {
        "command": " ".join(["python", "benchmarks/memory.py", *sys.argv[1:]]),
        "preset": args.preset,
        "shape": {**PRESETS[args.preset], "batch": args.batch},
        "steps": args.steps,
        "warmup": args.warmup,
        "machine": compare.machine(),
        # empty: AVX2 only, bf16 emulated (lit_ft's precision=auto then trains in fp32)
        "bf16_cpu": next((f for f in ("amx_bf16", "avx512_bf16") if f in flags), "emulated"),
        "measured_by": how_measured(),
        "loadavg_start": os.getloadavg(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in (n.strip() for n in args.runs.split(",") if n.strip()):
            runs[name] = launch(name, args, Path(tmp) / "run.json")
            if "out_of_memory" in runs[name]:
                sys.exit(f"{RUNS[name]}: out of memory at --batch={args.batch}; lower it")
            print(
                f"{RUNS[name]:48s} {runs[name]['peak_memory_mb']:8,.0f} MB "
                f"{runs[name]['tokens_per_s']:8,.0f} tokens/s",
                flush=True,
            )
        if args.max_batch:
            import torch

            if not torch.cuda.is_available():
                sys.exit("--max-batch needs a CUDA GPU: on a CPU, out of memory is the host's")
            for name in ("hf", "lit_ft"):
                if name in runs:
                    runs[name]["batch_search"] = largest_batch(name, args, Path(tmp) / "b.json")
                    print(f"{RUNS[name]:48s} largest batch: {runs[name]['batch_search']}")
    meta["loadavg_end"] = os.getloadavg()
    print()
    table = print_table(runs, meta)
    hf, default = runs.get("hf"), runs.get("lit_ft")
    if hf and default:
        meta["targets"] = {
            "lit_ft_peak_vs_hf": default["peak_memory_mb"] / hf["peak_memory_mb"],
            "lit_ft_tokens_per_s_vs_hf": default["tokens_per_s"] / hf["tokens_per_s"],
            "met": default["peak_memory_mb"] <= 0.6 * hf["peak_memory_mb"]
            and default["tokens_per_s"] >= 0.95 * hf["tokens_per_s"],
        }
        print(f"\ntargets (peak <= 0.6x HF at >= 0.95x its tokens/s): {meta['targets']}")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"{stamp}_memory_{args.preset}_{meta['machine']['device']}.json"
    path.write_text(json.dumps({**meta, "runs": runs, "table": table}, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
