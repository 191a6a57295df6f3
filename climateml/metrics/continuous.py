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


def r2(pred: xr.DataArray, truth: xr.DataArray, dim: Dims = None, weights: Weights = "area",
       sample_dim: str | None = "time") -> xr.DataArray:
    """Weighted coefficient of determination over ``dim``: 1 - SSE / SST, on the evaluation set given.

    SSE = sum of w (pred - truth)^2 and SST = sum of w (truth - clim)^2 over ``dim``, where ``clim`` is the
    truth's (weighted) mean over ``sample_dim`` at each grid cell: the evaluation set's own climatology of
    that cell, so 0 means "no better than each cell's mean over the evaluation period", 1 perfect, below 0
    worse. The spatial pattern of the mean field earns nothing (a grand mean over every dim would credit a
    model for it). With ``weights=None`` and every dim reduced this is scikit-learn's
    ``r2_score(truth, pred, multioutput="variance_weighted")`` on a (samples, cells) table; the default
    weights are cos(lat) (see the module). ``sample_dim=None`` takes ``clim`` as the mean over ``dim``
    instead. A cell where either argument is NaN is left out of both sums; NaN where SST is 0.
    """
    if sample_dim is not None and sample_dim not in truth.dims:
        raise ValueError(f"r2: sample_dim {sample_dim!r} is not a dim of the truth {tuple(truth.dims)}; "
                         "name the dim the climatology is taken over, or pass sample_dim=None")
    w = _weights(truth, weights)
    truth = truth.where(pred.notnull())
    if sample_dim is None:
        clim = weighted_mean(truth, dim, w)
    else:  # weights constant along the samples (area) leave each cell's mean unweighted
        clim = weighted_mean(truth, sample_dim, w if w is not None and sample_dim in w.dims else None)
    ss_res = weighted_mean((pred - truth) ** 2, dim, w)
    ss_tot = weighted_mean((truth - clim) ** 2, dim, w)
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
