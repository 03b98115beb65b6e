"""lit_ft vs the Hugging Face Trainer vs a bare PyTorch loop, on one job, in one invocation.

    python benchmarks/compare.py --steps 40 --warmup 5 --repeats 3

The job (the issue's reference): GPT-2 built from a config (4 layers, 256 wide, 4 heads, 256
positions, the bundled 4,096-token tokenizer), blocks of 256 tokens, batch 8, on the bundled
offline corpus (conf/data/python_reference.yaml, tokenized once by lit_ft's datamodule and
shared by all three). Hyper-parameters are the same everywhere: AdamW lr 2e-3, weight decay
0.01 off biases/norms, linear schedule with 5% warm-up, gradient clipping at 1.0, seed 42.

Each run is its own subprocess (clean memory figures, no shared warm caches in the
interpreter), and runs alternate A B C A B C ... so drift on a shared machine hits every
framework alike. Tokens/s counts the steps after the first `--warmup` optimizer steps (clock
read at the end of step `warmup` and of the last step, after a device sync on GPUs). Eval loss
is computed the same way for everyone, after training: token-weighted cross-entropy over the
validation blocks, in fp32.

MFU uses the training FLOPs per token counted on a meta-device copy of the model (as lit_ft's
throughput logger does) against one device's peak: Lightning's table on a GPU, a timed
1024 x 1024 matmul on a CPU (measured once before the runs). "first step s" is the time from
the process's start to the end of its first optimizer step (imports and data loading
included; the shared harness loads the data the same way for all three).

Modes:
  same      every framework at identical settings (fp32, fused AdamW, SDPA, no compile):
            framework overhead, lit_ft vs the bare loop (target: within 3%)
  defaults  each framework's out-of-the-box speed settings (lit_ft's config defaults,
            TrainingArguments' defaults), the job's hyper-parameters (target: >= 1.25x HF)
  best      each framework's fastest settings on this device (torch.compile, bf16 where the
            hardware computes it)
  fp32, bf16  lit_ft alone at trainer.precision=32-true / bf16-mixed (fused AdamW, clipping):
            is `precision=auto`'s choice the faster one on this device?
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"

PRESETS = {
    # the reference job on 2 CPU cores
    "gpt2-4x256": dict(n_layer=4, n_head=4, n_embd=256, block=256, batch=8, vocab=4096),
    # the bundled default model's shape with the default data's block and batch
    "bundled-4x128": dict(n_layer=4, n_head=4, n_embd=128, block=128, batch=16, vocab=4096),
    # a smoke test of the harness (tests/test_benchmarks.py), not a measurement
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, block=64, batch=4, vocab=4096),
    # GPT-2 124M's shape (for a GPU; the bundled tokenizer's ids index the first 4,096 rows)
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768, block=1024, batch=8, vocab=50257),
}
LR, WEIGHT_DECAY, WARMUP_RATIO, CLIP, SEED = 2e-3, 0.01, 0.05, 1.0, 42
MODES = {
    "same": ("lit_ft", "bare", "hf"),
    "defaults": ("lit_ft", "hf"),
    "best": ("lit_ft", "hf", "bare"),
    "fp32": ("lit_ft",),
    "bf16": ("lit_ft",),
}
PRECISION_MODES = {"fp32": "32-true", "bf16": "bf16-mixed"}


# -- the shared job ------------------------------------------------------------------------------
def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def bf16_ok() -> bool:
    """What lit_ft's precision=auto decides: bf16 only where the hardware computes it."""
    from lit_ft.model.precision import resolve_precision

    return resolve_precision("auto", "auto")[0] == "bf16-mixed"


def lit_ft_overrides(preset: dict, steps: int, output_dir: str) -> list[str]:
    model = (
        f"{{n_layer: {preset['n_layer']}, n_head: {preset['n_head']}, n_embd: {preset['n_embd']}, "
        f"n_positions: {preset['block']}, vocab_size: {preset['vocab']}, "
        "bos_token_id: 0, eos_token_id: 0}"
    )
    return [
        "model.from_scratch=true",
        "model.model_type=gpt2",
        f"model.config_overrides={model}",
        f"data.block_size={preset['block']}",
        f"data.batch_size={preset['batch']}",
        f"trainer.max_steps={steps}",
        "trainer.max_epochs=1000",  # max_steps decides
        f"optimizer.lr={LR}",
        f"optimizer.weight_decay={WEIGHT_DECAY}",
        f"scheduler.warmup_ratio={WARMUP_RATIO}",
        f"trainer.gradient_clip_val={CLIP}",
        f"seed={SEED}",
        "evaluate_before=false",
        f"paths.output_dir={output_dir}",
    ]


