"""One command that exercises lit_ft's GPU code paths on a CUDA machine and says which work.

    python benchmarks/gpu_check.py --only default,fp16,resume,fsdp    # one lease (~5 min)
    python benchmarks/gpu_check.py --only compare,compile             # another (~7 min)
    python benchmarks/gpu_check.py --only memory,attention,qlora,liger,ddp
    python benchmarks/gpu_check.py --budget-scale 2     # twice the time for every step
    python benchmarks/gpu_check.py --compose-only       # no training: do all overrides compose?

The project's test machine has no GPU; this script is what to run when a GPU machine is lent
(a lease gives one command 10 minutes: the budgets below, measured on a freshly started H200
where a step's first imports are cold, need the three groups above). It checks:

  1 default    `python -m lit_ft.run` as it ships: precision auto must pick bf16-mixed
  2 compare    benchmarks/compare.py on GPT-2 124M from a config at seq 1024, best mode
               (bf16-mixed, fused AdamW, clipping 1.0, torch.compile): lit_ft vs the HF Trainer,
               tokens/s, MFU and peak memory over steps 5-14
  3 compile    compile.enabled=true on a short run of the bundled model
  4 attention  SDPA vs flash_attention_2 on GPT-2 124M at seq 1024, bf16-mixed (needs flash_attn)
  5 fp16       trainer.precision=16-mixed with clipping: finite losses to the end
  6 resume     SIGKILL mid-run, resume with ckpt_path=last: final weights bit-identical to an
               uninterrupted run (trainer.deterministic=true)
  7 fsdp       trainer=fsdp on every GPU
  8 qlora      peft=qlora, the 4-bit base through bitsandbytes (needs bitsandbytes)
  9 ddp        trainer=ddp on 2 GPUs (needs 2 GPUs)
 10 liger      model.liger_kernel=true on a small Llama from a config (needs liger_kernel)
 11 memory     benchmarks/memory.py on GPT-2 124M at seq 1024, batch 8: peak memory and
               tokens/s for the HF Trainer, lit_ft's defaults, chunked off, chunked +
               gradient checkpointing, lit_ft's estimate against each measured peak, and
               the largest batch (up to 64) the HF Trainer and lit_ft's defaults fit

Every step runs in its own process group with its own time budget (seconds; each lease group
above sums to at most 560 with the machine probe); a step that fails or runs out of time is
recorded with its last error line and the next one starts. Steps the machine cannot run are
skipped with the reason; without a CUDA GPU every step is skipped and the script exits 0 at
once. At the end it prints
the machine line and a table (step | result | figure | seconds) and writes both, with every
step's details, to benchmarks/results/gpu_check_<timestamp>.json and .md (see --out-dir).
The exit code is 1 when a step failed, else 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
LEASE_S = 560  # what one command of a lent GPU machine can spend (10 minutes, less the set-up)
# Importing torch, starting CUDA and importing lightning, transformers, flash_attn, bitsandbytes,
# peft and liger_kernel on a machine just started, from cold files: 20 s was not enough on the
# first H200 lease (each stage now prints as it finishes, so a timeout shows where it was).
PROBE_BUDGET_S = 90

LIT_FT = [sys.executable, "-m", "lit_ft.run"]
# A short run of the bundled model: 30 steps stay inside the first epoch (~60 steps), the
# starting model is not evaluated and nothing is generated, so a run costs seconds beyond the
# imports. Checkpoints every 10 steps, so each strategy/precision also saves (and, for FSDP,
# exports from) a real checkpoint.
SHORT = [
    "trainer.enable_progress_bar=false",
    "trainer.max_steps=30",
    "evaluate_before=false",
    "callbacks.generations.num_prompts=0",
    "callbacks.resumable_checkpoint.every_n_train_steps=10",
]
# GPT-2 124M's shape (benchmarks/compare.py's gpt2-124m preset) built from a config: the size
# where attention kernels matter. No checkpoints or export: writing 1.5 GB checkpoints inside
# the timed steps would swamp the tokens/s being compared.
GPT2_124M = [
    "trainer.enable_progress_bar=false",
    "model.from_scratch=true",
    "model.model_type=gpt2",
    "model.config_overrides={n_layer: 12, n_head: 12, n_embd: 768, n_positions: 1024, "
    "vocab_size: 50257, bos_token_id: 0, eos_token_id: 0}",
    "data.block_size=1024",
    "data.batch_size=8",
    "trainer.precision=bf16-mixed",
    "trainer.max_steps=30",
    "evaluate_before=false",
    "export=false",
    "callbacks.generations.num_prompts=0",
    "callbacks.resumable_checkpoint=null",
    "callbacks.best_checkpoint=null",
    "+trainer.enable_checkpointing=false",  # else Lightning adds a ModelCheckpoint of its own
]
# A Llama-shaped model small enough to build in a second, for Liger's kernels (GPT-2 has none).
TINY_LLAMA = (
    "model.config_overrides={hidden_size: 256, intermediate_size: 688, num_hidden_layers: 2, "
    "num_attention_heads: 4, num_key_value_heads: 4, vocab_size: 4096, "
    "max_position_embeddings: 256, bos_token_id: 0, eos_token_id: 0}"
)
RESUME_STEPS, RESUME_EVERY, RESUME_KILL_AT = 70, 10, 20  # 70 steps cross the epoch boundary


def resume_overrides(out: str) -> list[str]:
    return [
        f"paths.output_dir={out}",
        "trainer.enable_progress_bar=false",
        f"trainer.max_steps={RESUME_STEPS}",
        "evaluate_before=false",
        "callbacks.generations.num_prompts=0",
        f"callbacks.resumable_checkpoint.every_n_train_steps={RESUME_EVERY}",
        # Without it cuBLAS and SDPA's flash backward use atomics, and two uninterrupted runs
        # already differ in the last bits; with it (Lightning also sets the cuBLAS workspace)
        # any difference left is the resumption's.
        "trainer.deterministic=true",
        "export_last=true",  # hf_model_last/: the final weights, whichever checkpoint was best
    ]


def lit_ft_runs(step: str, out: str, gpus: int) -> dict[str, list[str]]:
    """Every lit_ft command line a step runs, as overrides (also what --compose-only checks)."""
    short = [f"paths.output_dir={out}", *SHORT]
    big = [f"paths.output_dir={out}", *GPT2_124M]
    return {
        "default": {"run": [f"paths.output_dir={out}", "trainer.enable_progress_bar=false"]},
        "compile": {"run": [*short, "compile.enabled=true"]},
        "attention": {
            "sdpa": [*big, "model.attn_implementation=sdpa"],
            "flash_attention_2": [*big, "model.attn_implementation=flash_attention_2"],
        },
        "fp16": {"run": [*short, "trainer.precision=16-mixed", "trainer.gradient_clip_val=1.0"]},
        "resume": {
            "uninterrupted": resume_overrides(out),
            "killed": resume_overrides(out),
            "resumed": [*resume_overrides(out), "ckpt_path=last"],
        },
        "fsdp": {"run": [*short, "trainer=fsdp", f"trainer.devices={gpus}"]},
        "qlora": {"run": [*short, "peft=qlora"]},
        "ddp": {"run": [*short, "trainer=ddp", "trainer.devices=2"]},
        "liger": {
            "run": [
                *short,
                "model.from_scratch=true",
                "model.model_type=llama",
                TINY_LLAMA,
                "trainer.precision=bf16-mixed",
                "model.liger_kernel=true",
            ]
        },
    }.get(step, {})


# At this preset (batch 8 x 1024) the bundled corpus is 116 blocks: 15 steps per epoch, the
# last one a batch of 4. Timing steps 5..14 keeps the comparison inside epoch 0: a longer run
# would time lit_ft's epoch-end validation and 1.5 GB checkpoint writes (the HF Trainer does
# neither here) and, in best mode, both frameworks' torch.compile recompiling for the short
# batch; on a GPU those take longer than the 20 steps themselves.
COMPARE_PRESET = "gpt2-124m"
COMPARE = [
    "benchmarks/compare.py",
    f"--preset={COMPARE_PRESET}",
    "--steps=14",
    "--warmup=4",
    "--repeats=1",
    "--modes=best",
    "--frameworks=lit_ft,hf",
]


# -- running one process, with a deadline -------------------------------------------------------
def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # The lent machine has no network: fail fast instead of waiting on the Hub.
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("WANDB_MODE", "disabled")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"  # the log holds the last line even when we kill the process
    env.update(extra or {})
    return env


@dataclass
class Ran:
    name: str
    rc: int | None  # None: killed at its deadline
    seconds: float
    log: Path
    killed_by_us: bool = False

    @property
    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def problem(self) -> str:
        what = f"timed out after {self.seconds:.0f}s" if self.rc is None else f"exit {self.rc}"
        return f"{self.name}: {what}: {last_error_line(self.text)}"


def last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        if line.startswith("lit_ft: error:") or (
            re.search(r"\w*(Error|Exception)\b", line) and "Warning" not in line
        ):
            return line[:300]
    return lines[-1][:300] if lines else "(no output)"


ACTIVE: set[subprocess.Popen] = set()  # killed on the way out, even on Ctrl-C


def kill_group(proc: subprocess.Popen) -> None:
    """Kill the process and everything it started (DDP ranks, compile workers), so a step that
    ran out of time does not keep GPUs or memory from the next one."""
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(proc.pid, signal.SIGKILL)


def start(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:  # the child holds its own copy of the descriptor
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env(env),
            start_new_session=True,  # its own process group, killed as a whole
        )
    ACTIVE.add(proc)
    return proc


def finish(proc: subprocess.Popen, name: str, log: Path, began: float, timeout: float) -> Ran:
    try:
        rc = proc.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        kill_group(proc)
        proc.wait()
        rc = None
    kill_group(proc)  # leftovers of a process that exited
    ACTIVE.discard(proc)
    return Ran(name, rc, time.perf_counter() - began, log)


def run(command: list[str], name: str, log: Path, timeout: float, env=None) -> Ran:
    began = time.perf_counter()
    return finish(start(command, log, env), name, log, began, timeout)


# -- steps --------------------------------------------------------------------------------------
@dataclass
class Outcome:
    result: str  # pass | fail | skip
    figure: str
    details: dict[str, Any] = field(default_factory=dict)


class Step:
    """A step's budget counts down from its start; each process gets what is left of it."""

    def __init__(self, sid: str, budget: float, workdir: Path, machine: dict):
        self.id, self.budget, self.machine = sid, budget, machine
        self.dir = workdir / sid
        self.dir.mkdir(parents=True, exist_ok=True)
        self.deadline = time.perf_counter() + budget
        self.runs: list[Ran] = []

    def left(self, share: float = 1.0) -> float:
        return max(self.deadline - time.perf_counter(), 0.0) * share

    def out(self, name: str = "run") -> str:
        return str(self.dir / name)

    def lit_ft(self, name: str, overrides: list[str], share: float = 1.0, env=None) -> Ran:
        ran = run([*LIT_FT, *overrides], name, self.dir / f"{name}.log", self.left(share), env)
        self.runs.append(ran)
        return ran

    def overrides(self, name: str = "run", out: str | None = None) -> list[str]:
        gpus = self.machine.get("gpu_count", 0)
        return lit_ft_runs(self.id, out or self.out(), gpus)[name]


