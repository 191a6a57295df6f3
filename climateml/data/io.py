"""Opening and writing NetCDF / Zarr, and checking what was read, with errors that name file and variable."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr

SUFFIXES = (".nc", ".zarr")


class DataError(ValueError):
    """Bad input data: the message names the file, the variable and what was expected."""


def open_dataset(path: str | Path) -> xr.Dataset:
    """Open a NetCDF file or Zarr store lazily; raise DataError if it is missing or unreadable."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        if path.suffix == ".zarr" or path.is_dir():
            return xr.open_zarr(path, consolidated=None)
        return xr.open_dataset(path)
    except Exception as err:  # netCDF4, HDF5 and zarr raise many different types for a damaged file
        raise DataError(f"{path}: cannot be read as NetCDF or Zarr, the file looks corrupt or truncated "
                        f"({type(err).__name__}: {err}); regenerate or download it again") from err


def standardize(ds: xr.Dataset) -> xr.Dataset:
    """Give a ClimateBench-style dataset one naming: lat/lon, integer years on time, no stray quantile."""
    ds = ds.rename({k: v for k, v in (("latitude", "lat"), ("longitude", "lon")) if k in ds.dims or k in ds.coords})
    if "quantile" in ds.coords or "quantile" in ds.data_vars:
        ds = ds.drop_vars("quantile")
    if "time" in ds.coords:
        ds = ds.assign_coords(time=years_of(ds["time"]))
    return ds


def years_of(time: xr.DataArray) -> np.ndarray:
    """Integer years from integer, float, datetime64 or cftime time values."""
    values = time.values
    if np.issubdtype(values.dtype, np.datetime64):
        return values.astype("datetime64[Y]").astype(int) + 1970
    if values.dtype == object:
        return np.array([v.year for v in values])
    if np.issubdtype(values.dtype, np.floating):  # decimal years: 1850.5 is mid-1850
        return np.floor(values + 1e-6).astype(int)
    return values.astype(int)


def require_variable(ds: xr.Dataset, name: str, dims: tuple[str, ...], path: str | Path) -> xr.DataArray:
    """The variable ``name`` with exactly ``dims``, else a DataError naming file and variable."""
    if name not in ds.data_vars:
        raise DataError(f"{path}: variable {name!r} is missing; the file has {sorted(map(str, ds.data_vars))}")
    da = ds[name]
    if tuple(da.dims) != dims:
        if set(da.dims) == set(dims):
            return da.transpose(*dims)
        raise DataError(f"{path}: variable {name!r} has dims {tuple(da.dims)}, expected {dims}")
    return da


def require_finite(da: xr.DataArray, path: str | Path) -> None:
    """Raise DataError if ``da`` (already loaded) holds NaN or infinite values, saying where."""
    bad = ~np.isfinite(da.values)
    if bad.any():
        first = np.argwhere(bad)[0]
        where = ", ".join(f"{d}={da[d].values[i]}" if d in da.coords else f"{d}[{i}]" for d, i in zip(da.dims, first))
        raise DataError(f"{path}: variable {da.name!r} has {int(bad.sum())} NaN or infinite values (first at {where})")


def find_file(data_dir: str | Path, stem: str) -> Path:
    """``data_dir/stem.nc`` or ``data_dir/stem.zarr``; a DataError that lists what is there otherwise."""
    data_dir = Path(data_dir)
    for suffix in SUFFIXES:
        if (data_dir / f"{stem}{suffix}").exists():
            return data_dir / f"{stem}{suffix}"
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data directory does not exist (looking for {stem}.nc or {stem}.zarr)")
    present = sorted(p.name for p in data_dir.iterdir() if p.suffix in SUFFIXES)
    raise DataError(f"{data_dir}: no {stem}.nc or {stem}.zarr; found {present or 'no NetCDF/Zarr files'}")


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
