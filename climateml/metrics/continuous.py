"""Continuous scores as small pure functions of xarray objects, with ``dim=`` and ``weights=`` like xskillscore.

``dim``: the dims to reduce (a name, a list, or None for all). ``weights``: an xarray of weights
broadcast against the error, ``"area"`` (default: cos(lat) where the field has a ``lat`` dim, equal
weights on projected ``y``/``x`` grids; see :mod:`climateml.grid`), or None (equal weights). NaN in
either argument is skipped. Every function returns an ``xarray.DataArray`` (0-d when every dim is
reduced; ``float()`` it for a number).

NRMSE follows ClimateBench (Watson-Parris et al. 2022), normalised by the absolute area-weighted
mean of the truth over the evaluation period:

    nrmse_spatial = RMSE_w(<truth>_t, <pred>_t) / |<truth>_{w,t}|       (time-mean maps)
    nrmse_global  = sqrt(mean_t(<truth>_w - <pred>_w)^2) / |<truth>_{w,t}|  (global-mean series)
    nrmse_total   = nrmse_spatial + 5 nrmse_global
"""

from __future__ import annotations

from typing import Hashable, Literal, Sequence

import numpy as np
import xarray as xr

from climateml.grid import area_weights, cell_area, lat_weights, spatial_dims  # noqa: F401  (re-exported)

Dims = Hashable | Sequence[Hashable] | None
Weights = xr.DataArray | Literal["area"] | None

__all__ = ["mse", "rmse", "mae", "bias", "r2", "nrmse", "weighted_mean", "global_mean", "global_std",
           "lat_weights", "cell_area"]


def _weights(like: xr.DataArray, weights: Weights) -> xr.DataArray | None:
    return area_weights(like) if isinstance(weights, str) and weights == "area" else weights


def weighted_mean(da: xr.DataArray, dim: Dims = None, weights: Weights = "area") -> xr.DataArray:
    """Mean of ``da`` over ``dim`` with ``weights``, skipping NaN."""
    w = _weights(da, weights)
    return da.mean(dim) if w is None else da.weighted(w.fillna(0)).mean(dim)


def mse(pred: xr.DataArray, truth: xr.DataArray, dim: Dims = None, weights: Weights = "area") -> xr.DataArray:
    """Weighted mean squared error over ``dim``."""
    return weighted_mean((pred - truth) ** 2, dim, _weights(truth, weights))


def rmse(pred: xr.DataArray, truth: xr.DataArray, dim: Dims = None, weights: Weights = "area") -> xr.DataArray:
    """Weighted root mean squared error over ``dim`` (every time and grid cell by default)."""
    return np.sqrt(mse(pred, truth, dim, weights))


def mae(pred: xr.DataArray, truth: xr.DataArray, dim: Dims = None, weights: Weights = "area") -> xr.DataArray:
    """Weighted mean absolute error over ``dim``."""
    return weighted_mean(abs(pred - truth), dim, _weights(truth, weights))


def bias(pred: xr.DataArray, truth: xr.DataArray, dim: Dims = None, weights: Weights = "area") -> xr.DataArray:
    """Weighted mean of prediction minus truth over ``dim``."""
    return weighted_mean(pred - truth, dim, _weights(truth, weights))


def r2(pred: xr.DataArray, truth: xr.DataArray, dim: Dims = None, weights: Weights = "area") -> xr.DataArray:
    """Weighted coefficient of determination 1 - SS_res / SS_tot over ``dim`` (NaN where truth is constant)."""
    w = _weights(truth, weights)
    ss_res = weighted_mean((pred - truth) ** 2, dim, w)
    ss_tot = weighted_mean((truth - weighted_mean(truth, dim, w)) ** 2, dim, w)
    return (1.0 - ss_res / ss_tot).where(ss_tot > 0)


def global_mean(da: xr.DataArray, weights: Weights = "area") -> xr.DataArray:
    """Area-weighted mean over the two horizontal dims (lat, lon) or (y, x)."""
    return weighted_mean(da, spatial_dims(da), weights)


def global_std(da: xr.DataArray, weights: Weights = "area") -> xr.DataArray:
    """Area-weighted spatial standard deviation over the two horizontal dims."""
    w = _weights(da, weights)
    dims = spatial_dims(da)
    return da.std(dims) if w is None else da.weighted(w).std(dims)


def nrmse(pred: xr.DataArray, truth: xr.DataArray, time_dim: str = "time", weights: Weights = "area") -> dict[str, float]:
    """ClimateBench's spatial, global and total NRMSE over the ``time_dim`` values given (e.g. 2080-2100)."""
    w = _weights(truth, weights)
    norm = abs(float(global_mean(truth, w).mean(time_dim)))
    spatial = float(rmse(pred.mean(time_dim), truth.mean(time_dim), weights=w)) / norm
    glob = float(np.sqrt(((global_mean(pred, w) - global_mean(truth, w)) ** 2).mean(time_dim))) / norm
    return {"nrmse_spatial": spatial, "nrmse_global": glob, "nrmse_total": spatial + 5.0 * glob}