def results_of(out: str) -> dict | None:
    path = Path(out) / "results.json"
    return json.loads(path.read_text()) if path.exists() else None


def fail(ran: Ran, **details) -> Outcome:
    return Outcome("fail", ran.problem(), details)


def _num(value, fmt: str = ",.0f", unit: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{unit}"


def speed(results: dict) -> str:
    """tokens/s and MFU after the warm-up steps (results.json's throughput), else the fit's."""
    throughput = results.get("throughput") or {}
    tokens = throughput.get("tokens_per_s") or results.get("tokens_per_s")
    mfu = throughput.get("mfu")
    return f"{_num(tokens)} tok/s" + (f", MFU {mfu:.1%}" if mfu is not None else "")


def finite_losses(results: dict) -> bool:
    train = results["metrics"]["train"]
    after = results["metrics"]["after"] or {}
    values = [train.get("loss_first_step"), train.get("loss_last_10_steps"), after.get("val/loss")]
    return all(v is not None and math.isfinite(v) for v in values)


def chosen_precision(log_text: str) -> str | None:
    found = re.search(r"^\[lit_ft\] precision (\S+)", log_text, re.MULTILINE)
    return found.group(1) if found else None


def step_default(step: Step) -> Outcome:
    ran = step.lit_ft("default", step.overrides())
    results = results_of(step.out())
    if not ran.ok or results is None:
        return fail(ran)
    before = (results["metrics"]["before"] or {}).get("val/ppl")
    after = results["metrics"]["after"]["val/ppl"]
    precision = chosen_precision(ran.text)
    figure = (
        f"val ppl {_num(before, '.1f')} -> {after:.2f}; precision {precision}; "
        f"{results['wall_time_s']:.0f}s wall; {speed(results)}"
    )
    ok = precision == "bf16-mixed" and math.isfinite(after)
    if precision != "bf16-mixed":
        figure = f"precision auto chose {precision}, not bf16-mixed; " + figure
    return Outcome("pass" if ok else "fail", figure, {"results": results})


def step_compare(step: Step) -> Outcome:
    out = step.dir / "compare"
    command = [sys.executable, *COMPARE, f"--out-dir={out}"]
    ran = run(command, "compare", step.dir / "compare.log", step.left())
    step.runs.append(ran)
    found = sorted(out.glob(f"*_{COMPARE_PRESET}_*.json"))
    # compare.py rewrites its JSON after every run, so a timeout still leaves lit_ft's figures.
    report = json.loads(found[-1].read_text()) if found else {}
    runs = {r["framework"]: r for r in report.get("runs", [])}
    parts = []
    for fw in ("lit_ft", "hf"):
        if fw in runs:
            r = runs[fw]
            parts.append(
                f"{fw} {r['tokens_per_s']:,.0f} tok/s, MFU {_num(r.get('mfu'), '.1%')}, "
                f"peak {r['peak_memory_mb']:,.0f} MB"
            )
    if "lit_ft" in runs and "hf" in runs:
        parts.append(
            f"lit_ft/hf {runs['lit_ft']['tokens_per_s'] / runs['hf']['tokens_per_s']:.2f}x"
        )
    figure = "; ".join(parts)
    details = {"report": report.get("summary") or report.get("runs")}
    if not ran.ok or len(runs) < 2:
        return Outcome("fail", ran.problem() + (f" ({figure})" if figure else ""), details)
    return Outcome("pass", figure + " (target: lit_ft MFU >= 45% on an H100)", details)


def step_liger(step: Step) -> Outcome:
    ran = step.lit_ft("run", step.overrides())
    results = results_of(step.out())
    if not ran.ok or results is None:
        return fail(ran)
    applied = "Liger kernels applied for llama" in ran.text
    train = results["metrics"]["train"]
    figure = (
        f"{'applied' if applied else 'NOT applied'}; train loss "
        f"{_num(train.get('loss_first_step'), '.3f')} -> "
        f"{_num(train.get('loss_last_10_steps'), '.3f')}; {speed(results)}"
    )
    ok = applied and finite_losses(results)
    return Outcome("pass" if ok else "fail", figure, {"results": results})


MEMORY = ["benchmarks/memory.py", "--batch=8", "--steps=6", "--warmup=2", "--max-batch=64"]


def step_memory(step: Step) -> Outcome:
    out = step.dir / "memory"
    command = [sys.executable, *MEMORY, f"--out-dir={out}"]
    ran = run(command, "memory", step.dir / "memory.log", step.left())
    step.runs.append(ran)
    found = sorted(out.glob("*_memory_*.json"))
    if not ran.ok or not found:
        return fail(ran)
    report = json.loads(found[-1].read_text())
    hf = report["runs"].get("hf", {})
    parts = []
    for name, r in report["runs"].items():
        part = f"{name} {r['peak_memory_mb']:,.0f} MB {r['tokens_per_s']:,.0f} tok/s"
        if hf and name != "hf":
            part += f" ({r['peak_memory_mb'] / hf['peak_memory_mb']:.2f}x mem)"
        if r.get("estimated_mb"):
            part += f" est/meas {r['estimated_mb'] / r['peak_memory_mb']:.2f}"
        if r.get("batch_search"):
            part += f" max batch {r['batch_search']['largest_batch']}"
        parts.append(part)
    return Outcome("pass", "; ".join(parts), {"report": report})


def step_compile(step: Step) -> Outcome:
    ran = step.lit_ft("compile", step.overrides())
    results = results_of(step.out())
    if not ran.ok or results is None:
        return fail(ran)
    first = (results.get("throughput") or {}).get("time_to_first_step_s")
    figure = f"{speed(results)}; first step done {_num(first, '.0f', 's')} after the run's start"
    figure += " (train(): data, model and compilation included)"
    return Outcome("pass" if finite_losses(results) else "fail", figure, {"results": results})


def step_attention(step: Step) -> Outcome:
    speeds, figures = {}, []
    for i, impl in enumerate(("sdpa", "flash_attention_2")):
        out = step.out(impl)
        ran = step.lit_ft(impl, step.overrides(impl, out), share=1 / (2 - i))
        results = results_of(out)
        if not ran.ok or results is None:
            return Outcome("fail", "; ".join([*figures, ran.problem()]))
        speeds[impl] = (results.get("throughput") or {}).get("tokens_per_s")
        figures.append(f"{impl} {speed(results)}")
    if speeds["sdpa"] and speeds["flash_attention_2"]:
        figures.append(f"flash/sdpa {speeds['flash_attention_2'] / speeds['sdpa']:.2f}x")
    return Outcome("pass", "; ".join(figures), {"tokens_per_s": speeds})


def step_fp16(step: Step) -> Outcome:
    ran = step.lit_ft("fp16", step.overrides())
    results = results_of(step.out())
    if not ran.ok or results is None:
        return fail(ran)
    train = results["metrics"]["train"]
    figure = (
        f"precision {chosen_precision(ran.text)}; train loss "
        f"{_num(train.get('loss_first_step'), '.3f')} -> "
        f"{_num(train.get('loss_last_10_steps'), '.3f')}; val loss "
        f"{_num(results['metrics']['after'].get('val/loss'), '.3f')}; {speed(results)}"
    )
    return Outcome("pass" if finite_losses(results) else "fail", figure, {"results": results})


def newest_step_checkpoint(checkpoint_dir: Path) -> int:
    steps = [
        int(m.group(1))
        for p in (checkpoint_dir.glob("step*.ckpt") if checkpoint_dir.is_dir() else [])
        if (m := re.fullmatch(r"step(\d+)\.ckpt", p.name))
    ]
    return max(steps, default=-1)


def step_resume(step: Step) -> Outcome:
    full, cut = step.out("uninterrupted"), step.out("killed")
    ran = step.lit_ft("uninterrupted", step.overrides("uninterrupted", full), share=0.4)
    if not ran.ok:
        return fail(ran)

    # Run B: the same job, SIGKILLed (no clean-up, no final save) as soon as a step checkpoint
    # at >= RESUME_KILL_AT exists. Checkpoints are renamed into place whole, so seeing the
    # file means it is complete.
    log, began = step.dir / "killed.log", time.perf_counter()
    proc = start([*LIT_FT, *step.overrides("killed", cut)], log)
    timeout, ckpts, seen = step.left(0.5), Path(cut) / "checkpoints", -1
    while proc.poll() is None and time.perf_counter() - began < timeout:
        seen = newest_step_checkpoint(ckpts)
        if seen >= RESUME_KILL_AT:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    out_of_time = proc.poll() is None and seen < RESUME_KILL_AT
    if out_of_time:  # no point waiting any longer
        kill_group(proc)
    killed = finish(proc, "killed", log, began, 5)
    killed.killed_by_us = seen >= RESUME_KILL_AT
    step.runs.append(killed)
    if not killed.killed_by_us:
        why = f"was still running after {timeout:.0f}s" if out_of_time else f"exit {killed.rc}"
        return Outcome(
            "fail",
            f"killed: {why} before a step-{RESUME_KILL_AT} checkpoint appeared "
            f"(newest step {seen}): {last_error_line(killed.text)}",
        )
    at_kill = newest_step_checkpoint(ckpts)
    if at_kill >= RESUME_STEPS or results_of(cut) is not None:
        return Outcome("fail", f"killed too late: run B had reached step {at_kill}")

    resumed = step.lit_ft("resumed", step.overrides("resumed", cut))
    results = results_of(cut)
    if not resumed.ok or results is None:
        return fail(resumed)
    verdicts, details = [], {"killed_after_checkpoint": at_kill, "resumed_from": None}
    details["resumed_from"] = results.get("resumed_from")
    for export in ("hf_model", "hf_model_last"):
        a, b = Path(full, export, "model.safetensors"), Path(cut, export, "model.safetensors")
        if export == "hf_model" or (a.exists() or b.exists()):
            verdicts.append((export, *same_weights(a, b)))
    identical = all(same for _, same, _ in verdicts)
    figure = (
        f"killed with step {at_kill} checkpointed, resumed from "
        f"{Path(str(details['resumed_from'])).name} to step {RESUME_STEPS}; "
        + "; ".join(f"{name}: {what}" for name, _, what in verdicts)
    )
    return Outcome("pass" if identical else "fail", figure, details)


def same_weights(a: Path, b: Path) -> tuple[bool, str]:
    if not (a.exists() and b.exists()):
        return False, f"missing {a if not a.exists() else b}"
    import torch
    from safetensors.torch import load_file

    left, right = load_file(str(a)), load_file(str(b))
    if left.keys() != right.keys():
        return False, f"different tensors: {sorted(left.keys() ^ right.keys())[:3]}"
    differ = [k for k in left if not torch.equal(left[k], right[k])]
    if differ:
        diff = max(float((left[k].float() - right[k].float()).abs().max()) for k in differ)
        return False, f"{len(differ)} of {len(left)} tensors differ (max |diff| {diff:.3g})"
    return True, f"all {len(left)} tensors bit-identical"


def step_strategy(label: str) -> Callable[[Step], Outcome]:
    def check(step: Step) -> Outcome:
        ran = step.lit_ft(step.id, step.overrides())
        results = results_of(step.out())
        if not ran.ok or results is None:
            return fail(ran)
        figure = f"{label}; {speed(results)}; wall {results['wall_time_s']:.0f}s"
        return Outcome("pass" if finite_losses(results) else "fail", figure, {"results": results})

    return check


# What a step needs of the machine: None when it can run, else why not.
def needs_gpus(n: int) -> Callable[[dict], str | None]:
    return lambda m: (
        None if m["gpu_count"] >= n else f"needs {n} GPUs, this machine has {m['gpu_count']}"
    )


def needs_module(name: str) -> Callable[[dict], str | None]:
    return lambda m: (
        None
        if m["modules"].get(name, {}).get("ok")
        else (f"{name} not importable ({m['modules'].get(name, {}).get('error', 'not checked')})")
    )


@dataclass
class StepSpec:
    id: str
    title: str
    budget: float
    check: Callable[[Step], Outcome]
    needs: list[Callable[[dict], str | None]] = field(default_factory=list)


# Budgets (seconds) for a freshly started host with one H200 (16 cores), from its first runs
# (2026-12-04): the default run passed in 41 s, fp16 in 21, the three resume runs in 51, FSDP
# in 20; with 45 / 130 / 50 / 90 s, the default, compare (two torch.compile runs of GPT-2
# 124M printed nothing yet), compile and memory (two of its five runs done) steps ran out.
# Cold imports on a new machine take ~10 s a process. --budget-scale stretches them all.
STEPS = [
    StepSpec("default", "1 default run (precision auto)", 75, step_default),
    StepSpec("compare", "2 GPT-2 124M seq 1024: lit_ft vs HF (best)", 300, step_compare),
    StepSpec("compile", "3 compile.enabled=true", 150, step_compile),
    StepSpec(
        "attention",
        "4 SDPA vs flash_attention_2 (124M, bf16)",
        40,
        step_attention,
        [needs_module("flash_attn")],
    ),
    StepSpec("fp16", "5 16-mixed + clipping", 50, step_fp16),
    StepSpec("resume", "6 SIGKILL + resume bit-identical", 150, step_resume),
    StepSpec("fsdp", "7 trainer=fsdp (all GPUs)", 60, step_strategy("FSDP")),
    StepSpec(
        "qlora",
        "8 peft=qlora (4-bit base)",
        25,
        step_strategy("QLoRA"),
        [needs_module("bitsandbytes"), needs_module("peft")],
    ),
    StepSpec("ddp", "9 trainer=ddp, 2 GPUs", 25, step_strategy("DDP x2"), [needs_gpus(2)]),
    StepSpec(
        "liger",
        "10 model.liger_kernel=true (Llama)",
        20,
        step_liger,
        [needs_module("liger_kernel")],
    ),
    StepSpec("memory", "11 memory: GPT-2 124M, HF vs lit_ft", 300, step_memory),
]
# The docstring's three lease groups each fit one command (selected steps' budgets + the probe)
LEASE_GROUPS = [
    ["default", "fp16", "resume", "fsdp"],
    ["compare", "compile"],
    ["memory", "attention", "qlora", "liger", "ddp"],
]
_BUDGETS = {s.id: s.budget for s in STEPS}
assert sorted(i for g in LEASE_GROUPS for i in g) == sorted(_BUDGETS)
assert all(PROBE_BUDGET_S + sum(_BUDGETS[i] for i in g) <= LEASE_S for g in LEASE_GROUPS)


# -- the machine ------------------------------------------------------------------------------
PROBE = r"""
import importlib, json, os, platform, time
started = time.perf_counter()
def stage(name):
    print(f"probe: {name} after {time.perf_counter() - started:.1f} s", flush=True)
import torch
stage("torch imported")
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cores": os.cpu_count(),
        "python": platform.python_version(), "cuda_available": torch.cuda.is_available()}
info["gpu_count"] = torch.cuda.device_count() if info["cuda_available"] else 0
info["gpus"] = [torch.cuda.get_device_name(i) for i in range(info["gpu_count"])]
stage("CUDA started")
if info["gpu_count"]:
    props = torch.cuda.get_device_properties(0)
    info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    info["bf16"] = torch.cuda.is_bf16_supported(including_emulation=False)
info["modules"] = {}
# Only on a GPU machine: flash_attn and bitsandbytes load CUDA kernels when imported, and a
# module that is installed but built for another torch fails here, not at find_spec.
names = ["lightning", "transformers", "flash_attn", "bitsandbytes", "peft", "liger_kernel"]
names = names if info["gpu_count"] else []  # no GPU: nothing will run, answer quickly
for name in names:
    try:
        module = importlib.import_module(name)
        info["modules"][name] = {"ok": True, "version": getattr(module, "__version__", "?")}
    except Exception as err:
        last = (str(err).strip().splitlines() or [""])[-1]
        info["modules"][name] = {"ok": False, "error": f"{type(err).__name__}: {last}"[:200]}
    stage(f"{name} tried")
print("PROBE " + json.dumps(info))
"""


def probe(workdir: Path, timeout: float) -> dict:
    ran = run([sys.executable, "-c", PROBE], "probe", workdir / "probe.log", timeout)
    found = re.search(r"^PROBE (.*)$", ran.text, re.MULTILINE)
    if not ran.ok or not found:
        return {"error": ran.problem(), "gpu_count": 0, "cuda_available": False, "modules": {}}
    return json.loads(found.group(1))


def machine_line(m: dict) -> str:
    if "error" in m:
        return f"machine: probe failed ({m['error']})"
    if m["gpu_count"]:
        names = sorted(set(m["gpus"]))
        gpus = f"{m['gpu_count']} x {', '.join(names)} ({m.get('gpu_memory_gib')} GiB each)"
    else:
        gpus = "no CUDA GPU"
    parts = [gpus, f"torch {m['torch']} (CUDA {m['cuda'] or 'none'})", f"{m['cores']} CPU cores"]
    parts.append(f"python {m['python']}")
    for name, mod in m["modules"].items():
        parts.append(f"{name} {mod['version'] if mod['ok'] else 'not importable'}")
    return "machine: " + "; ".join(parts)


# -- the report -------------------------------------------------------------------------------
def table(rows: list[dict]) -> str:
    lines = ["| step | result | figure | seconds |", "|---|---|---|---|"]
    for row in rows:
        figure = row["figure"].replace("|", "\\|").replace("\n", " ")
        secs = f"{row['seconds']:.1f} / {row['budget_s']:.0f}" if row["result"] != "skip" else "-"
        lines.append(f"| {row['title']} | {row['result']} | {figure} | {secs} |")
    return "\n".join(lines)


def select(only: str | None) -> set[str]:
    """--only takes step ids (default,resume), numbers (1,6) or step1,step6."""
    if not only:
        return {s.id for s in STEPS}
    chosen = set()
    for token in (t.strip().lower() for t in only.split(",") if t.strip()):
        number = token.removeprefix("step")
        match = [s for i, s in enumerate(STEPS, 1) if token == s.id or number == str(i)]
        if not match:
            names = ", ".join(f"{i}/{s.id}" for i, s in enumerate(STEPS, 1))
            sys.exit(f"--only: no step '{token}' (steps: {names})")
        chosen.add(match[0].id)
    return chosen


def compose_only() -> int:
    """Compose every lit_ft command line of every step (struct mode: a typo in a key fails)."""
    sys.path.insert(0, str(ROOT))
    import lit_ft

    bad = 0
    for spec in STEPS:
        for name, overrides in lit_ft_runs(spec.id, "/tmp/gpu_check_compose", 2).items():
            try:
                lit_ft.compose(overrides)
                print(f"ok    {spec.id}/{name}: {' '.join(overrides[1:])}")
            except Exception as err:  # Hydra's errors name the bad key
                bad += 1
                print(f"FAIL  {spec.id}/{name}: {type(err).__name__}: {err}")
    return 1 if bad else 0


def run_steps(args, chosen: set[str], machine: dict, workdir: Path, rows: list[dict]) -> bool:
    """Run (or skip) every step in order, appending its row; True when one failed."""
    failed = False
    for spec in STEPS:
        budget = spec.budget * args.budget_scale
        row = {"id": spec.id, "title": spec.title, "budget_s": budget, "seconds": 0.0}
        if "error" in machine:
            reason = "machine probe failed"
        elif not machine["cuda_available"] or not machine["gpu_count"]:
            reason = "no CUDA GPU"
        elif spec.id not in chosen:
            reason = "not selected (--only)"
        else:
            reason = next((why for need in spec.needs if (why := need(machine))), None)
        if reason:
            rows.append({**row, "result": "skip", "figure": reason})
            continue
        began = time.perf_counter()
        step = Step(spec.id, budget, workdir, machine)
        try:
            outcome = spec.check(step)
        except Exception as err:  # a bug here must not cost the remaining steps
            outcome = Outcome("fail", f"gpu_check: {type(err).__name__}: {err}")
        row.update(
            result=outcome.result,
            figure=outcome.figure,
            seconds=time.perf_counter() - began,
            details=outcome.details,
            runs=[
                {
                    "name": r.name,
                    "rc": r.rc,
                    "seconds": round(r.seconds, 1),
                    # the end of each log, where errors are; the whole log only with --keep
                    "log_tail": r.text.splitlines()[-15:] if not r.ok else [],
                }
                for r in step.runs
            ],
        )
        failed |= outcome.result == "fail"
        rows.append(row)
        print(
            f"[gpu_check] {spec.title}: {outcome.result} ({row['seconds']:.0f}s) {outcome.figure}",
            flush=True,
        )
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated steps: ids, numbers or stepN")
    parser.add_argument(
        "--budget-scale", type=float, default=1.0, help="multiply every step's time budget"
    )
    parser.add_argument("--out-dir", default=str(RESULTS_DIR), help="where the JSON/.md go")
    parser.add_argument("--work-dir", help="where runs write (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the runs' directories")
    parser.add_argument(
        "--compose-only", action="store_true", help="only check that all overrides compose"
    )
    args = parser.parse_args()
    if args.compose_only:
        return compose_only()
    if args.budget_scale <= 0:
        parser.error("--budget-scale must be positive")
    chosen = select(args.only)

    started, stamp = time.time(), time.strftime("%Y%m%d-%H%M%S")
    workdir = Path(args.work_dir or tempfile.mkdtemp(prefix="lit_ft_gpu_check_"))
    workdir.mkdir(parents=True, exist_ok=True)
    machine = probe(workdir, PROBE_BUDGET_S * args.budget_scale)
    line = machine_line(machine)
    print(line, flush=True)

    rows: list[dict] = []
    try:
        failed = run_steps(args, chosen, machine, workdir, rows)
    finally:
        for proc in list(ACTIVE):  # e.g. Ctrl-C while a step runs: its ranks must not linger
            kill_group(proc)

    text = f"{line}\n\n{table(rows)}"
    print(f"\n{text}", flush=True)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "command": " ".join(["python", "benchmarks/gpu_check.py", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "budget_scale": args.budget_scale,
        "machine": machine,
        "machine_line": line,
        "steps": rows,
        "table": text,
    }
    json_path, md_path = out_dir / f"gpu_check_{stamp}.json", out_dir / f"gpu_check_{stamp}.md"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md_path.write_text(f"`{report['command']}` ({report['started']})\n\n{text}\n")
    print(f"\nwrote {json_path} and {md_path.name}")
    if args.keep or args.work_dir:  # a directory the user named is theirs to remove
        print(f"runs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
