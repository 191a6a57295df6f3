"""The one place that writes NetCDF / Zarr: CF metadata on known coordinates, and atomic writes.

A write goes to a temporary file beside the target, is flushed to disk, and is renamed over it only when
complete (:func:`atomic_path`), so a failed or killed write never leaves a truncated file where a good one
was. The same helper writes metrics.json (:func:`write_text`) and checkpoints
(:class:`climateml.callbacks.AtomicCheckpointIO`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

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
            if ds[name].dims != (name,):  # an auxiliary coordinate (2-d lat of a projected grid): no axis in CF
                extra = {k: v for k, v in extra.items() if k != "axis"}
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


def temp_prefix(path: Path) -> str:
    """Prefix of the temporary folders of writes to ``path``: hidden, naming the host and process that wrote."""
    return f".{path.name}.{socket.gethostname().split('.')[0]}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> None:
    """Delete what killed writes to ``path`` left beside it (temporary folders of dead processes of this host)."""
    path = Path(path)
    host = socket.gethostname().split(".")[0]
    if not path.parent.is_dir():
        return
    for entry in path.parent.glob(f".{path.name}.{host}.*"):
        pid = entry.name[len(f".{path.name}.{host}."):].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            if (entry / "previous").exists() and not path.exists():  # killed between the two renames of a folder
                os.replace(entry / "previous", path)
            shutil.rmtree(entry, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync(path: Path) -> None:
    """Flush a file (or every file of a folder) to disk, so a rename publishes complete data."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if path.is_dir():
        _fsync_dir(path)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write instead of ``path``; it replaces ``path`` only when the with-block completes.

    The temporary lies in a hidden folder beside ``path`` (same filesystem, so the rename is atomic) and is
    flushed to disk first. If the block raises, or the process is killed, ``path`` keeps its old content;
    what a killed write left is removed by the next write to ``path``. Works for files and for folders
    (a Zarr store: the old folder is moved aside, then the new one moved in).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp_dir = Path(tempfile.mkdtemp(prefix=temp_prefix(path), dir=path.parent))
    tmp = tmp_dir / path.name
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{tmp}: nothing was written")
        _fsync(tmp)
        if tmp.is_dir():
            old = tmp_dir / "previous"
            if path.exists():
                os.replace(path, old)  # a directory cannot be replaced in one step: move the old one aside first
            try:
                os.replace(tmp, path)
            except BaseException:
                if old.exists():
                    os.replace(old, path)
                raise
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself reaches the disk
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_dataset(ds: xr.Dataset, path: str | Path) -> Path:
    """Write NetCDF (.nc) or Zarr (.zarr) atomically: a failed or killed write leaves any existing file untouched."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".zarr":
            ds.to_zarr(tmp, mode="w", consolidated=True)
        else:
            ds.to_netcdf(tmp)
    return path


def write_text(text: str, path: str | Path) -> Path:
    """Write a text file (e.g. metrics.json) atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def write_cf(ds: xr.Dataset, path: str | Path, title: str = "", **attrs) -> Path:
    """CF attributes (:func:`cf_dataset`) then an atomic write: how every prediction file is written."""
    return write_dataset(cf_dataset(ds, title=title, **attrs), path)


# ---- predictions written batch by batch (streaming evaluation, climateml predict) ----

def synchronous():
    """Dask's synchronous scheduler: one chunk (one batch) in memory at a time, and no thread pool (a pool
    inherited over a fork would never answer)."""
    import dask

    return dask.config.set(scheduler="synchronous")


class PredictionParts:
    """Each rank's predictions, appended batch by batch along ``time`` to one Zarr store per group
    (``<folder>/<group>.rank<r>.zarr``); read back lazily (:meth:`open`) and merged into one NetCDF (:meth:`merge`).

    A variable without a ``time`` dim (``lead_time``, the grid, 2-d lat / lon) is written with the first batch
    only. Each rank writes only its own stores, so ranks never write the same file.
    """

    def __init__(self, folder: str | Path, rank: int = 0):
        self.folder = Path(folder)
        self.rank = int(rank)
        self.written: set[str] = set()

    def _store(self, group: str, rank: int) -> Path:
        return self.folder / f"{group}.rank{rank}.zarr"

    def clear(self) -> None:
        """Remove what an earlier (e.g. killed) run left (rank 0; the caller makes the other ranks wait for it)."""
        if self.rank == 0 and self.folder.exists():
            shutil.rmtree(self.folder)

    def append(self, group: str, ds: xr.Dataset) -> None:
        store = self._store(group, self.rank)
        ds = ds.copy()
        for v in ds.variables.values():
            v.encoding = {}
        if group not in self.written:
            store.parent.mkdir(parents=True, exist_ok=True)
            ds.to_zarr(store, mode="w", zarr_format=2, consolidated=False)
            self.written.add(group)
        else:
            fixed = [n for n in ds.variables if "time" not in ds[n].dims]
            ds.drop_vars(fixed).to_zarr(store, append_dim="time", zarr_format=2, consolidated=False)

    def groups(self) -> list[str]:
        return sorted({p.name.rsplit(".rank", 1)[0] for p in self.folder.glob("*.rank*.zarr")})

    def open(self, group: str) -> xr.Dataset:
        """Every rank's predictions of ``group``, lazily (dask, one chunk per batch), in ``time`` order."""
        stores = sorted(self.folder.glob(f"{group}.rank*.zarr"))
        if not stores:
            raise FileNotFoundError(f"{self.folder}: no predictions of {group!r} were written")
        parts = [xr.open_zarr(s, consolidated=False) for s in stores]
        if len(parts) == 1:
            return parts[0]
        merged = xr.concat(parts, dim="time", data_vars="minimal", coords="minimal", compat="override",
                           join="override")
        return merged.sortby("time")

    def merge(self, name: str, path: Path, title: str, **attrs) -> Path:
        """Write the predictions of group ``name`` to one CF NetCDF ``path`` (atomically), chunk by chunk from the parts."""
        with synchronous():
            return write_cf(self.open(name), path, title=title, **attrs)

    def remove(self) -> None:
        """Remove the parts (rank 0, once every rank is done with them: the caller's to ensure)."""
        if self.rank == 0:
            shutil.rmtree(self.folder, ignore_errors=True)
