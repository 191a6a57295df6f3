"""Regions on a grid as boolean masks: one spelling for targets, relevance mass, cue ablation and callbacks.

A region is given as

- ``None``: every cell;
- a mapping, e.g. ``{"lat": (30, 60), "lon": (340, 40)}`` (a lat/lon box through :func:`climateml.grid.box_mask`,
  bounds inclusive, longitudes in either convention, west > east wraps), ``{"y": (-50, 50), "x": (0, 120)}``
  (a box on a projected grid, in the coordinates' units, e.g. km), and/or selections on other dims by
  coordinate value, e.g. ``{"variable": "station_density"}`` or ``{"lead_time": [0, 1]}`` (all keys ANDed);
- a boolean ``xarray.DataArray`` whose dims are a subset of the grid's (a land mask, a per-sample
  segmentation mask with the sample dim, a (channel, lat, lon) cue mask ...);
- a boolean numpy array shaped like the grid's two horizontal dims.

A region that selects no cell is a :class:`~climateml.errors.ConfigError` naming the region and the grid's extent.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import xarray as xr

from climateml.errors import ConfigError, DataError
from climateml.grid import box_mask, spatial_dims

BOX_DIMS = ("lat", "lon", "y", "x")


def mask_array(mask: xr.DataArray, dims: Sequence[str], shape: tuple[int, ...], dtype: Any = bool) -> np.ndarray:
    """``mask`` as a numpy array (a new one, of ``dtype``) on ``dims`` (in that order) of ``shape``,
    broadcasting the dims it lacks."""
    present = [d for d in dims if d in mask.dims]
    arr = mask.transpose(*present).values if present else np.asarray(mask.values)
    arr = arr.reshape([mask.sizes[d] if d in mask.dims else 1 for d in dims])
    return np.broadcast_to(arr, shape).astype(dtype)


def _extent(obj, dims) -> str:
    parts = []
    for d in dims:
        if d in obj.coords and obj[d].size:
            v = np.asarray(obj[d].values)
            parts.append(f"{d} {v.min():g}..{v.max():g}" if np.issubdtype(v.dtype, np.number) else f"{d} {list(v)}")
    return ", ".join(parts)


def describe_region(region: Any) -> str:
    """A short human-readable name of a region spec (for attrs, logs and errors)."""
    if region is None:
        return "all cells"
    if isinstance(region, Mapping):
        parts = []
        for k, v in region.items():
            if k in BOX_DIMS and isinstance(v, (tuple, list)) and len(v) == 2:
                parts.append(f"{k} {float(v[0]):g}..{float(v[1]):g}")
            else:
                parts.append(f"{k}={v}")
        return ", ".join(parts)
    if isinstance(region, xr.DataArray):
        return f"mask {region.name or ''}({', '.join(map(str, region.dims))}) with {int(region.sum())} cells".replace("  ", " ")
    return f"mask of shape {tuple(np.shape(region))}"


def region_mask(obj: xr.DataArray | xr.Dataset, region: Any, what: str = "region") -> xr.DataArray:
    """Boolean mask of ``region`` on ``obj``'s grid, with dims a subset of ``obj``'s (see the module docstring).

    Args:
        obj: the field (or any object carrying the grid's coordinates) the region lives on.
        region: None, a mapping, a boolean DataArray or a boolean numpy array of the horizontal shape.
        what: the word used in error messages ("target region", "cue region" ...).
    """
    hdims = spatial_dims(obj, required=False)
    if region is None:
        if hdims is None:
            return xr.DataArray(True)
        return xr.DataArray(np.ones([obj.sizes[d] for d in hdims], bool), coords={d: obj[d] for d in hdims if d in obj.coords},
                            dims=hdims)
    if isinstance(region, xr.DataArray):
        extra = [d for d in region.dims if d not in obj.dims]
        if extra:
            raise DataError(f"{what} mask has dims {tuple(region.dims)}, but {extra} are not dims of the field "
                            f"{tuple(obj.dims)}")
        for d in region.dims:
            if region.sizes[d] != obj.sizes[d]:
                raise DataError(f"{what} mask has {region.sizes[d]} values along {d!r}, the field has {obj.sizes[d]}")
            if d in region.coords and d in obj.coords and not np.array_equal(np.asarray(region[d].values),
                                                                              np.asarray(obj[d].values)):
                raise DataError(f"{what} mask's {d!r} coordinate does not match the field's ({_extent(obj, [d])})")
        mask = region.astype(bool)
        mask = mask.assign_coords({d: obj[d] for d in mask.dims if d in obj.coords})
    elif isinstance(region, Mapping):
        mask = xr.DataArray(True)
        box = {k: v for k, v in region.items() if k in ("lat", "lon")}
        if box:
            if not all(d in obj.coords for d in ("lat", "lon")):
                raise ConfigError(f"{what} {describe_region(region)} is a lat/lon box, but the field has dims "
                                  f"{tuple(obj.dims)} (no lat/lon coordinates)")
            mask = mask & box_mask(obj, lat=box.get("lat"), lon=box.get("lon"))
        for key, value in region.items():
            if key in ("lat", "lon"):
                continue
            if key not in obj.dims:
                raise ConfigError(f"{what} {describe_region(region)}: {key!r} is not a dim of the field {tuple(obj.dims)}")
            coord = obj[key]
            if key in ("y", "x"):
                lo, hi = sorted(float(v) for v in value)
                mask = mask & ((coord >= lo) & (coord <= hi))
            else:
                values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
                missing = [v for v in values if v not in set(np.asarray(coord.values).tolist())]
                if missing:
                    raise ConfigError(f"{what} {describe_region(region)}: {missing} not in the field's {key!r} "
                                      f"coordinate {list(np.asarray(coord.values))}")
                mask = mask & coord.isin(values)
    else:
        arr = np.asarray(region)
        if hdims is None:
            raise ConfigError(f"{what} given as an array needs a field with (lat, lon) or (y, x) dims; "
                              f"the field has {tuple(obj.dims)}")
        shape = tuple(obj.sizes[d] for d in hdims)
        if arr.shape != shape:
            raise DataError(f"{what} mask has shape {arr.shape}, the field's {hdims} grid is {shape}")
        mask = xr.DataArray(arr.astype(bool), coords={d: obj[d] for d in hdims if d in obj.coords}, dims=hdims)
    if not bool(mask.any()):
        raise ConfigError(f"{what} {describe_region(region)} contains no cell of the grid "
                          f"({_extent(obj, [d for d in obj.dims if d in BOX_DIMS] or list(obj.dims))})")
    return mask
