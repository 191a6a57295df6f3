"""A radar frame file as operational archives write one, for the radar tests: one CF NetCDF file per frame,
a scalar ``valid_time``, y descending."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr


def radar_frame(path: Path, valid: str, values: np.ndarray | None = None, x: np.ndarray | None = None,
                ny: int = 2, units: str = "kg m-2", var: str = "precipitation_amount",
                extra_dim: bool = False) -> Path:
    """Write one frame valid at ``valid`` to ``path``: ``values`` (y, x) (default ones on ``ny`` rows and
    ``x``'s columns, x default 0, 1, 2), y descending; ``extra_dim`` puts a ``level`` dim in front."""
    x = np.arange(3.0) if x is None else x
    values = np.ones((ny, x.size), np.float32) if values is None else values
    dims = ("y", "x")
    if extra_dim:
        values, dims = values[None], ("level", "y", "x")
    y = np.arange(values.shape[-2], dtype=float)[::-1]
    ds = xr.Dataset({var: (dims, values, {"units": units}), "valid_time": ((), np.datetime64(valid, "ns"))},
                    coords={"x": x, "y": y})
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(path)
    return path
