"""Small pure functions for scoring fields on a latitude-longitude grid (xarray in, numbers out).

NRMSE follows ClimateBench (Watson-Parris et al. 2022), normalised by the absolute area-weighted
mean of the truth over the evaluation period:

    nrmse_spatial = RMSE_w(<truth>_t, <pred>_t) / |<truth>_{w,t}|       (time-mean maps)
    nrmse_global  = sqrt(mean_t(<truth>_w - <pred>_w)^2) / |<truth>_{w,t}|  (global-mean series)
    nrmse_total   = nrmse_spatial + 5 nrmse_global
"""

from __future__ import annotations

import numpy as np
import xarray as xr

EARTH_RADIUS_M = 6.371e6


def lat_weights(lat) -> np.ndarray:
    """cos(latitude) weights, never negative (the poles of a pole-inclusive grid get 0)."""
    return np.clip(np.cos(np.deg2rad(np.asarray(lat, dtype=float))), 0.0, None)


def cell_area(lat, lon) -> np.ndarray:
    """Area [m2] of each cell of a regular lat-lon grid given its centres (lat, lon) in degrees."""
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    dlon = np.deg2rad(360.0 / len(lon))
    if len(lat) > 1:
        mid = (lat[1:] + lat[:-1]) / 2.0
        edges = np.concatenate([[max(-90.0, lat[0] - (mid[0] - lat[0]))], mid, [min(90.0, lat[-1] + (lat[-1] - mid[-1]))]])
    else:
        edges = np.array([-90.0, 90.0])
    band = np.abs(np.diff(np.sin(np.deg2rad(np.clip(edges, -90, 90)))))
    return np.broadcast_to((EARTH_RADIUS_M**2 * dlon * band)[:, None], (len(lat), len(lon))).copy()


def _weights(da: xr.DataArray) -> xr.DataArray:
    w = xr.DataArray(lat_weights(da["lat"]), coords={"lat": da["lat"]}, dims="lat")
    return w if float(w.sum()) > 0 else xr.ones_like(w)


def global_mean(da: xr.DataArray) -> xr.DataArray:
    """Area-weighted (cos lat) mean over lat and lon."""
    return da.weighted(_weights(da)).mean(("lat", "lon"))


def global_std(da: xr.DataArray) -> xr.DataArray:
    """Area-weighted spatial standard deviation over lat and lon."""
    return da.weighted(_weights(da)).std(("lat", "lon"))


def rmse(pred: xr.DataArray, truth: xr.DataArray) -> float:
    """Area-weighted RMSE over every time and grid cell."""
    return float(np.sqrt(((pred - truth) ** 2).weighted(_weights(truth)).mean()))


def mae(pred: xr.DataArray, truth: xr.DataArray) -> float:
    """Area-weighted mean absolute error."""
    return float(abs(pred - truth).weighted(_weights(truth)).mean())


def bias(pred: xr.DataArray, truth: xr.DataArray) -> float:
    """Area-weighted mean of prediction minus truth."""
    return float((pred - truth).weighted(_weights(truth)).mean())


def r2(pred: xr.DataArray, truth: xr.DataArray) -> float:
    """Area-weighted coefficient of determination over all times and cells."""
    w = _weights(truth)
    ss_res = float(((pred - truth) ** 2).weighted(w).mean())
    ss_tot = float(((truth - truth.weighted(w).mean()) ** 2).weighted(w).mean())
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def nrmse(pred: xr.DataArray, truth: xr.DataArray) -> dict[str, float]:
    """ClimateBench's spatial, global and total NRMSE over the years given (e.g. 2080-2100)."""
    norm = abs(float(global_mean(truth).mean("time")))
    spatial = rmse(pred.mean("time"), truth.mean("time")) / norm
    glob = float(np.sqrt(((global_mean(pred) - global_mean(truth)) ** 2).mean("time"))) / norm
    return {"nrmse_spatial": spatial, "nrmse_global": glob, "nrmse_total": spatial + 5.0 * glob}
