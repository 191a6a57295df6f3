"""Precipitation verification on xarray: contingency table, CSI / POD / FAR, fractions skill score.

Conventions (as pysteps): an event is ``value >= threshold`` (e.g. rain rate >= 1 mm/h); a point where
the prediction or the observation is NaN is excluded. Scores are ratios of counts accumulated over
``dim`` (default: all dims), not averages of per-field scores, and are NaN where the ratio is 0 / 0.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

import numpy as np
import xarray as xr

TABLE = ("hits", "misses", "false_alarms", "correct_negatives")


def _dims(da: xr.DataArray, dim) -> list[Hashable]:
    if dim is None:
        return list(da.dims)
    return [dim] if isinstance(dim, str) else list(dim)


def contingency(pred: xr.DataArray, obs: xr.DataArray, threshold: float, dim=None) -> xr.Dataset:
    """Counts of hits, misses, false_alarms, correct_negatives (event: value >= threshold), summed over
    ``dim`` (default all), points where either input is NaN left out."""
    pred, obs = xr.align(pred, obs, join="exact")
    valid = pred.notnull() & obs.notnull()
    p, o = (pred >= threshold) & valid, (obs >= threshold) & valid
    dims = _dims(p, dim)
    table = {
        "hits": (p & o).sum(dims),
        "misses": (~p & o).sum(dims),
        "false_alarms": (p & ~o).sum(dims),
        "correct_negatives": (~p & ~o & valid).sum(dims),
    }
    return xr.Dataset(table, attrs={"threshold": threshold, "event": "value >= threshold"})


def _ratio(num: xr.DataArray, den: xr.DataArray) -> xr.DataArray:
    return (num / den.where(den > 0)).astype(float)


def csi_from_table(table: xr.Dataset) -> xr.DataArray:
    """Critical success index hits / (hits + misses + false_alarms); NaN with no event predicted or seen."""
    return _ratio(table["hits"], table["hits"] + table["misses"] + table["false_alarms"]).rename("csi")


def pod_from_table(table: xr.Dataset) -> xr.DataArray:
    """Probability of detection hits / (hits + misses); NaN with no observed event."""
    return _ratio(table["hits"], table["hits"] + table["misses"]).rename("pod")


def far_from_table(table: xr.Dataset) -> xr.DataArray:
    """False alarm ratio false_alarms / (hits + false_alarms); NaN with no predicted event."""
    return _ratio(table["false_alarms"], table["hits"] + table["false_alarms"]).rename("far")


def csi(pred: xr.DataArray, obs: xr.DataArray, threshold: float, dim=None) -> xr.DataArray:
    """Critical success index (threat score) over ``dim`` (default all); see :func:`csi_from_table`."""
    return csi_from_table(contingency(pred, obs, threshold, dim))


def pod(pred: xr.DataArray, obs: xr.DataArray, threshold: float, dim=None) -> xr.DataArray:
    """Probability of detection (hit rate) over ``dim``; see :func:`pod_from_table`."""
    return pod_from_table(contingency(pred, obs, threshold, dim))


def far(pred: xr.DataArray, obs: xr.DataArray, threshold: float, dim=None) -> xr.DataArray:
    """False alarm ratio over ``dim``; see :func:`far_from_table`."""
    return far_from_table(contingency(pred, obs, threshold, dim))


def _window_sums(a: np.ndarray, scale: int, boundary: str) -> np.ndarray:
    """Sums of ``a`` over square windows of side ``scale`` in the last two axes (summed-area table).

    ``boundary="constant"``: one window per grid cell, zeros outside the field, the window covering
    cells i - scale // 2 .. i + (scale - 1) // 2 (as scipy.ndimage.uniform_filter); ``"valid"``: only
    windows wholly inside the field."""
    if boundary == "constant":
        before, after = scale // 2, (scale - 1) // 2
        a = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(before, after), (before, after)])
    elif boundary != "valid":
        raise ValueError(f"boundary must be 'constant' or 'valid', got {boundary!r}")
    s = np.zeros(a.shape[:-2] + (a.shape[-2] + 1, a.shape[-1] + 1))
    s[..., 1:, 1:] = a.cumsum(-2).cumsum(-1)
    return s[..., scale:, scale:] - s[..., :-scale, scale:] - s[..., scale:, :-scale] + s[..., :-scale, :-scale]


def fss_components(pred: xr.DataArray, obs: xr.DataArray, threshold: float, scale: int,
                   spatial_dims: Sequence[str] = ("y", "x"), dim=None, boundary: str = "constant") -> xr.Dataset:
    """Sums of (Pf - Po)^2 (``mse``) and Pf^2 + Po^2 (``reference``) of the event fractions over windows,
    accumulated over the spatial dims and ``dim``, so that batches can be added before the ratio."""
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive whole number of grid cells, got {scale}")
    scale = int(scale)
    pred, obs = xr.align(pred, obs, join="exact")
    spatial = list(spatial_dims)
    for d in spatial:
        if d not in pred.dims:
            raise ValueError(f"spatial dim {d!r} not in {pred.dims}")
    if boundary == "valid" and any(pred.sizes[d] < scale for d in spatial):
        raise ValueError(f"scale {scale} exceeds the field {[pred.sizes[d] for d in spatial]} with boundary='valid'")

    def per_field(p: np.ndarray, o: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        valid = np.isfinite(p) & np.isfinite(o)
        area = float(scale * scale)
        fp = _window_sums(((p >= threshold) & valid).astype(float), scale, boundary) / area
        fo = _window_sums(((o >= threshold) & valid).astype(float), scale, boundary) / area
        centre = valid if boundary == "constant" else _window_sums(valid.astype(float), scale, boundary) == area
        mse = np.where(centre, (fp - fo) ** 2, 0.0).sum((-2, -1))
        ref = np.where(centre, fp**2 + fo**2, 0.0).sum((-2, -1))
        return mse, ref

    mse, ref = xr.apply_ufunc(per_field, pred, obs, input_core_dims=[spatial, spatial], output_core_dims=[[], []],
                              dask="parallelized", output_dtypes=[float, float])
    rest = [d for d in pred.dims if d not in spatial]
    dims = rest if dim is None else [d for d in _dims(pred, dim) if d not in spatial]
    return xr.Dataset({"mse": mse.sum(dims), "reference": ref.sum(dims)},
                      attrs={"threshold": threshold, "scale": scale, "event": "value >= threshold"})


def fss_from_components(components: xr.Dataset) -> xr.DataArray:
    """FSS = 1 - mse / reference; NaN where neither field has an event (0 / 0)."""
    return (1.0 - components["mse"] / components["reference"].where(components["reference"] > 0)).rename("fss")


def fss(pred: xr.DataArray, obs: xr.DataArray, threshold: float, scale: int, spatial_dims: Sequence[str] = ("y", "x"),
        dim=None, boundary: str = "constant") -> xr.DataArray:
    """Fractions skill score (Roberts & Lean 2008) for events ``value >= threshold`` in square
    neighbourhoods of ``scale`` x ``scale`` grid cells over ``spatial_dims``.

    The squared fraction differences and the reference are summed over the spatial dims and ``dim``
    (default: every other dim) before the ratio. ``boundary="constant"`` (default; as pysteps) centres a
    window on every grid cell and counts cells beyond the edge as non-events; ``"valid"`` keeps only
    windows inside the field (as ``scores.spatial.fss_2d`` without zero padding). NaN in either field:
    the cell is a non-event in both, and windows centred on it (``"valid"``: containing it) are left out.
    Unlike ``scores``, the result is NaN (not 0) when neither field has an event.
    """
    return fss_from_components(fss_components(pred, obs, threshold, scale, spatial_dims, dim, boundary))


def fss_scales_km(scales_km: Iterable[float], grid_spacing_km: float, odd: bool = True) -> list[int]:
    """Neighbourhood sizes in grid cells for sizes in km: the nearest whole number (the nearest odd
    number with ``odd``, so that windows are centred on a cell), at least 1."""
    cells = []
    for km in scales_km:
        n = km / grid_spacing_km
        n = 2 * int(np.floor((n - 1) / 2 + 0.5)) + 1 if odd else int(np.floor(n + 0.5))
        cells.append(max(1, n))
    return cells
