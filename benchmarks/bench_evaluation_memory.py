"""Peak memory of the nowcasting evaluation on 8x the test set against 1x: the streaming evaluation holds
one batch, not the split.

Setup: one sample radar archive from ``climateml.data.synthetic.radar.generate_radar`` (one CF NetCDF file per
frame, ``--size`` x ``--size`` cells at 1 km and 5 min, no missing frame), long enough for a test period of
``8 x --windows`` windows of ``--n-in`` past + ``--n-out`` future frames after short training and validation
periods. A fresh ``NowcastModel`` (``--width``, one block, no optical-flow base: the model's weights do not
change what is held) and ``NowcastEvaluation`` with both baselines (persistence, optical flow), every score,
the prediction NetCDF and the figures, exactly as ``climateml fit`` runs it, batch size ``--batch-size``.
The DataModule's frame cache is off (``cache_mb=0``): it is bounded by its own setting (128 MiB by default),
whatever the test set's size, and would only blur the comparison.

Each evaluation runs in its own interpreter; its peak resident memory is its own
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (imports, DataModule setup, evaluation, writing, figures). The
test set is 1x, then 8x the windows; for context (``--context``, on by default) the same two sizes with the
whole split held in memory (``Evaluation.run(..., in_memory=True)``, the evaluator before streaming), to show the data
dominates the peak when it is held. The size of a split's arrays (truth; model and baselines on a ``model``
dim) is printed beside each. The last line is the ratio of the streaming evaluation's peaks, 8x / 1x.

Run: ``python benchmarks/bench_evaluation_memory.py [--windows 24] [--size 128] [--batch-size 8] [--no-context]``
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

import _common  # noqa: F401  (puts the repository root on sys.path)
from _common import REPO_ROOT, footer, header, quiet_lightning

START = "2024-06-01T00:00"
TRAIN_WINDOWS, VAL_WINDOWS = 4, 2


def periods(n_test: int, n_in: int, n_out: int) -> dict[str, list[str]]:
    """Training, validation and test periods (5-min frames from START) with the given numbers of windows."""
    import numpy as np

    span = n_in + n_out - 1
    t0, step = np.datetime64(START), np.timedelta64(5, "m")
    out, first = {}, 0
    for name, n in (("train_period", TRAIN_WINDOWS), ("val_period", VAL_WINDOWS), ("test_period", n_test)):
        last = first + n - 1 + span
        out[name] = [str(t0 + first * step), str(t0 + last * step)]
        first = last + 1
    return out


def child(args) -> None:
    """One evaluation in this process; prints its peak RSS [KiB] and the split's size as JSON."""
    import resource

    quiet_lightning()
    import torch

    torch.set_num_threads(1)
    from climateml.data.nowcasting import NowcastingDataModule
    from climateml.evaluation.nowcasting import NowcastEvaluation
    from climateml.models.nowcasting import NowcastModel

    dm = NowcastingDataModule(args.data, n_in=args.n_in, n_out=args.n_out, batch_size=args.batch_size, cache_mb=0,
                              **periods(args.child_windows, args.n_in, args.n_out))
    dm.setup()
    torch.manual_seed(0)
    model = NowcastModel(dm.spec, width=args.width, depth=1, norm="group", base="none")
    evaluation = NowcastEvaluation(fss_scales_km=[1, 4, 16])
    t0 = time.perf_counter()
    run_dir = Path(args.out)
    result = evaluation.run([model], dm, run_dir, accelerator="cpu", in_memory=args.in_memory)
    seconds = time.perf_counter() - t0
    n = len(dm.dataset("test"))
    written = run_dir / "test_predictions_test.nc"
    assert written.stat().st_size > 0 and (run_dir / "figures" / "sequence_test.png").exists()
    split_mb = n * args.n_out * args.size ** 2 * 4 * (1 + 3) / 2 ** 20  # truth + 3 entries, float32
    print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "windows": n,
                      "seconds": seconds, "split_mb": split_mb, "mae": result["rain_rate"]["model"]["mae"]}))


def measure(args, data: Path, windows: int, in_memory: bool, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child-data", str(data), "--child-windows", str(windows), "--child-out", str(out),
           "--size", str(args.size), "--n-in", str(args.n_in), "--n-out", str(args.n_out),
           "--batch-size", str(args.batch_size), "--width", str(args.width)] + (["--child-in-memory"] if in_memory else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"})
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=24, help="test windows of the 1x test set (default 24)")
    parser.add_argument("--size", type=int, default=128, help="grid cells per side (default 128)")
    parser.add_argument("--n-in", type=int, default=4)
    parser.add_argument("--n-out", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--width", type=int, default=4, help="channels of the fresh model (default 4)")
    parser.add_argument("--no-context", action="store_true", help="skip the in-memory evaluations (context)")
    parser.add_argument("--child-data", help=argparse.SUPPRESS)
    parser.add_argument("--child-windows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    parser.add_argument("--child-in-memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_data:
        args.data, args.out, args.in_memory = args.child_data, args.child_out, args.child_in_memory
        return child(args)

    from climateml.data.synthetic.radar import generate_radar

    header("bench_evaluation_memory: peak RSS of the nowcasting evaluation, 8x the test set against 1x")
    with tempfile.TemporaryDirectory(prefix="climateml-bench-evalmem-") as tmp:
        data = Path(tmp) / "radar"
        n_frames = TRAIN_WINDOWS + VAL_WINDOWS + 8 * args.windows + 3 * (args.n_in + args.n_out - 1)
        t0 = time.perf_counter()
        generate_radar(data, n_frames=n_frames, ny=args.size, nx=args.size, missing=(), start=START, progress=False)
        print(f"generated {n_frames} frames of {args.size} x {args.size} in {time.perf_counter() - t0:.1f} s", flush=True)
        modes = [False] + ([] if args.no_context else [True])
        peaks = {}
        for in_memory in modes:
            for factor in (1, 8):
                m = measure(args, data, factor * args.windows, in_memory, Path(tmp) / f"run_{int(in_memory)}_{factor}")
                peaks[in_memory, factor] = m["peak_kib"]
                what = "whole split in memory (context)" if in_memory else "streaming"
                print(f"{what:>32}, {factor}x: {m['windows']:4d} test windows, arrays of the split "
                      f"{m['split_mb']:7.1f} MiB, peak RSS {m['peak_kib'] / 1024:7.1f} MiB, evaluation {m['seconds']:.1f} s",
                      flush=True)
        if not args.no_context:
            print(f"for context: whole split in memory, peak RSS 8x / 1x: {peaks[True, 8] / peaks[True, 1]:.3f}")
        footer()
        print(f"RATIO peak RSS evaluating 8x the test set / 1x: {peaks[False, 8] / peaks[False, 1]:.3f}")


if __name__ == "__main__":
    main()
