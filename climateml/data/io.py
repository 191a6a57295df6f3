"""Opening and writing NetCDF / Zarr, and checking what was read, with errors that name file and variable."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import xarray as xr

from climateml.errors import DataError  # noqa: F401  (re-exported: climateml.data.io.DataError)
from climateml.grid import coord_mismatch
from climateml.writers import remove_stale_temporaries, temp_prefix
from climateml.writers import write_dataset  # noqa: F401  (re-exported for the readers and generators)

SUFFIXES = (".nc", ".zarr")
#: CF flag attributes of ClimateNet's ``LABELS`` (0 background, 1 TC, 2 AR): one definition for the reader, the
#: sample-data generator and the heuristic baseline (here, so that neither of the latter imports Lightning)
FLAG_ATTRS = {"flag_values": np.array([0, 1, 2], dtype=np.int64),
              "flag_meanings": "background tropical_cyclone atmospheric_river"}

# xarray's own lock around HDF5 calls: netCDF4/HDF5 is not thread-safe, so our direct netCDF4 reads and xarray's
# take turns. Not re-entrant: take it around netCDF4 calls only, never around an xarray open. An xarray without it
# fails here, loudly (a lock of our own would not be shared with xarray's reads).
from xarray.backends.locks import HDF5_LOCK  # noqa: E402


def open_dataset(path: str | Path) -> xr.Dataset:
    """Open a NetCDF file or Zarr store lazily; raise DataError if it is missing or unreadable."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes); regenerate or download it again")
    try:
        if path.suffix == ".zarr" or path.is_dir():
            return xr.open_zarr(path, consolidated=None)
        return xr.open_dataset(path)
    except Exception as err:  # netCDF4, HDF5 and zarr raise many different types for a damaged file
        reason = (str(err).strip().splitlines() or [""])[0][:120]
        raise DataError(f"{path}: cannot be read as NetCDF or Zarr, the file looks corrupt or truncated "
                        f"({type(err).__name__}: {reason}); regenerate or download it again") from err


def standardize(ds: xr.Dataset) -> xr.Dataset:
    """Give a ClimateBench-style dataset one naming: lat/lon, integer years on time, no stray quantile."""
    ds = ds.rename({k: v for k, v in (("latitude", "lat"), ("longitude", "lon")) if k in ds.dims or k in ds.coords})
    if "quantile" in ds.coords or "quantile" in ds.data_vars:
        ds = ds.drop_vars("quantile")
    if "time" in ds.coords:
        ds = ds.assign_coords(time=years_of(ds["time"]))
    return to_standard_grid(ds)


def to_standard_grid(ds: xr.Dataset) -> xr.Dataset:
    """Longitudes on 0..360 ascending and latitudes ascending, whatever convention the file uses
    (-180..180, a window starting anywhere, north to south)."""
    if "lon" in ds.dims and ds.sizes["lon"] > 0:
        lon = np.asarray(ds["lon"].values, dtype=float)
        if lon.min() < 0 or lon.max() >= 360.0 or np.any(np.diff(lon) <= 0):
            ds = ds.assign_coords(lon=(ds["lon"] % 360.0).assign_attrs(ds["lon"].attrs)).sortby("lon")
    if "lat" in ds.dims and ds.sizes["lat"] > 1 and float(ds["lat"][0]) > float(ds["lat"][-1]):
        ds = ds.sortby("lat")
    return ds


def grid_difference(a: xr.DataArray | xr.Dataset, b: xr.DataArray | xr.Dataset, dims=("lat", "lon")) -> str | None:
    """None if ``a`` and ``b`` share the grid ``dims`` (within :data:`climateml.grid.GRID_TOLERANCE`), else a short
    phrase saying which coordinate differs and how."""
    for d in dims:
        if d not in a.dims or d not in b.dims:
            missing = "first" if d not in a.dims else "second"
            return f"{d} is missing in the {missing}"
        va, vb = np.asarray(a[d].values, float), np.asarray(b[d].values, float)
        if len(va) != len(vb):
            return f"{d} has {len(va)} points vs {len(vb)}"
        i = coord_mismatch(va, vb)
        if i is not None:
            return (f"{d} values differ: {d}[{i}] = {va[i]:g} vs {vb[i]:g} "
                    f"(ranges {va.min():g}..{va.max():g} vs {vb.min():g}..{vb.max():g})")
    return None


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


