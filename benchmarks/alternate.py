"""What benchmarks/dpo_compare.py and grpo_compare.py share: each framework's run in its own
subprocess, the frameworks alternating (lit_ft, TRL, lit_ft, TRL, ...) so drift on a shared
machine hits both alike, and the CPU kind written beside every figure."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("lit_ft", "trl")


def alternate(script: str, steps: int, repeats: int) -> list[dict]:
    """`script --worker FRAMEWORK STEPS OUT` for each framework, `repeats` rounds; the runs'
    JSON in order. Exits with the failing framework's error output."""
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(repeats):
            for framework in FRAMEWORKS:
                out = f"{tmp}/{framework}{repeat}.json"
                command = [sys.executable, script, "--worker", framework, str(steps), out]
                done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
                if done.returncode:
                    sys.exit(f"{framework} failed:\n{done.stderr[-3000:]}")
                runs.append(json.loads(Path(out).read_text()))
    return runs


def cpu_kind() -> str:
    """amx_bf16, avx512_bf16 or avx2 only: what bf16 costs on this CPU."""
    cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return next((f for f in ("amx_bf16", "avx512_bf16") if f in cpu), "avx2 only")


def compare_frameworks(doc: str, script: str, runners: dict, steps: int, repeats: int, out_dir):
    """A comparison script's command line: `--worker FRAMEWORK STEPS OUT` runs one framework
    (`runners[FRAMEWORK](steps, workdir)`, its dict written to OUT) and returns None; otherwise
    (args, every run, the CPU kind) after the alternating runs."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--out-dir", default=str(out_dir))
    parser.add_argument("--worker", nargs=3, metavar=("FRAMEWORK", "STEPS", "OUT"))
    args = parser.parse_args()
    if args.worker:
        framework, steps_given, out = args.worker
        with tempfile.TemporaryDirectory() as workdir:
            run = runners[framework](int(steps_given), workdir)
        Path(out).write_text(json.dumps(run))
        return None
    return args, alternate(script, args.steps, args.repeats), cpu_kind()
