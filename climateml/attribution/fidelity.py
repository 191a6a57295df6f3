"""Attribution fidelity against a known ground truth (Mamalakis, Ebert-Uphoff & Barnes 2022, "Neural network
attribution methods for problems in geoscience: a novel synthetic benchmark dataset", Environ. Data Sci. 1).

Inputs are spatially correlated random fields x (sample, lat, lon); the target is an additive function
``y = sum over cells i of F_i(x_i)`` where each ``F_i`` is a random piecewise-linear function with
``F_i(0) = 0``. Each cell's true contribution to y is therefore known exactly, ``F_i(x_i)``, relative to the
reference x = 0 (the mean state of the anomalies). A fully connected network is trained to fit y; each
attribution method's map of a test sample is compared with the true contributions by their Pearson
correlation over the cells, averaged over samples. Methods with a baseline use zeros, the reference of
the ground truth.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from torch import nn

from climateml.attribution._fields import correlated_fields
from climateml.attribution.core import attribute
from climateml.attribution.diagnostics import r2_skill
from climateml.attribution.methods import METHODS

#: methods the benchmark runs by default (Grad-CAM needs a conv layer; the benchmark's model is an MLP)
FIDELITY_METHODS = tuple(m for m in METHODS if m != "grad_cam")


class FieldMLP(nn.Module):
    """Fully connected ReLU network on a flattened (lat, lon) field, one output per sample (n, 1).

    Only modules, no functional operations, so Captum's LRP sees every step (see :func:`attribute`)."""

    def __init__(self, n_cells: int, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = n_cells
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.no_grad()
    def scale_output(self, factor: float) -> None:
        """Multiply the output by ``factor`` inside the last layer (train on y / std, predict in y's units)."""
        self.net[-1].weight.mul_(factor)
        self.net[-1].bias.mul_(factor)


def piecewise_linear(x: np.ndarray, breakpoints: np.ndarray, slopes: np.ndarray) -> np.ndarray:
    """Per-cell piecewise-linear functions through the origin, F_i(0) = 0.

    Args:
        x: values (..., cells).
        breakpoints: (cells, K-1) ascending breakpoints of each cell's function.
        slopes: (cells, K) slope of each of the K pieces.

    ``F_i(v) = sum_k slope_ik * (clip(v, e_k, e_k+1) - clip(0, e_k, e_k+1))`` with edges e = (-inf, breakpoints, +inf).
    """
    cells, k = slopes.shape
    edges = np.concatenate([np.full((cells, 1), -np.inf), breakpoints, np.full((cells, 1), np.inf)], axis=1)
    out = np.zeros(np.shape(x), dtype=np.float64)
    for j in range(k):
        lo, hi = edges[:, j], edges[:, j + 1]
        out += slopes[:, j] * (np.clip(x, lo, hi) - np.clip(0.0, lo, hi))
    return out


def make_fidelity_data(n_samples: int, shape: tuple[int, int] = (16, 24), length_scale: float = 2.0,
                       n_pieces: int = 3, breakpoint_range: float = 2.0, seed: int = 0,
                       lat: tuple[float, float] = (-20.0, 20.0), lon: tuple[float, float] = (150.0, 270.0)) -> xr.Dataset:
    """The benchmark's data: ``x`` (sample, lat, lon) unit-variance correlated anomalies, ``contribution``
    (sample, lat, lon) the true F_i(x_i), and ``y`` (sample) = their sum.

    Args:
        n_samples: samples to draw.
        shape: (nlat, nlon) grid cells, placed on a regular grid spanning ``lat`` x ``lon`` [degrees].
        length_scale: correlation length of the fields [grid cells].
        n_pieces: pieces per cell's function; breakpoints uniform in +-``breakpoint_range``, slopes N(0, 1).
        seed: one seed for the functions and the fields (same seed, same functions).
    """
    rng = np.random.default_rng(seed)
    cells = shape[0] * shape[1]
    breakpoints = np.sort(rng.uniform(-breakpoint_range, breakpoint_range, (cells, n_pieces - 1)), axis=1)
    slopes = rng.standard_normal((cells, n_pieces))
    x = correlated_fields(n_samples, shape, length_scale, np.random.default_rng(seed + 1))
    contrib = piecewise_linear(x.reshape(n_samples, -1), breakpoints, slopes).reshape(x.shape)
    lat_c = np.linspace(lat[0], lat[1], shape[0])
    lon_c = np.linspace(lon[0], lon[1], shape[1])
    coords = {"sample": np.arange(n_samples), "lat": lat_c, "lon": lon_c}
    return xr.Dataset(
        {"x": (("sample", "lat", "lon"), x, {"long_name": "synthetic anomaly field", "units": "1 (standardised)"}),
         "contribution": (("sample", "lat", "lon"), contrib.astype(np.float32),
                          {"long_name": "true contribution F_i(x_i) of each cell to y"}),
         "y": (("sample",), contrib.reshape(n_samples, -1).sum(1).astype(np.float32), {"long_name": "sum of contributions"}),
         "breakpoints": (("cell", "breakpoint"), breakpoints), "slopes": (("cell", "piece"), slopes)},
        coords=coords,
        attrs={"length_scale_cells": length_scale, "n_pieces": n_pieces, "seed": seed,
               "reference": "Mamalakis, Ebert-Uphoff & Barnes 2022"})


def train_regressor(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 10, batch_size: int = 256,
                    lr: float = 3e-3, seed: int = 0) -> nn.Module:
    """Fit ``model`` to (x, y) with Adam, a one-cycle schedule and MSE on y / std(y); plain torch, CPU or the model's device."""
    torch.manual_seed(seed)
    dev = next(model.parameters()).device
    xt = torch.as_tensor(x, dtype=torch.float32, device=dev)
    yt = torch.as_tensor(y, dtype=torch.float32, device=dev).reshape(len(y), -1)
    opt = torch.optim.Adam(model.parameters(), lr=lr / 3)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g).to(dev)
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            loss = (model(xt[idx]).reshape(len(idx), -1) - yt[idx]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model


def pattern_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation over cells of each sample's two maps (n, ...) -> (n,); NaN for a constant map."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(1) / den, np.nan)


DEFAULT_METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "occlusion": {"window": {"lat": 1, "lon": 1}},
    "saliency": {"abs": True},
}


