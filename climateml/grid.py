"""Grid geometry: cos-latitude weights, cell areas and regions, for lat/lon and projected x/y grids.

Weights follow one rule everywhere in the package: a field with a ``lat`` dimension is weighted by
cos(latitude) (proportional to cell area on a regular lat-lon grid); a field on a projected ``y``/``x``
grid (equal-area cells, as radar composites are) gets equal weights.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import xarray as xr

EARTH_RADIUS_M = 6.371e6

#: Two grids are one grid when each coordinate value agrees within GRID_TOLERANCE x the axis's grid spacing
#: (its smallest step). A fraction of the spacing holds for lat/lon in degrees and projected y/x in metres
#: alike: 2.5e-4 degrees (about 28 m) on a 0.25-degree grid, 2.5e-3 degrees on a 2.5-degree one, 1 m on a
#: 1 km radar grid, far above the rounding of coordinates stored as float32 and far below any real shift.
#: An axis of one point is compared within GRID_TOLERANCE of one unit (degree or metre).
GRID_TOLERANCE = 1e-3


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


def area_weights(obj: xr.DataArray | xr.Dataset) -> xr.DataArray | None:
    """cos(lat) weights on ``obj``'s ``lat`` coordinate, or None (equal weights) where it has no ``lat`` dim.

    A grid whose weights are all zero (a single cell at a pole) gets equal weights.
    """
    if "lat" not in obj.dims:
        return None
    w = xr.DataArray(lat_weights(obj["lat"]), coords={"lat": obj["lat"]}, dims="lat")
    return w if float(w.sum()) > 0 else xr.ones_like(w)


def flat_area_weights(lat, n_lon: int) -> np.ndarray:
    """cos(lat) weight of every cell of a (lat, lon) grid flattened lat-major, summing to 1."""
    w = np.broadcast_to(lat_weights(lat)[:, None], (len(np.atleast_1d(lat)), n_lon))
    w = w if w.sum() > 0 else np.ones_like(w)
    return (w / w.sum()).ravel()


def spatial_dims(obj: xr.DataArray | xr.Dataset, required: bool = True) -> tuple[str, str] | None:
    """The two horizontal dims of a field: ("lat", "lon") or ("y", "x").

    A field with neither pair is a ValueError, or gives None with ``required=False``.
    """
    for dims in (("lat", "lon"), ("y", "x")):
        if all(d in obj.dims for d in dims):
            return dims
    if not required:
        return None
    raise ValueError(f"no horizontal dims (lat, lon) or (y, x) among {tuple(obj.dims)}")


def coord_mismatch(a, b) -> int | None:
    """None if the coordinate values ``a`` and ``b`` (equal shapes) are the same within :data:`GRID_TOLERANCE`,
    else the flat index of the first value that differs (NaN always differs)."""
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"coordinates of {a.size} and {b.size} values cannot be compared value by value")
    steps = np.abs(np.diff(a))
    steps = steps[steps > 0]
    spacing = float(steps.min()) if steps.size else 1.0
    bad = ~(np.abs(a - b) <= GRID_TOLERANCE * spacing)
    return int(np.argmax(bad)) if bad.any() else None


def box_mask(obj: xr.DataArray | xr.Dataset, lat: Sequence[float] | None = None,
             lon: Sequence[float] | None = None) -> xr.DataArray:
    """Boolean (lat, lon) mask of a lat/lon box, bounds inclusive; lon bounds in either convention,
    a box with west > east wraps across the dateline / Greenwich (e.g. lon=(340, 20))."""
    lat_c, lon_c = obj["lat"], obj["lon"]
    inside_lat = xr.ones_like(lat_c, dtype=bool) if lat is None else (lat_c >= min(lat)) & (lat_c <= max(lat))
    if lon is None:
        inside_lon = xr.ones_like(lon_c, dtype=bool)
    else:
        west, east = (float(v) % 360.0 for v in lon)
        lon360 = lon_c % 360.0
        inside_lon = (lon360 >= west) & (lon360 <= east) if west <= east else (lon360 >= west) | (lon360 <= east)
    return inside_lat & inside_lon