def describe_folder(folder: str | Path, limit: int = 4) -> str:
    """What a folder holds, counted by kind, most first: "39 *.hdf files, 2 folders"; hidden entries left out."""
    counts: dict[str, int] = {}
    for p in Path(folder).iterdir():
        if not p.name.startswith("."):
            kind = "folder" if p.is_dir() and not p.suffix else f"*{p.suffix} file" if p.suffix else "file without a suffix"
            counts[kind] = counts.get(kind, 0) + 1
    kinds = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = [f"{n} {kind.replace(' file', ' files') if n > 1 and 'file' in kind else kind + ('s' if n > 1 else '')}"
             for kind, n in kinds[:limit]]
    if len(kinds) > limit:
        shown.append(f"{sum(n for _, n in kinds[limit:])} other entries")
    return ", ".join(shown) or "nothing"


def may_write_sample_data(folder: str | Path, patterns: tuple[str, ...], layout: str, option: str) -> bool:
    """Whether ``synthesize_if_missing`` may write sample data of ``layout`` into ``folder``; the one rule for
    every task, so sample data never lands among a user's files.

    True when ``folder`` does not exist or is empty (hidden entries such as ``.gitkeep`` do not count): the
    generator writes there. False when it holds an entry matching one of ``patterns`` (the file-name globs the
    layout's reader reads, declared once per layout, e.g. ``("*.nc", "*.zarr")``): the data is there and is read,
    nothing is written. Otherwise the folder holds something else (another format, another data set): a
    DataError that says what it found (``39 *.hdf files``), and nothing is written. ``option`` is the config
    option that names the folder, for the message.
    """
    from fnmatch import fnmatch

    folder = Path(folder)
    if not folder.exists():
        return True
    if not folder.is_dir():
        raise DataError(f"{folder}: {option} names a file, expected a folder of {layout} files "
                        f"({', '.join(patterns)})")
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if not entries:
        return True
    if any(fnmatch(p.name, pattern) for p in entries for pattern in patterns):
        return False
    raise DataError(f"{folder}: holds {describe_folder(folder)} and no {layout} files ({', '.join(patterns)}); is the "
                    f"format supported? Sample data is only written into a folder that does not exist or is empty: "
                    f"point {option} at your {layout} files, or at an empty folder, or set data.synthesize_if_missing "
                    f"false")


@contextmanager
def sample_data_folder(folder: str | Path, patterns: tuple[str, ...], layout: str, option: str) -> Iterator[Path | None]:
    """Where ``synthesize_if_missing`` writes sample data of ``layout``, once, however many processes ask at once.

    Yields None when nothing is to be written (:func:`may_write_sample_data`: the folder holds the layout's
    files), else a temporary folder beside ``folder`` to write into: at the end of the ``with`` block it becomes
    ``folder`` by one rename (the hidden entries an empty ``folder`` held, e.g. ``.gitkeep``, are kept), so a
    reader never sees half the files, and a failed or killed write leaves nothing at ``folder`` (the temporary
    folder a killed write left beside it is removed by the next write). Processes that
    start at once (every DDP rank's ``prepare_data``, several jobs on one data folder) take turns on a lock on
    the parent folder; the one that comes second finds the files there and writes nothing. Where the lock does
    not hold (some network filesystems), the rename still does: the slower writer discards its copy.
    """
    import fcntl

    folder = Path(folder)
    if not may_write_sample_data(folder, patterns, layout, option):
        yield None
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(folder.parent, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not may_write_sample_data(folder, patterns, layout, option):  # another process wrote it meanwhile
            yield None
            return
        remove_stale_temporaries(folder)  # what a killed write left (its process is gone)
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(folder), dir=folder.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # a folder as mkdir makes it (mkdtemp's is private)
        try:
            yield tmp
            if folder.exists():  # empty but for hidden entries: they move along, then the folder goes
                for kept in folder.iterdir():
                    os.replace(kept, tmp / kept.name)
                folder.rmdir()
            try:
                os.rename(tmp, folder)
            except OSError:
                if may_write_sample_data(folder, patterns, layout, option):
                    raise
                # another writer got there first (no lock across machines): its files stand
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        os.close(lock)  # releases the lock