def run_fidelity(n_train: int = 20000, n_test: int = 200, shape: tuple[int, int] = (8, 10), length_scale: float = 2.0,
                 n_pieces: int = 3, hidden: Sequence[int] = (256, 256), epochs: int = 10, lr: float = 3e-3,
                 methods: Sequence[str] = FIDELITY_METHODS, method_options: Mapping[str, Mapping] | None = None,
                 seed: int = 0, out_dir: str | Path | None = None, device: str = "cpu") -> dict[str, Any]:
    """Train the benchmark's MLP and score every attribution method against the true contributions.

    Returns ``{"r2_test": ..., "train_seconds": ..., "settings": {...}, "methods": {method: {"correlation",
    "correlation_std", "seconds"}}}`` (correlation: mean over test samples of the per-sample pattern
    correlation). With ``out_dir``, also writes ``fidelity.json``, ``fidelity_maps.nc`` and ``figures/``.
    """
    data = make_fidelity_data(n_train + n_test, shape, length_scale, n_pieces, seed=seed)
    x = data["x"].values
    y = data["y"].values
    y_scale = float(y[:n_train].std())
    model = FieldMLP(shape[0] * shape[1], hidden).to(device)
    t0 = time.perf_counter()
    train_regressor(model, x[:n_train], y[:n_train] / y_scale, epochs, lr=lr, seed=seed)
    model.scale_output(y_scale)
    train_s = time.perf_counter() - t0
    test = data.isel(sample=slice(n_train, None))
    with torch.no_grad():
        pred = model(torch.as_tensor(test["x"].values, device=device)).cpu().numpy().ravel()
    yt = test["y"].values
    r2 = r2_skill(pred, yt)
    truth = test["contribution"].values
    opts = {**DEFAULT_METHOD_OPTIONS, **{k: dict(v) for k, v in (method_options or {}).items()}}
    results, maps = {}, {}
    for m in methods:
        t1 = time.perf_counter()
        kw = dict(opts.get(m, {}))
        base = kw.pop("baseline", "zeros")
        a = attribute(model, test["x"], m, baseline=base, **kw)
        corr = pattern_correlation(a.values, truth)
        results[m] = {"correlation": float(np.nanmean(corr)), "correlation_std": float(np.nanstd(corr)),
                      "seconds": time.perf_counter() - t1}
        maps[m] = a
    out = {"r2_test": r2, "train_seconds": train_s,
           "settings": {"n_train": n_train, "n_test": n_test, "shape": list(shape), "length_scale_cells": length_scale,
                        "n_pieces": n_pieces, "hidden": list(hidden), "epochs": epochs, "seed": seed},
           "methods": results}
    if out_dir is not None:
        _write(out_dir, out, maps, test)
    return out