def load_job(preset: dict, steps: int, output_dir: str):
    """The composed lit_ft config plus its tokenizer and the prepared blocks (cached)."""
    from omegaconf import OmegaConf

    import lit_ft
    from lit_ft.model.build import ModelSpec, load_config, load_tokenizer
    from lit_ft.run import build_task_and_data

    cfg = lit_ft.compose(lit_ft_overrides(preset, steps, output_dir))
    spec = ModelSpec(task=cfg.task.name, **OmegaConf.to_container(cfg.model, resolve=True))
    tokenizer, hf_config = load_tokenizer(spec), load_config(spec)
    _, data = build_task_and_data(cfg, tokenizer, hf_config)
    data.setup("fit")
    return cfg, spec, tokenizer, data, hf_config


def new_model(hf_config):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(SEED)
    return AutoModelForCausalLM.from_config(hf_config, attn_implementation="sdpa")


def eval_loss(model, blocks, batch_size: int = 16) -> float:
    """Token-weighted mean cross-entropy over all validation blocks, fp32, no dropout."""
    import torch

    model = model.float().eval()
    dev = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(blocks), batch_size):
            ids = torch.tensor(blocks[start : start + batch_size]["input_ids"], device=dev)
            loss = model(input_ids=ids, labels=ids).loss
            targets = ids[:, 1:].numel()
            total, count = total + float(loss) * targets, count + targets
    return total / count


class Clock:
    """Reads the clock at the end of optimizer step `warmup` and at the end of the last step."""

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps = warmup, steps
        self.t0 = self.t1 = None
        self.first_step_s = None  # from the process's start to the end of optimizer step 1

    def step_done(self, step: int) -> None:  # step counts from 1
        if step == 1:
            from lit_ft.observe.throughput import process_start_time

            started = process_start_time()
            self.first_step_s = time.time() - started if started else None
        if step in (self.warmup, self.steps):
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if step == self.warmup:
                self.t0, self.cpu0 = time.perf_counter(), time.process_time()
            if step == self.steps:
                self.t1, self.cpu1 = time.perf_counter(), time.process_time()

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0

    @property
    def cpu_seconds(self) -> float:
        """CPU time of all the process's threads over the timed steps: unlike the wall clock,
        it does not grow when a shared or virtual machine takes the cores away for a while."""
        return self.cpu1 - self.cpu0


