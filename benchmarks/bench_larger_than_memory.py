"""Training on a data set larger than a memory budget: peak resident memory, data size, throughput.

Writes a ClimateNet-layout data set (one NetCDF file per snapshot: the 16 CAM5 fields and LABELS, as
published) larger than ``--budget-gib``, then trains the segmentation U-Net on all of it for one epoch through
``SegmentationDataModule`` (each sample read from its own file when the batch needs it) in a child
process, while this process samples the child's resident memory (with its DataLoader workers) every
50 ms and stops it if the total ever exceeds the budget. The in-memory path trains the same model on
``--in-memory-samples`` samples held as tensors (TensorDictDataset); throughput is compared per sample.

The default is sized for a 2-core, 24 GiB machine and a few minutes: a 1.5 GiB budget (importing torch
and Lightning alone takes ~1 GiB of resident memory here) and a 3.75 GiB data set (~1070 snapshots of 16
fields on 192 x 288 cells, every field an input channel). ``--budget-gib 16 --data-gib 40 --grid 768 1152``
makes the point at ClimateNet's real size on a bigger machine. (A budget enforced with ``resource.setrlimit(RLIMIT_AS)`` would count virtual memory:
importing torch maps several GiB it never touches, so the budget is checked on resident memory instead.)

Last line: ``RATIO peak RSS / data size: X`` (the larger of the two peaks above; bar: below 0.5).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (repository first on sys.path)

CHANNELS = ["TMQ", "U850", "V850", "UBOT", "VBOT", "QREFHT", "PS", "PSL", "T200", "T500", "PRECT", "TS", "TREFHT",
            "Z1000", "Z200", "ZBOT"]  # the 16 CAM5 fields of a ClimateNet file, all read as input channels
GIB = 2**30


def _tree_memory(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (Linux /proc), pages shared between them (forked
    workers share the parent's libraries) counted once: the sum of PSS, or of RSS where PSS is unknown."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            total += _pss(p)
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def _pss(pid: int) -> int:
    for name, key in (("smaps_rollup", "Pss:"), ("status", "VmRSS:")):
        try:
            with open(f"/proc/{pid}/{name}") as f:
                for line in f:
                    if line.startswith(key):
                        return int(line.split()[1]) * 1024
        except FileNotFoundError:
            continue
    return 0


# ---- the data set ----

def write_data(out: Path, data_gib: float, nlat: int, nlon: int, seed: int = 0) -> tuple[int, int]:
    """ClimateNet-layout files until their total size exceeds ``data_gib``; returns (files, bytes).

    A few snapshots come from the package's generator (storms, rivers, their labels); the rest are those
    fields rolled in longitude by a random amount, so every file is different but physically shaped.
    """
    import numpy as np
    import pandas as pd
    import xarray as xr

    from climateml.data.synthetic.climatenet import generate_climatenet

    templates_dir = out.parent / f"{out.name}-templates"
    generate_climatenet(templates_dir, n_dates=4, nlat=nlat, nlon=nlon, seed=seed, n_double_labelled=0)
    templates = []
    for path in sorted(templates_dir.glob("*.nc")):
        with xr.open_dataset(path) as ds:
            templates.append(ds[CHANNELS + ["LABELS"]].load())
    shutil.rmtree(templates_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    encoding = {**{c: {"dtype": "float32"} for c in CHANNELS}, "LABELS": {"dtype": "int8"}}
    written = n = 0
    day = pd.Timestamp("1990-01-01")
    while written < data_gib * GIB:
        ds = templates[n % len(templates)].roll(lon=int(rng.integers(nlon)), roll_coords=False)
        path = out / f"data-{(day + pd.Timedelta(days=n)).strftime('%Y-%m-%d')}-01-1_0.nc"
        ds.to_netcdf(path, encoding=encoding)
        written += path.stat().st_size
        n += 1
    return n, written


# ---- the training child (one process per measurement) ----

def child(args: argparse.Namespace) -> None:
    _common.quiet_lightning()
    import lightning as L
    import torch

    from climateml.data.base import TensorDictDataset
    from climateml.data.climatenet import SegmentationDataModule
    from climateml.models.segmentation import SegmentationModel

    L.seed_everything(0, workers=True)
    dm = SegmentationDataModule(str(args.data), channels=CHANNELS, batch_size=args.batch_size, num_workers=args.workers,
                                crop=[], shift_lon=False, flip_lat=False, val_fraction=0.01, test_fraction=0.01)
    t0 = time.perf_counter()
    dm.setup("fit")
    setup_s = time.perf_counter() - t0
    if args.mode == "in_memory":  # the same samples, read once into tensors: memory grows with the samples
        ds = dm.train_dataset
        items = [ds[i] for i in range(min(args.in_memory_samples, len(ds)))]
        dm.train_dataset = TensorDictDataset(x=torch.stack([s["x"] for s in items]), y=torch.stack([s["y"] for s in items]))
    n = len(dm.train_dataset)
    model = SegmentationModel(dm.spec, depth=args.depth, width=args.width, norm="group", loss="cross_entropy")
    class StepTimes(L.Callback):  # wall time from one batch's end to the next's: loading + the step
        times: list[float] = []
        last = None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            now = time.perf_counter()
            if self.last is not None:
                self.times.append(now - self.last)
            self.last = now

    steps = StepTimes()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, callbacks=[steps])
    t0 = time.perf_counter()
    trainer.fit(model, train_dataloaders=dm.train_dataloader())
    fit_s = time.perf_counter() - t0
    median_step = sorted(steps.times)[len(steps.times) // 2] if steps.times else float("nan")
    import resource

    print("RESULT " + json.dumps({"samples": n, "fit_s": fit_s, "setup_s": setup_s,
                                  "median_rate": args.batch_size / median_step,
                                  "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                                  "workers_maxrss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}),
          flush=True)


def run_child(args: argparse.Namespace, mode: str) -> dict:
    """Runs one measurement in a child process under the budget; its result plus the sampled peak tree RSS."""
    cmd = [sys.executable, __file__, "--child", mode, "--data", str(args.data), "--batch-size", str(args.batch_size),
           "--workers", str(args.workers), "--depth", str(args.depth), "--width", str(args.width),
           "--in-memory-samples", str(args.in_memory_samples)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_common.REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak, over = 0, False
    while proc.poll() is None:
        peak = max(peak, _tree_memory(proc.pid))
        if mode == "lazy" and peak > args.budget_gib * GIB:
            over = True
            proc.kill()
            break
        time.sleep(0.05)
    out, err = proc.communicate()
    if over:
        raise SystemExit(f"the {mode} run went over the budget ({peak / GIB:.2f} GiB > {args.budget_gib} GiB): stopped")
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"the {mode} run failed (exit {proc.returncode}):\n{err[-3000:]}")
    return {**json.loads(lines[-1][len("RESULT "):]), "tree_peak": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-gib", type=float, default=1.5, help="memory budget of the training process tree")
    parser.add_argument("--data-gib", type=float, default=None, help="data set size (default: 2.5 x budget)")
    parser.add_argument("--grid", type=int, nargs=2, default=[192, 288], metavar=("NLAT", "NLON"))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1,
                        help="DataLoader worker processes of the lazy run: 1 reads the next batch while the main "
                             "process trains (with 0, reading stalls torch's threads on a busy machine)")
    parser.add_argument("--depth", type=int, default=1, help="U-Net depth (small: the point is the data)")
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--in-memory-samples", type=int, default=48, help="samples the in-memory run holds")
    parser.add_argument("--dir", default=None, help="where to write the data (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the data afterwards")
    parser.add_argument("--child", choices=["lazy", "in_memory"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.mode = args.child
        return child(args)

    args.data_gib = args.data_gib or 2.5 * args.budget_gib
    if args.data_gib <= args.budget_gib:
        raise SystemExit("--data-gib must exceed --budget-gib: the point is a data set larger than the budget")
    _common.header("larger-than-memory training (segmentation, ClimateNet layout)")
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="climateml-ltm-"))
    args.data = root / "climatenet"
    try:
        t0 = time.perf_counter()
        if not any(args.data.glob("data-*.nc")):
            n_files, size = write_data(args.data, args.data_gib, *args.grid)
        else:
            files = list(args.data.glob("data-*.nc"))
            n_files, size = len(files), sum(p.stat().st_size for p in files)
        print(f"data: {n_files} files, {size / GIB:.2f} GiB on {args.grid[0]} x {args.grid[1]} cells "
              f"({time.perf_counter() - t0:.0f} s to write); budget {args.budget_gib:.2f} GiB", flush=True)

        lazy = run_child(args, "lazy")
        mem = run_child(args, "in_memory")
        lazy_rate, mem_rate = lazy["samples"] / lazy["fit_s"], mem["samples"] / mem["fit_s"]
        per_sample = size / n_files
        print(f"lazy (DataLoader workers: {args.workers}): one epoch over all {lazy['samples']} training samples in "
              f"{lazy['fit_s']:.1f} s = {lazy_rate:.2f} samples/s (+ setup {lazy['setup_s']:.1f} s: grid check and "
              f"statistics pass over the training files)")
        peak = max(lazy["maxrss"], lazy["tree_peak"])
        print(f"  peak RSS: training process {lazy['maxrss'] / GIB:.2f} GiB (getrusage), whole process tree "
              f"{lazy['tree_peak'] / GIB:.2f} GiB (sampled every 50 ms, pages shared with forked workers counted once), "
              f"largest child process {lazy['workers_maxrss'] / GIB:.2f} GiB; peak {peak / GIB:.2f} GiB = "
              f"{peak / (args.budget_gib * GIB):.0%} of the budget")
        print(f"in memory: {mem['samples']} samples held as tensors ({mem['samples'] * per_sample / GIB:.2f} GiB of "
              f"files), one epoch in {mem['fit_s']:.1f} s = {mem_rate:.2f} samples/s; peak RSS "
              f"{mem['tree_peak'] / GIB:.2f} GiB (all {lazy['samples']} samples would need ~{size / GIB:.1f} GiB more)")
        print(f"throughput lazy / in memory: {lazy_rate / mem_rate:.2f}x over whole epochs; "
              f"{lazy['median_rate'] / mem['median_rate']:.2f}x from the median step (batch read + training step: "
              f"{lazy['median_rate']:.1f} vs {mem['median_rate']:.1f} samples/s; robust to other jobs' bursts)")
        _common.footer()
        print(f"RATIO peak RSS / data size: {peak / size:.3f}")
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
