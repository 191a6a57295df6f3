"""Run every benchmark, each in its own interpreter, and print a summary of the ratios.

Generates the sample data once (or takes ``--data-dir``) and passes it to bench_datamodule.py,
bench_training_epoch.py and bench_eof_baselines.py; bench_main_job.py always makes its own (its cold run must start without
data). The full output is also written to benchmarks/results/run_all-<time>.txt (ignored by git).

Run: ``python benchmarks/run_all.py [--quick] [--data-dir DIR] [--threads N] [--skip main_job ...]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import _common
from _common import REPO_ROOT, load_average, sample_data

HERE = Path(__file__).resolve().parent
BENCHMARKS = {
    "datamodule": ("bench_datamodule.py", True, ["--repeats", "7", "--epochs", "3"]),
    "training_epoch": ("bench_training_epoch.py", True, ["--repeats", "3"]),
    "main_job": ("bench_main_job.py", False, ["--import-repeats", "2"]),
    "eof_baselines": ("bench_eof_baselines.py", True, ["--repeats", "1"]),
}
SUMMARY_PREFIXES = ("RATIO", "main job", "baseline python", "DataModule setup", "plain PyTorch loop:",
                    "Lightning (TemperatureEmulator):", "DataModule train_dataloader:", "in-memory tensor baseline:")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run, noisier numbers)")
    parser.add_argument("--skip", nargs="*", default=[], choices=list(BENCHMARKS), help="benchmarks to leave out")
    _common.add_data_dir_argument(parser)
    args = parser.parse_args(argv)
    common_args = ["--threads", str(args.threads)] if args.threads else []

    results_dir = HERE / "results"
    results_dir.mkdir(exist_ok=True)
    report = results_dir / f"run_all-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    lines: list[str] = []

    def emit(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    emit(f"climateml benchmarks, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPU cores, "
         f"load average {load_average()}")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    failed = []
    t_all = time.perf_counter()
    with sample_data(args.data_dir) as data_dir:
        for name, (script, takes_data, quick_args) in BENCHMARKS.items():
            if name in args.skip:
                continue
            cmd = [sys.executable, str(HERE / script)]
            if takes_data:
                cmd += ["--data-dir", str(data_dir)] + common_args
            if args.quick:
                cmd += quick_args
            emit(f"\n$ {' '.join(Path(c).name if c == sys.executable else c for c in cmd)}")
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
            assert proc.stdout is not None
            for line in proc.stdout:
                emit(line.rstrip("\n"))
            if proc.wait() != 0:
                failed.append(name)
            emit(f"[{script}: {time.perf_counter() - t0:.0f} s{', FAILED' if name in failed else ''}]")

    emit("\n== summary ==")
    for line in list(lines):
        if line.strip().startswith(SUMMARY_PREFIXES) and not line.startswith("$"):
            emit("  " + line.strip())
    emit(f"total {time.perf_counter() - t_all:.0f} s; load average at the end {load_average()}")
    report.write_text("\n".join(lines) + "\n")
    print(f"(written to {report.relative_to(REPO_ROOT)})")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