CLOCK: Clock | None = None  # the worker's clock, reached by the Lightning/HF callbacks


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# -- lit_ft: its real entry point, lit_ft.train(compose(overrides)) ------------------------------
try:
    import lightning as _L

    class LightningClock(_L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            CLOCK.step_done(trainer.global_step)

except ImportError:  # the parent process never needs it
    pass


def run_lit_ft(mode: str, preset: dict, steps: int, workdir: str) -> dict:
    from omegaconf import open_dict
    from transformers import AutoModelForCausalLM

    import lit_ft

    overrides = lit_ft_overrides(preset, steps, workdir)
    if mode == "same":
        overrides += ["trainer.precision=32-true", "optimizer.fused=true"]
    elif mode == "best":
        overrides += ["compile.enabled=true"]  # precision auto: bf16 where computed
    elif mode in PRECISION_MODES:
        overrides += [f"trainer.precision={PRECISION_MODES[mode]}", "optimizer.fused=true"]
    cfg = lit_ft.compose(overrides)
    with open_dict(cfg):
        cfg.callbacks.bench_clock = {"_target_": "__main__.LightningClock"}
    results = lit_ft.train(cfg)
    _, _, _, data, _ = load_job(preset, steps, workdir)
    model = AutoModelForCausalLM.from_pretrained(results["export_dir"]).to(device())
    return {
        "eval_loss": eval_loss(model, data.datasets["validation"]),
        "settings": overrides[len(lit_ft_overrides(preset, steps, workdir)) :] or ["(defaults)"],
        # precision=auto decides, except in the precision modes
        "bf16": mode == "bf16" or (mode in ("defaults", "best") and bf16_ok()),
        "lit_ft_throughput": results.get("throughput"),
        "data_prep_s": results.get("data_prep_s"),
    }


# -- the Hugging Face Trainer: the seeds' workflow -----------------------------------------------
def run_hf(mode: str, preset: dict, steps: int, workdir: str) -> dict:
    from transformers import (
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    class HFClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            CLOCK.step_done(state.global_step)

    _, _, tokenizer, data, hf_config = load_job(preset, steps, workdir)
    settings = {}
    if mode == "same":
        settings = {"optim": "adamw_torch_fused", "logging_steps": 10}
    elif mode == "best":
        settings = {"torch_compile": True, "bf16": bf16_ok()}
    args = TrainingArguments(
        output_dir=workdir,
        per_device_train_batch_size=preset["batch"],
        max_steps=steps,
        learning_rate=LR,
        weight_decay=WEIGHT_DECAY,
        warmup_steps=math.ceil(WARMUP_RATIO * steps),
        max_grad_norm=CLIP,
        seed=SEED,
        report_to="none",
        save_strategy="no",
        **settings,
    )
    trainer = Trainer(
        model=new_model(hf_config),
        args=args,
        train_dataset=data.datasets["train"],
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        callbacks=[HFClock()],
    )
    trainer.train()
    model = trainer.model
    if hasattr(model, "_orig_mod"):
        model = model._orig_mod
    return {
        "eval_loss": eval_loss(model, data.datasets["validation"]),
        "settings": [f"{k}={v}" for k, v in settings.items()] or ["(defaults)"],
        "bf16": bool(settings.get("bf16")),
    }


# -- a bare PyTorch loop doing the same math -----------------------------------------------------
def run_bare(mode: str, preset: dict, steps: int, workdir: str) -> dict:
    import torch
    from transformers import get_scheduler

    _, _, _, data, hf_config = load_job(preset, steps, workdir)
    dev = device()
    model = new_model(hf_config).to(dev).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "ln_" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "ln_" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay}, {"params": rest, "weight_decay": 0.0}],
        lr=LR,
        weight_decay=WEIGHT_DECAY,
        fused=True,
    )
    schedule = get_scheduler("linear", optimizer, math.ceil(WARMUP_RATIO * steps), steps)
    use_bf16 = mode == "best" and bf16_ok()
    forward = torch.compile(model) if mode == "best" else model
    blocks = data.datasets["train"]
    generator = torch.Generator().manual_seed(SEED)
    loader = torch.utils.data.DataLoader(
        blocks,
        batch_size=preset["batch"],
        shuffle=True,
        generator=generator,
        collate_fn=lambda rows: torch.tensor([r["input_ids"] for r in rows]),
    )
    step = 0
    while step < steps:
        for ids in loader:
            ids = ids.to(dev, non_blocking=True)
            with torch.autocast(dev, dtype=torch.bfloat16, enabled=use_bf16):
                loss = forward(input_ids=ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            CLOCK.step_done(step)
            if step == steps:
                break
    return {
        "eval_loss": eval_loss(model, data.datasets["validation"]),
        "settings": ["torch.compile", "bf16 autocast"][: 1 + use_bf16] if mode == "best" else [],
        "bf16": use_bf16,
    }


RUNNERS = {"lit_ft": run_lit_ft, "hf": run_hf, "bare": run_bare}


def worker(args) -> None:
    global CLOCK
    preset = PRESETS[args.preset]
    CLOCK = Clock(args.warmup, args.steps)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lit_ft_bench_") as workdir:
        out = RUNNERS[args.framework](args.mode, preset, args.steps, workdir)
    tokens = (args.steps - args.warmup) * preset["batch"] * preset["block"]
    out.update(
        tokens_per_s=tokens / CLOCK.seconds,
        tokens_per_cpu_s=tokens / CLOCK.cpu_seconds,
        timed_seconds=CLOCK.seconds,
        peak_memory_mb=peak_memory_mb(),
        first_step_s=CLOCK.first_step_s,
        wall_s=time.perf_counter() - started,
    )
    Path(args.out).write_text(json.dumps(out))


# -- the parent: alternate runs, summarize ----------------------------------------------------
def machine() -> dict:
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if "model name" in ln), None)
    cpu = cpu or platform.processor()
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    import lightning
    import transformers

    info.update(lightning=lightning.__version__, transformers=transformers.__version__)
    return info


