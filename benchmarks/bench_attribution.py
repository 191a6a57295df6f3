"""Batched integrated gradients (``climateml.attribution.attribute``) against Captum called one sample at a time.

Three workloads, each explained by both on the same model and inputs with the same settings (zero
baseline, Gauss-Legendre steps, the same one-number-per-sample target):

- ``mlp``: a global-mean emulator, an MLP from 12 emission features to one number, 2048 samples: little
  arithmetic per sample, so Captum's per-call overhead is what batching removes;
- ``emulator``: the temperature lab's kind of model, an MLP from 12 emission features to a 96 x 144 map,
  explained for the global-mean (cos-lat weighted) of its output, 512 samples: small per-sample work, so
  the cost of calling Captum once per sample dominates;
- ``cnn``: a 3-layer CNN on (3, 32, 48) lat/lon fields -> one value, 256 samples: more arithmetic per sample.

The script checks that the maps agree, times each (fastest and median of interleaved rounds) and
measures each one's peak memory in a fresh interpreter (growth of the peak resident set over the set-up,
by resetting the kernel's high-water mark; on a GPU also torch's peak allocated memory). The last line
gives the ratio per-sample time / batched time of each workload.

    python benchmarks/bench_attribution.py                       # all workloads, ~2 min on 2 cores
    python benchmarks/bench_attribution.py --workload cnn --device cuda --internal-batch-size 8192
    python benchmarks/bench_attribution.py --fidelity runs/fidelity   # the Mamalakis et al. (2022) benchmark
                                                                      # at a reportable size instead (~1.5 min)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import _common  # noqa: F401  (puts this checkout first on sys.path)

WORKLOADS = {"mlp": {"samples": 2048}, "emulator": {"samples": 512}, "cnn": {"samples": 256}}


def build(args):
    """(model, x, target) of ``args.workload``."""
    import numpy as np
    import torch
    import xarray as xr
    from torch import nn

    from climateml.attribution import global_mean

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n = args.samples or WORKLOADS[args.workload]["samples"]
    if args.workload == "mlp":
        model = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
        x = xr.DataArray(rng.standard_normal((n, 12)).astype("f4"), dims=("time", "input"),
                         coords={"time": np.arange(n), "input": [f"x{i}" for i in range(12)]})
        target = None
    elif args.workload == "emulator":
        lat, lon = np.linspace(-88.75, 88.75, 96), np.arange(144) * 2.5
        model = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 96 * 144))
        x = xr.DataArray(rng.standard_normal((n, 12)).astype("f4"), dims=("time", "input"),
                         coords={"time": 1850 + np.arange(n), "input": [f"x{i}" for i in range(12)]})
        target = global_mean(grid=xr.Dataset(coords={"lat": lat, "lon": lon}))
    else:
        model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, stride=2),
                              nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(),
                              nn.Linear(16 * 8 * 12, 1))
        x = xr.DataArray(rng.standard_normal((n, 3, 32, 48)).astype("f4"), dims=("sample", "channel", "lat", "lon"),
                         coords={"sample": np.arange(n), "channel": ["tas", "psl", "pr"],
                                 "lat": np.linspace(-88, 88, 32), "lon": np.arange(48) * 7.5})
        target = None
    return model.eval().to(args.device), x, target


def batched(model, x, target, args):
    from climateml.attribution import attribute

    return attribute(model, x, "integrated_gradients", target=target, baseline="zeros", n_steps=args.steps,
                     internal_batch_size=args.internal_batch_size).values


def per_sample(model, x, target, args):
    """The way a notebook calls Captum: one sample at a time (the same one-number target module)."""
    import numpy as np
    import torch
    from captum.attr import IntegratedGradients

    from climateml.attribution.targets import TargetModule, as_target

    out_shape = tuple(model(torch.as_tensor(x.values[:1], device=args.device)).shape[1:])
    fwd = TargetModule(model, as_target(target).bind(out_shape, x, len(x), x.dims[0]).reducer).to(args.device).eval()
    ig = IntegratedGradients(fwd)
    values = torch.as_tensor(x.values, device=args.device)
    out = []
    for i in range(len(values)):
        out.append(ig.attribute(values[i:i + 1], baselines=0.0, n_steps=args.steps).detach().cpu().numpy())
    return np.concatenate(out)


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))


def measure_memory(args) -> None:
    """In a fresh interpreter: growth of the peak resident set (and CUDA peak) during one run of ``args.memory``."""
    import torch

    _common.set_threads(args.threads)
    model, x, target = build(args)
    fn = batched if args.memory == "batched" else per_sample
    fn(model, x.isel({x.dims[0]: slice(0, 2)}), target, args)  # one-off allocations outside the measurement
    rss0 = _status_kib("VmRSS:")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the kernel's peak-RSS mark (VmHWM) to the current RSS
        reset = True
    except OSError:
        reset = False
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    fn(model, x, target, args)
    hwm = _status_kib("VmHWM:")
    cuda = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else None
    print(json.dumps({"rss_growth_mib": (hwm - rss0) / 1024.0 if reset else None, "rss_before_mib": rss0 / 1024.0,
                      "cuda_peak_mib": cuda}))


def run_workload(args) -> float:
    import numpy as np

    import torch

    from climateml.attribution.methods import auto_batch_size, trial_forward

    model, x, target = build(args)
    n = len(x)
    rows = args.internal_batch_size or auto_batch_size(
        trial_forward(model, torch.as_tensor(x.values[:1], device=args.device)).activations_per_row, torch.device(args.device))
    print(f"\n-- {args.workload}: {n} samples of {tuple(x.shape[1:])}, n_steps {args.steps}, internal_batch_size "
          f"{rows} rows{'' if args.internal_batch_size else ' (automatic)'}, device {args.device}", flush=True)
    a = batched(model, x, target, args)
    b = per_sample(model, x.isel({x.dims[0]: slice(0, 8)}), target, args)
    diff = float(np.abs(a[:8] - b).max())
    print(f"maps agree: max |batched - per-sample| = {diff:.2e} (max |map| {np.abs(b).max():.2e})", flush=True)
    if diff > 1e-4 * max(1e-3, float(np.abs(b).max())):
        raise SystemExit("the batched and per-sample maps differ")
    times = {"batched": [], "per_sample": []}
    for r in range(args.rounds):
        for name, fn in (("batched", batched), ("per_sample", per_sample)):
            t0 = time.perf_counter()
            fn(model, x, target, args)
            times[name].append(time.perf_counter() - t0)
        print(f"round {r + 1}: batched {times['batched'][-1]:.3f} s, per-sample {times['per_sample'][-1]:.3f} s", flush=True)
    for name in times:
        print(f"{name:>10}: {_common.summary(times[name])} s; {n / min(times[name]):.0f} samples/s")
    for name in ("batched", "per_sample"):
        cmd = [sys.executable, __file__, "--memory", name, "--workload", args.workload, "--samples", str(n),
               "--steps", str(args.steps), "--threads", str(args.threads), "--device", args.device]
        if args.internal_batch_size:
            cmd += ["--internal-batch-size", str(args.internal_batch_size)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        mem = json.loads(out.stdout.strip().splitlines()[-1])
        grow = f"+{mem['rss_growth_mib']:.0f} MiB" if mem["rss_growth_mib"] is not None else "n/a"
        cuda = f", CUDA peak {mem['cuda_peak_mib']:.0f} MiB" if mem["cuda_peak_mib"] is not None else ""
        print(f"{name:>10}: peak memory {grow} resident over the set-up ({mem['rss_before_mib']:.0f} MiB){cuda}")
    ratio = min(times["per_sample"]) / min(times["batched"])
    print(f"{args.workload}: per-sample / batched = {ratio:.1f}x (medians "
          f"{_common.median(times['per_sample']) / _common.median(times['batched']):.1f}x)")
    return ratio


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    p.add_argument("--samples", type=int, default=None, help="samples (default: 512 emulator, 256 cnn)")
    p.add_argument("--steps", type=int, default=32, help="integration steps (n_steps)")
    p.add_argument("--internal-batch-size", type=int, default=None,
                   help="rows per forward pass of the batched call, its memory bound (default: attribute()'s own "
                        "choice, 16 MiB of activations per pass on a CPU, 2 GiB on a GPU)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: comparable on a shared machine)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--fidelity", metavar="DIR", default=None,
                   help="run the attribution fidelity benchmark (climateml.attribution.fidelity, default sizes) "
                        "and write its table, maps and figures to DIR instead")
    p.add_argument("--memory", choices=["batched", "per_sample"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.fidelity:
        from climateml.attribution.fidelity import main as fidelity_main

        raise SystemExit(fidelity_main(["--out", args.fidelity, "--threads", str(args.threads), "--device", args.device]))
    if args.memory:
        measure_memory(args)
        return

    import torch

    _common.quiet_lightning()
    _common.set_threads(args.threads)
    _common.header("attribution: batched integrated gradients vs Captum one sample at a time")
    ratios = {}
    for w in (WORKLOADS if args.workload == "all" else [args.workload]):
        args.workload = w
        ratios[w] = run_workload(args)
    _common.footer()
    print("ratio per-sample Captum / batched attribute(): " + ", ".join(f"{w} {r:.1f}x" for w, r in ratios.items()))


if __name__ == "__main__":
    main()
