"""Figures students and researchers look at: maps, series, learning curves, metric comparisons."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import xarray as xr

from climateml.metrics import global_mean, global_std

def _nearest_year(da: xr.DataArray, year: int) -> int:
    return int(da["time"].values[np.abs(da["time"].values - year).argmin()])


def plot_maps(truth: xr.DataArray, predictions: Mapping[str, xr.DataArray], years: Sequence[int] = (2030, 2050, 2100),
              vmax: float = 6.0, cmap: str = "RdBu_r", units: str = "K") -> plt.Figure:
    """Rows: years; columns: truth, each prediction, and each prediction minus truth (diverging colours)."""
    years = [y for y in dict.fromkeys(_nearest_year(truth, y) for y in years)]
    ncol = 1 + 2 * len(predictions)
    fig, axes = plt.subplots(len(years), ncol, figsize=(3.2 * ncol, 2.0 * len(years) + 0.6), squeeze=False,
                             constrained_layout=True)
    for r, year in enumerate(years):
        panels = [("truth", truth.sel(time=year), vmax)]
        panels += [(name, p.sel(time=year), vmax) for name, p in predictions.items()]
        panels += [(f"{name} - truth", p.sel(time=year) - truth.sel(time=year), vmax / 3) for name, p in predictions.items()]
        for c, (title, field, lim) in enumerate(panels):
            ax = axes[r, c]
            im = ax.pcolormesh(field["lon"], field["lat"], field, cmap=cmap, vmin=-lim, vmax=lim, shading="auto")
            ax.set_title(f"{title}, {year}", fontsize=9)
            ax.set_xticks([]), ax.set_yticks([])
            if r == len(years) - 1:
                fig.colorbar(im, ax=ax, orientation="horizontal", shrink=0.8, label=units)
    return fig


def plot_ensemble_spread(members: xr.DataArray, years: Sequence[int] = (2030, 2050, 2100), units: str = "K") -> plt.Figure:
    """Maps of the standard deviation across ensemble members (dimension ``member``) for the given years."""
    years = [y for y in dict.fromkeys(_nearest_year(members, y) for y in years)]
    spread = members.std("member")
    vmax = float(spread.sel(time=years).max()) or 1.0
    fig, axes = plt.subplots(1, len(years), figsize=(3.4 * len(years), 2.6), squeeze=False, constrained_layout=True)
    for ax, year in zip(axes[0], years):
        im = ax.pcolormesh(spread["lon"], spread["lat"], spread.sel(time=year), cmap="viridis", vmin=0, vmax=vmax,
                           shading="auto")
        ax.set_title(f"ensemble spread (std, {members.sizes['member']} members), {year}", fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
    fig.colorbar(im, ax=axes[0].tolist(), orientation="horizontal", shrink=0.6, label=units)
    return fig


def plot_global_mean(truth: xr.DataArray, predictions: Mapping[str, xr.DataArray], units: str = "K") -> plt.Figure:
    """Global (cos-lat) mean over time with the spatial spread (±1 std over the grid) shaded.

    A prediction with a ``member`` dimension is drawn as its ensemble mean, with the ensemble's
    min-max range of the global mean shaded as well.
    """
    fig, ax = plt.subplots(figsize=(8, 4), constrained_layout=True)
    series = {"truth": truth, **predictions}
    for i, (name, da) in enumerate(series.items()):
        colour = f"C{i}"
        mean_da = da.mean("member") if "member" in da.dims else da
        g, s = global_mean(mean_da), global_std(mean_da)
        t = da["time"].values
        ax.plot(t, g, color=colour, label=name, lw=2 if name == "truth" else 1.5)
        ax.fill_between(t, g - s, g + s, color=colour, alpha=0.12)
        if "member" in da.dims and da.sizes["member"] > 1:
            members = global_mean(da)
            ax.fill_between(t, members.min("member"), members.max("member"), color=colour, alpha=0.35,
                            label=f"{name}: ensemble range ({da.sizes['member']} members)")
    ax.set_xlabel("year"), ax.set_ylabel(f"global mean ({units})")
    ax.set_title("Global mean (cos-latitude weighted); shading: ±1 std over the grid")
    ax.legend(fontsize=8)
    return fig


def plot_point_series(truth: xr.DataArray, predictions: Mapping[str, xr.DataArray], lat: float, lon: float,
                      place: str = "", units: str = "K") -> plt.Figure:
    """The series at the grid cell nearest (lat, lon); lon may be given in -180..180 or 0..360."""
    if float(truth["lon"].max()) > 180 and lon < 0:
        lon += 360.0
    fig, ax = plt.subplots(figsize=(8, 3.5), constrained_layout=True)
    for i, (name, da) in enumerate({"truth": truth, **predictions}.items()):
        point = da.sel(lat=lat, lon=lon, method="nearest")
        if "member" in point.dims:
            ax.fill_between(point["time"], point.min("member"), point.max("member"), color=f"C{i}", alpha=0.3)
            point = point.mean("member")
        ax.plot(point["time"], point, color=f"C{i}", label=name)
    cell = truth.sel(lat=lat, lon=lon, method="nearest")
    ax.set_title(f"{place + ' ' if place else ''}(cell at {float(cell.lat):.1f}N, {float(cell.lon):.1f}E)")
    ax.set_xlabel("year"), ax.set_ylabel(units), ax.legend(fontsize=8)
    return fig


def plot_learning_curves(histories: Mapping[str, str | Path | pd.DataFrame]) -> plt.Figure:
    """Training and validation loss per epoch from Lightning CSVLogger ``metrics.csv`` files."""
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for i, (name, hist) in enumerate(histories.items()):
        df = hist if isinstance(hist, pd.DataFrame) else pd.read_csv(hist)
        for key, style in (("train_loss", "-"), ("val_loss", "--")):
            if key in df:
                d = df.dropna(subset=[key]).groupby("epoch")[key].last()
                ax.plot(d.index, d.values, style, color=f"C{i}", label=f"{name} {key.split('_')[0]}")
    ax.set_yscale("log"), ax.set_xlabel("epoch"), ax.set_ylabel("MSE (standardised)")
    ax.set_title("Learning curves"), ax.legend(fontsize=8)
    return fig


def plot_metric_comparison(metrics: Mapping[str, Mapping[str, Mapping[str, float]]],
                           keys: Sequence[str] = ("nrmse_spatial", "nrmse_global", "nrmse_total")) -> plt.Figure:
    """Bars of each metric for the model and the linear baseline, one panel per target."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5), squeeze=False, constrained_layout=True)
    for ax, (target, by_model) in zip(axes[0], metrics.items()):
        present = [k for k in keys if all(k in m for m in by_model.values())] or ["rmse"]
        x = np.arange(len(present))
        width = 0.8 / len(by_model)
        for i, (name, m) in enumerate(by_model.items()):
            vals = [m[k] for k in present]
            bars = ax.bar(x + i * width, vals, width, label=name)
            ax.bar_label(bars, fmt="%.3f", fontsize=7)
        ax.set_xticks(x + width * (len(by_model) - 1) / 2, present, fontsize=8)
        ax.set_title(f"{target}: test scores (lower is better)"), ax.legend(fontsize=8)
    return fig


def save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
