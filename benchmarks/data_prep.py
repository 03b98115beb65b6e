"""Data preparation and start-up: tokenization MB/s, the cached second run, import time.

    python benchmarks/data_prep.py [--corpus python_reference] [--num-proc 1,2]

Every measurement is a fresh process. For each `--num-proc`: a cold build into an empty
`datasets` cache (load -> tokenize -> blocks, timed; tokenization alone gives MB/s of text),
then the identical build again (what a second run of the same command spends: the target is
< 1 s). Then `python -c "import lit_ft.run"` (what the command line pays before any work).
Writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS_DATA = {  # corpus -> the data config that reads it
    "python_reference": "python_reference",
    "python_source": "python_source",
}


def build(corpus: str, num_proc: int) -> dict:
    """One datamodule build with the default model's tokenizer; timings in seconds."""
    import datasets  # noqa: F401  (the library import is start-up, not data preparation)
    from omegaconf import OmegaConf

    import lit_ft
    from lit_ft.data import corpora
    from lit_ft.model.build import ModelSpec, load_config, load_tokenizer
    from lit_ft.run import build_task_and_data

    workers = num_proc if num_proc > 1 else "null"
    cfg = lit_ft.compose(
        [f"data={CORPUS_DATA[corpus]}", f"data.preprocessing_num_workers={workers}"]
    )
    spec = ModelSpec(task=cfg.task.name, **OmegaConf.to_container(cfg.model, resolve=True))
    task, data = build_task_and_data(cfg, load_tokenizer(spec), load_config(spec))
    timings = {"tokenize_s": 0.0}
    preprocess = task.preprocess  # tokenize + group into blocks, per split

    def timed_preprocess(dataset, split, context):
        started = time.perf_counter()
        out = preprocess(dataset, split, context)
        timings["tokenize_s"] += time.perf_counter() - started
        return out

    task.preprocess = timed_preprocess
    started = time.perf_counter()
    data.setup("fit")
    timings["total_s"] = time.perf_counter() - started
    read = corpora.files_to_read(cfg.data.data_files, cfg.data.corpus, cfg.data.corpus_dir)
    timings["text_mb"] = Path(read).stat().st_size / 1e6
    timings["train_blocks"] = len(data.datasets["train"])
    return timings


def subprocess_json(args: list[str], env: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, env=env, cwd=ROOT
    )
    if out.returncode:
        sys.exit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def import_time(repeats: int = 3) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import lit_ft.run"], check=True, cwd=ROOT)
        times.append(round(time.perf_counter() - started, 2))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="python_reference", choices=sorted(CORPUS_DATA))
    parser.add_argument("--num-proc", default="1,2")
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        print(json.dumps(build(args.corpus, int(args.num_proc))))
        return

    report = {"corpus": args.corpus, "loadavg_start": os.getloadavg(), "builds": {}}
    for num_proc in [int(n) for n in args.num_proc.split(",")]:
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "HF_DATASETS_CACHE": cache, "TOKENIZERS_PARALLELISM": "true"}
            argv = ["--build", f"--corpus={args.corpus}", f"--num-proc={num_proc}"]
            cold = subprocess_json(argv, env)
            warm = subprocess_json(argv, env)
        mb_per_s = cold["text_mb"] / cold["tokenize_s"]
        report["builds"][num_proc] = {
            "cold": cold,
            "second_run": warm,
            "tokenize_mb_per_s": mb_per_s,
        }
        print(
            f"num_proc={num_proc}: {cold['text_mb']:.2f} MB of text; cold build "
            f"{cold['total_s']:.2f}s (tokenizing {cold['tokenize_s']:.2f}s = {mb_per_s:.2f} MB/s); "
            f"second identical run {warm['total_s']:.2f}s",
            flush=True,
        )
    times = import_time()
    report["import_lit_ft_run_s"] = times
    report["loadavg_end"] = os.getloadavg()
    print(f'python -c "import lit_ft.run": {statistics.median(times):.2f}s (median of {times})')
    print(f"load average {report['loadavg_start'][0]:.1f} -> {report['loadavg_end'][0]:.1f}")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{time.strftime('%Y%m%d-%H%M%S')}_data_prep_{args.corpus}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