def _write(out_dir, out, maps, test) -> None:
    import json

    from climateml.attribution import plots
    from climateml.writers import write_cf, write_text

    out_dir = Path(out_dir)
    write_text(json.dumps(out, indent=2), out_dir / "fidelity.json")
    ds = xr.Dataset({f"attribution_{m}": a for m, a in maps.items()})
    ds["contribution"] = test["contribution"]
    ds["x"] = test["x"]
    write_cf(ds, out_dir / "fidelity_maps.nc", title="attribution maps and true contributions of the fidelity benchmark")
    fig = plots.plot_methods(maps, sample=0, truth=test["contribution"],
                             title="Fidelity benchmark, test sample 0: true contribution F_i(x_i) and each method's map")
    plots.save(fig, out_dir / "figures" / "fidelity_maps.png")
    import matplotlib.pyplot as plt

    names = list(out["methods"])
    vals = [out["methods"][m]["correlation"] for m in names]
    errs = [out["methods"][m]["correlation_std"] for m in names]
    fig, ax = plt.subplots(figsize=(7, 3.4), constrained_layout=True)
    bars = ax.bar(names, vals, yerr=errs, capsize=3, color=["C2" if v >= 0.8 else "C0" for v in vals])
    ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.axhline(0.8, color="k", ls="--", lw=0.8)
    ax.set_ylabel("mean per-sample correlation with truth")
    ax.set_title(f"Attribution fidelity (MLP R² {out['r2_test']:.3f}; dashed: 0.8)", fontsize=9)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    plots.save(fig, out_dir / "figures" / "fidelity_correlation.png")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m climateml.attribution.fidelity --out DIR``: the benchmark at a reportable size, a table printed."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m climateml.attribution.fidelity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="folder for fidelity.json, fidelity_maps.nc and figures/")
    p.add_argument("--n-train", type=int, default=50000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--shape", type=int, nargs=2, default=(12, 16), metavar=("NLAT", "NLON"))
    p.add_argument("--length-scale", type=float, default=2.0, help="correlation length [grid cells]")
    p.add_argument("--pieces", type=int, default=3, help="pieces of each cell's piecewise-linear function")
    p.add_argument("--hidden", type=int, nargs="+", default=[512, 256])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = run_fidelity(args.n_train, args.n_test, tuple(args.shape), args.length_scale, args.pieces, args.hidden,
                       args.epochs, seed=args.seed, out_dir=args.out, device=args.device)
    print(f"fidelity benchmark: {args.shape[0]}x{args.shape[1]} cells, {args.n_train} training samples, "
          f"MLP {args.hidden}, test R2 {res['r2_test']:.3f}, training {res['train_seconds']:.0f} s")
    print(f"{'method':>22}  {'correlation':>11}  {'std':>6}  {'seconds':>7}")
    for m, r in res["methods"].items():
        print(f"{m:>22}  {r['correlation']:11.3f}  {r['correlation_std']:6.3f}  {r['seconds']:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