def model_flops(preset: dict) -> dict:
    """Training FLOPs per token (counted on a meta-device model, as lit_ft's logger does) and
    one device's peak FLOP/s for fp32 and bf16: Lightning's table on a GPU, a timed matmul on
    a CPU (measured here, before any run, on the quiet machine)."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    from lit_ft.observe.throughput import count_flops_per_token, matmul_flops_per_s

    config = GPT2Config(
        n_layer=preset["n_layer"],
        n_head=preset["n_head"],
        n_embd=preset["n_embd"],
        n_positions=preset["block"],
        vocab_size=preset["vocab"],
        bos_token_id=0,
        eos_token_id=0,
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    per_token, how = count_flops_per_token(model, preset["block"])
    if device() == "cuda":
        from lightning.fabric.utilities.throughput import get_available_flops

        gpu = torch.device("cuda")
        peaks = {"fp32": get_available_flops(gpu, torch.float32)}
        peaks["bf16"] = get_available_flops(gpu, torch.bfloat16)
        source = "Lightning's GPU table"
    else:
        peaks = {"fp32": matmul_flops_per_s(torch.float32)}
        # bf16 too, even where precision=auto stays fp32: it shows why (an emulated bf16
        # matmul runs at ~1% of fp32 on a CPU without avx512_bf16/AMX).
        peaks["bf16"] = matmul_flops_per_s(torch.bfloat16)
        source = "timed 1024x1024 matmul on this CPU"
    return {"per_token": per_token, "counted_by": how, "peak": peaks, "peak_from": source}


def mfu(run: dict, flops: dict) -> float | None:
    peak = flops["peak"]["bf16" if run.get("bf16") else "fp32"]
    return run["tokens_per_s"] * flops["per_token"] / peak if peak else None


def launch(framework: str, mode: str, args, out: Path) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        f"--framework={framework}",
        f"--mode={mode}",
        f"--preset={args.preset}",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        f"--out={out}",
    ]
    load_before = os.getloadavg()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"{framework}/{mode} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(out.read_text())
    result["loadavg_before"] = load_before
    result["loadavg_after"] = os.getloadavg()
    return result


def summarize(runs: list[dict]) -> dict:
    summary = {}
    for mode in dict.fromkeys(r["mode"] for r in runs):
        rows = {}
        for fw in MODES[mode]:
            mine = [r for r in runs if r["mode"] == mode and r["framework"] == fw]
            if not mine:
                continue
            tps = [r["tokens_per_s"] for r in mine]
            rows[fw] = {
                "tokens_per_s_median": statistics.median(tps),
                "mfu_median": _median_of(mine, "mfu"),
                "tokens_per_cpu_s_median": _median_of(mine, "tokens_per_cpu_s"),
                "tokens_per_s_all": [round(x, 1) for x in tps],
                "peak_memory_mb": statistics.median(r["peak_memory_mb"] for r in mine),
                "first_step_s": _median_of(mine, "first_step_s"),
                "eval_loss": statistics.median(r["eval_loss"] for r in mine),
                "settings": mine[0]["settings"],
            }
        # Ratios: of medians, and the median of per-repeat ratios (runs of one repeat ran
        # back to back, so they saw the same machine).
        for fw, row in rows.items():
            row["vs"] = {}
            for peer in rows:
                if peer == fw:
                    continue
                pairs = [
                    (a, b)
                    for a in runs
                    for b in runs
                    if a["mode"] == b["mode"] == mode
                    and a["framework"] == fw
                    and b["framework"] == peer
                    and a["repeat"] == b["repeat"]
                ]
                by_cpu = [
                    a["tokens_per_cpu_s"] / b["tokens_per_cpu_s"]
                    for a, b in pairs
                    if a.get("tokens_per_cpu_s") and b.get("tokens_per_cpu_s")
                ]
                row["vs"][peer] = {
                    "ratio_of_medians": row["tokens_per_s_median"]
                    / rows[peer]["tokens_per_s_median"],
                    "median_paired_ratio": statistics.median(
                        a["tokens_per_s"] / b["tokens_per_s"] for a, b in pairs
                    ),
                    "median_paired_cpu_ratio": statistics.median(by_cpu) if by_cpu else None,
                    "eval_loss_ratio": row["eval_loss"] / rows[peer]["eval_loss"],
                }
        summary[mode] = rows
    return summary


def _cpu_ratio(vs: dict) -> str:
    ratio = vs.get("median_paired_cpu_ratio")
    return f"per CPU-s {ratio:.3f}x; " if ratio else ""


def _median_of(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]  # older results lack some keys
    return statistics.median(values) if values else None


def print_table(summary: dict, meta: dict) -> str:
    lines = [
        f"machine: {meta['machine']['cpu']} ({meta['machine']['cores']} cores, "
        f"{meta['machine'].get('gpu', meta['machine']['device'])}); torch "
        f"{meta['machine']['torch']}; load average {meta['loadavg_start'][0]:.1f} at start, "
        f"{meta['loadavg_end'][0]:.1f} at end",
        f"job: {meta['preset']} {PRESETS[meta['preset']]}; {meta['steps']} steps, first "
        f"{meta['warmup']} not timed; {meta['repeats']} alternating repeats",
    ]
    flops = meta.get("flops")
    if flops:
        peaks = ", ".join(
            f"{k} {v / 1e12:.3g} TFLOP/s" for k, v in flops["peak"].items() if v is not None
        )
        lines.append(
            f"MFU: {flops['per_token'] / 1e6:.2f} MFLOP per token ({flops['counted_by']}) "
            f"against a peak of {peaks} ({flops['peak_from']})"
        )
    lines += [
        "",
        "| mode | framework | tokens/s (median) | runs | tokens per CPU-s | MFU | first step s | "
        "peak memory MB | eval loss | vs peers (paired median ratio of tokens/s; of tokens per "
        "CPU-s; eval-loss ratio) | settings |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, rows in summary.items():
        for fw, row in rows.items():
            vs = "; ".join(
                f"{r['median_paired_ratio']:.3f}x {peer} ({_cpu_ratio(r)}loss "
                f"{r['eval_loss_ratio']:.3f})"
                for peer, r in row["vs"].items()
            )
            runs = ", ".join(f"{x:.0f}" for x in row["tokens_per_s_all"])
            share = row.get("mfu_median")
            share = f"{share:.1%}" if share is not None else "-"
            per_cpu = row.get("tokens_per_cpu_s_median")
            per_cpu = f"{per_cpu:.0f}" if per_cpu is not None else "-"
            first = row.get("first_step_s")
            first = f"{first:.1f}" if first is not None else "-"
            lines.append(
                f"| {mode} | {fw} | {row['tokens_per_s_median']:.0f} | {runs} | {per_cpu} | "
                f"{share} | {first} | {row['peak_memory_mb']:.0f} | {row['eval_loss']:.4f} | "
                f"{vs} | {' '.join(row['settings'])} |"
            )
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5, help="optimizer steps not timed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default="same,defaults,best")
    parser.add_argument("--frameworks", default="lit_ft,hf,bare")
    parser.add_argument("--preset", default="gpt2-4x256", choices=sorted(PRESETS))
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    parser.add_argument("--summarize", metavar="JSON", help="print the table of a results file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--framework", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.summarize:  # e.g. a benchmark interrupted part-way ("partial": true)
        saved = json.loads(Path(args.summarize).read_text())
        saved.setdefault("loadavg_end", saved["runs"][-1]["loadavg_after"])
        saved["repeats"] = f"{1 + max(r['repeat'] for r in saved['runs'])} (runs done)"
        print_table(summarize(saved["runs"]), saved)
        return
    if not 0 < args.warmup < args.steps:
        parser.error("need 0 < --warmup < --steps")

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    frameworks = [f.strip() for f in args.frameworks.split(",")]
    meta = {
        "command": " ".join(["python", "benchmarks/compare.py", *sys.argv[1:]]),
        "preset": args.preset,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "machine": machine(),
        "flops": model_flops(PRESETS[args.preset]),
        "loadavg_start": os.getloadavg(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    runs = []
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"{stamp}_{args.preset}_{meta['machine']['device']}.json"
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for mode in modes:
                for fw in (f for f in MODES[mode] if f in frameworks):
                    result = launch(fw, mode, args, Path(tmp) / "run.json")
                    result.update(framework=fw, mode=mode, repeat=repeat)
                    result["mfu"] = mfu(result, meta["flops"])
                    runs.append(result)
                    print(
                        f"[{repeat + 1}/{args.repeats}] {mode:8s} {fw:6s} "
                        f"{result['tokens_per_s']:7.0f} tokens/s  MFU {result['mfu'] or 0:.1%}  "
                        "eval loss "
                        f"{result['eval_loss']:.4f}  {result['peak_memory_mb']:.0f} MB  "
                        f"load {result['loadavg_before'][0]:.1f}->{result['loadavg_after'][0]:.1f}",
                        flush=True,
                    )
                    # Written after every run: an interrupted benchmark keeps what it measured.
                    path.write_text(json.dumps({**meta, "partial": True, "runs": runs}, indent=2))
    meta["loadavg_end"] = os.getloadavg()
    summary = summarize(runs)
    print()
    table = print_table(summary, meta)
    path.write_text(
        json.dumps({**meta, "summary": summary, "runs": runs, "table": table}, indent=2) + "\n"
    )
    print(f"\nwrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
