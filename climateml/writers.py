"""The one place that writes NetCDF / Zarr: CF metadata on known coordinates, and atomic writes.

A write goes to a temporary file beside the target and is renamed over it only when complete, so a
failed or killed write never leaves a truncated file where a good one was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr

CONVENTIONS = "CF-1.8"

# CF attributes of the coordinates the package writes; units of time-like coordinates are left to xarray's encoder
COORD_ATTRS = {
    "lat": {"standard_name": "latitude", "long_name": "latitude", "units": "degrees_north", "axis": "Y"},
    "lon": {"standard_name": "longitude", "long_name": "longitude", "units": "degrees_east", "axis": "X"},
    "y": {"standard_name": "projection_y_coordinate", "long_name": "y coordinate of projection", "units": "km",
          "axis": "Y"},
    "x": {"standard_name": "projection_x_coordinate", "long_name": "x coordinate of projection", "units": "km",
          "axis": "X"},
    "member": {"long_name": "ensemble member"},
    "model": {"long_name": "model or baseline that made the prediction"},
    "class": {"long_name": "class"},
}


def cf_dataset(ds: xr.Dataset, title: str = "", source: str = "climateml", **attrs) -> xr.Dataset:
    """A copy of ``ds`` with CF attributes on its known coordinates and global attributes set.

    Integer ``time`` coordinates are years (``units: year``); datetime ones are encoded by xarray with
    CF units. A ``lead_time`` of timedelta values is written in minutes.
    """
    ds = ds.copy()
    for name, extra in COORD_ATTRS.items():
        if name in ds.coords:
            keep = ("units",) if name in ("x", "y") else ()  # projected coordinates keep the units they came with
            ds[name].attrs = {**extra, **{k: v for k, v in ds[name].attrs.items() if k not in extra or k in keep}}
    if "time" in ds.coords:
        ds["time"].attrs.setdefault("standard_name", "time")
        if np.issubdtype(ds["time"].dtype, np.integer):
            ds["time"].attrs.update(long_name="year", units="year")
    if "lead_time" in ds.coords:
        ds["lead_time"].attrs.update(long_name="lead time", standard_name="forecast_period")
        if np.issubdtype(ds["lead_time"].dtype, np.timedelta64):
            ds["lead_time"].encoding["units"] = "minutes"
    ds.attrs.update(Conventions=CONVENTIONS, source=source, **({"title": title} if title else {}), **attrs)
    return ds


def write_dataset(ds: xr.Dataset, path: str | Path) -> Path:
    """Write NetCDF (.nc) or Zarr (.zarr) atomically: a failed write leaves any existing file untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        if path.suffix == ".zarr":
            ds.to_zarr(tmp, mode="w", consolidated=True)
            old = tmp.parent / "previous"
            if path.exists():
                os.replace(path, old)  # a directory cannot be replaced in one step: move the old store aside first
            try:
                os.replace(tmp, path)
            except BaseException:
                if old.exists():
                    os.replace(old, path)
                raise
        else:
            ds.to_netcdf(tmp)
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)
    return path


def write_text(text: str, path: str | Path) -> Path:
    """Write a text file (e.g. metrics.json) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_cf(ds: xr.Dataset, path: str | Path, title: str = "", **attrs) -> Path:
    """CF attributes (:func:`cf_dataset`) then an atomic write: how every prediction file is written."""
    return write_dataset(cf_dataset(ds, title=title, **attrs), path)
