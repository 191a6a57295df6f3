"""The README's main job end to end: ``climateml fit --config configs/temperature.yaml``.

Runs the job as a subprocess from the repository root, with the data and the run directory in a
temporary directory (``--data.data_dir TMP/climatebench --trainer.logger.init_args.save_dir TMP/runs``;
everything else as in configs/temperature.yaml: training until early stopping, validation every 10
steps, checkpointing, progress bar, test, the three baselines, metrics, figures, predictions), timed twice:

* **cold**: TMP/climatebench does not exist, so the data module writes the sample data first
  (``synthesize_if_missing: true``): what a new user's first run costs;
* **warm**: the same command again, with the data now present (``--warm-repeats`` times).

Baseline: ``python -c "import climateml.lightning_cli"`` (interpreter start plus importing what ``fit`` runs: torch,
Lightning, xarray...), timed in the same run, interleaved with the jobs (before, between, after),
fastest taken. Printed: absolute seconds, the ratio job / import, whether the job stayed under the
60 s aim on this machine, the epochs and optimiser steps early stopping allowed, and a rough phase
breakdown taken from when known lines first appear in the job's output (start-up and config parsing,
data generation and loading, fit and test, evaluation with the baselines and figures, which ends with
the printed scores).

The command is ``python -c "import sys; from climateml.cli import main; sys.exit(main())" fit ...``,
which is what the ``climateml`` console script runs, with PYTHONPATH set to this checkout so that the
code measured is this checkout's even if the environment's editable install points elsewhere.

Run: ``python benchmarks/bench_main_job.py [--warm-repeats 1] [--import-repeats 3] [--keep]``
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (puts the repository root on sys.path)
from _common import REPO_ROOT, footer, load_average

AIM_S = 60.0
ENTRY = "import sys; from climateml.cli import main; sys.exit(main())"
# (phase that ends when the marker first appears in the job's output, marker)
MARKERS = [
    ("start-up: interpreter, imports, config parsing", "Seed set to"),
    ("data: generate if missing, read files; build model", "GPU available"),
    ("fit until early stopping (validation, checkpoints), test", "Test metric"),
    ("evaluate: metrics, 3 baselines, figures, files", "model: rmse"),
]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def time_import() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import climateml.lightning_cli"], cwd=REPO_ROOT, env=_env(), check=True)
    return time.perf_counter() - t0


def run_job(data_dir: Path, save_dir: Path, log_path: Path) -> tuple[float, dict[str, float], str]:
    """Run the main job; return (seconds, {marker: seconds since start when first seen}, output)."""
    cmd = [sys.executable, "-c", ENTRY, "fit", "--config", "configs/temperature.yaml",
           "--data.data_dir", str(data_dir), "--trainer.logger.init_args.save_dir", str(save_dir)]
    seen: dict[str, float] = {}
    markers = [m for _, m in MARKERS]
    chunks: list[bytes] = []
    tail = b""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    while True:
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        now = time.perf_counter() - t0
        chunks.append(chunk)
        window = tail + chunk
        for m in markers:
            if m not in seen and m.encode() in window:
                seen[m] = now
        tail = window[-200:]
    rc = proc.wait()
    elapsed = time.perf_counter() - t0
    output = b"".join(chunks).decode(errors="replace")
    log_path.write_text(output)
    if rc != 0:
        print(output[-4000:])
        raise SystemExit(f"the main job failed with exit code {rc}; full output in {log_path}")
    return elapsed, seen, output


def phases(elapsed: float, seen: dict[str, float]) -> list[tuple[str, float | None]]:
    """Durations between consecutive markers; a marker not seen gives n/a and its time goes to the next."""
    result, prev = [], 0.0
    for name, marker in MARKERS:
        t = seen.get(marker)
        result.append((name, None if t is None else t - prev))
        prev = prev if t is None else t
    result.append(("exit and the rest", elapsed - prev))
    return result


def epochs_trained(save_dir: Path) -> tuple[int, int] | None:
    """(epochs, optimiser steps) of the last run."""
    files = sorted(save_dir.glob("temperature/version_*/metrics.csv"))
    if not files:
        return None
    with open(files[-1]) as f:
        rows = [row for row in csv.DictReader(f) if row.get("train_loss") not in (None, "")]
    return len({row["epoch"] for row in rows}), max(int(row["step"]) for row in rows) + 1 if rows else 0


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--warm-repeats", type=int, default=1, help="runs with the data present (default 1)")
    parser.add_argument("--import-repeats", type=int, default=3, help="baseline import timings (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (data, runs, logs)")
    args = parser.parse_args(argv)

    print("== bench_main_job: climateml fit --config configs/temperature.yaml, end to end ==")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPU cores, load average {load_average()}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="climateml-mainjob-"))
    try:
        data_dir, save_dir = tmp / "climatebench", tmp / "runs"
        imports = [time_import()]
        cold, cold_seen, _ = run_job(data_dir, save_dir, tmp / "cold.log")
        print(f"  cold run (generates the data): {cold:.1f} s", flush=True)
        warm_runs = []
        for i in range(args.warm_repeats):
            if len(imports) < args.import_repeats:
                imports.append(time_import())
            warm_runs.append(run_job(data_dir, save_dir, tmp / f"warm{i}.log"))
            print(f"  warm run {i + 1} (data present): {warm_runs[-1][0]:.1f} s", flush=True)
        while len(imports) < args.import_repeats:
            imports.append(time_import())
        n_epochs = epochs_trained(save_dir)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    warm, warm_seen, _ = min(warm_runs, key=lambda r: r[0])
    base = min(imports)
    print(f"baseline python -c 'import climateml.lightning_cli': {base:.2f} s (fastest of {len(imports)}: "
          + ", ".join(f"{t:.2f}" for t in imports) + ")")
    print(f"trained per run (until early stopping): {n_epochs[0] if n_epochs else '?'} epochs, "
          f"{n_epochs[1] if n_epochs else '?'} optimiser steps")
    for label, secs, seen in (("cold (no data, generation included)", cold, cold_seen),
                              ("warm (data present)", warm, warm_seen)):
        met = "MET" if secs < AIM_S else "MISSED"
        print(f"main job {label}: {secs:.1f} s; RATIO to import baseline {secs / base:.1f}x; "
              f"aim < {AIM_S:.0f} s: {met}")
        for name, d in phases(secs, seen):
            print(f"    {name:<52} {'n/a' if d is None else f'{d:6.1f} s'}")
    if len(warm_runs) > 1:
        print("warm runs: " + ", ".join(f"{r[0]:.1f} s" for r in warm_runs) + " (fastest used)")
    footer()
    return {"cold_s": cold, "warm_s": warm, "import_s": base, "cold_ratio": cold / base, "warm_ratio": warm / base,
            "epochs": n_epochs}


if __name__ == "__main__":
    main()
