"""ClimateNet files: find them, and read fields, labels and the grid of one file, checked (errors name the file).

Files are named ``data-YYYY-MM-DD-01-1_N.nc``, where ``_N`` numbers alternative expert labellings of the same
timestep (same fields, different ``LABELS``). Fields are float32 on (time, lat, lon) with time of length 1 (a
string, not a date); ``LABELS`` is an integer map (0 background, 1 TC, 2 AR) on (lat, lon) or (time, lat, lon).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import xarray as xr

from climateml.data.io import HDF5_LOCK, DataError, grid_difference, open_dataset
from climateml.grid import coord_mismatch
from climateml.metrics.segmentation import CLASS_NAMES

FILE_PATTERN = re.compile(r"^data-(\d{4}-\d{2}-\d{2})-01-1_(\d+)\.nc$")
#: FILE_PATTERN as a glob: the files this layout reads; a folder holding none of them gets no sample data
FILE_PATTERNS = ("data-????-??-??-01-1_*.nc",)
LABEL_VAR = "LABELS"


@dataclass(frozen=True)
class Snapshot:
    """One date and its files, one per expert labelling (same fields, different LABELS)."""

    date: str
    files: tuple[Path, ...]


def find_snapshots(data_dir: str | Path) -> list[Snapshot]:
    """The snapshots in ``data_dir``, sorted by date; files not named like ClimateNet's are ignored."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return []
    by_date: dict[str, list[tuple[int, Path]]] = {}
    for p in data_dir.iterdir():
        m = FILE_PATTERN.match(p.name)
        if m:
            by_date.setdefault(m.group(1), []).append((int(m.group(2)), p))
    return [Snapshot(d, tuple(p for _, p in sorted(files))) for d, files in sorted(by_date.items())]


class _SnapshotFile:
    """One ClimateNet file opened for reading a few 2-d variables, with errors naming the file.

    Reads through the netCDF4 library directly: per sample this is several times faster than building an
    xarray Dataset (coordinate decoding and indexes are not needed to pull out a few arrays). A file that
    netCDF4 cannot open goes through :func:`climateml.data.io.open_dataset`, which reads Zarr or raises
    the package's DataError (missing, empty, corrupt file).

    netCDF4/HDF5 is not thread-safe, and HDF5 (2.2 as bundled with netCDF4 1.7.5) can crash when one file
    is open several times at once and the copies are closed and reopened in turn, even in one thread. So a
    file opened through netCDF4 holds :data:`climateml.data.io.HDF5_LOCK` (xarray's) from opening to closing:
    reads from several threads take turns file by file. Use it in a ``with`` block (the lock is released on
    leaving it), and open no other file inside it.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._nc = self._xr = None
        HDF5_LOCK.acquire()
        try:
            import netCDF4

            self._nc = netCDF4.Dataset(self.path, "r")
            self._nc.set_auto_mask(False)  # fill values stay as stored (NaN for xarray-written floats): checked below
        except Exception:
            if self._nc is not None:
                self._nc.close()
                self._nc = None
            HDF5_LOCK.release()  # xarray takes the lock itself
            self._xr = open_dataset(self.path)  # DataError naming the file if it cannot be read at all

    def __enter__(self) -> "_SnapshotFile":
        return self

    def __exit__(self, *exc) -> None:
        if self._nc is not None:
            try:
                self._nc.close()
            finally:
                self._nc = None
                HDF5_LOCK.release()
        elif self._xr is not None:
            self._xr.close()

    @property
    def variables(self) -> list[str]:
        if self._nc is not None:
            return [v for v in self._nc.variables if v not in self._nc.dimensions]
        return [str(v) for v in self._xr.data_vars]

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """(lat, lon) coordinate values [degrees]."""
        names = self._nc.variables if self._nc is not None else self._xr.coords
        for name in ("lat", "lon"):
            if name not in names:
                raise DataError(f"{self.path}: no {name!r} coordinate; ClimateNet files are on (time, lat, lon)")
        get = (lambda n: self._nc[n][:]) if self._nc is not None else (lambda n: self._xr[n].values)
        return np.asarray(get("lat"), float), np.asarray(get("lon"), float)

    def read2d(self, name: str, what: str = "variable") -> np.ndarray:
        """(lat, lon) values of ``name`` (its first time step if it has a time dimension)."""
        if self._nc is not None:
            var = self._nc.variables[name]
            dims = tuple(var.dimensions)
        else:
            var = self._xr[name]
            dims = tuple(var.dims)
        if set(dims) - {"time"} != {"lat", "lon"} or len(dims) not in (2, 3):
            raise DataError(f"{self.path}: {what} {name!r} has dims {dims}, expected (time, lat, lon) or (lat, lon)")
        try:
            index = tuple(0 if d == "time" else slice(None) for d in dims)
            values = np.asarray(var[index] if self._nc is not None else var.values[index])
        except Exception as err:
            raise DataError(f"{self.path}: {what} {name!r} cannot be read, the file looks corrupt "
                            f"({type(err).__name__})") from err
        kept = [d for d in dims if d != "time"]
        return values if kept == ["lat", "lon"] else values.T

    def channels(self, channels: Sequence[str]) -> np.ndarray:
        """(channels, lat, lon) float32, checked: every channel present, 2-d after time, finite."""
        present = self.variables
        missing = [c for c in channels if c not in present]
        if missing:
            raise DataError(f"{self.path}: channel(s) {missing} missing; the file has {sorted(present)}")
        out = []
        for c in channels:
            values = self.read2d(c).astype(np.float32, copy=False)
            if not np.isfinite(values).all():
                raise DataError(f"{self.path}: variable {c!r} has {int((~np.isfinite(values)).sum())} NaN or "
                                "infinite values")
            out.append(values)
        return np.stack(out)

    def labels(self, n_classes: int) -> np.ndarray:
        """(lat, lon) int64 labels, checked to lie in 0..n_classes-1."""
        if LABEL_VAR not in self.variables:
            raise DataError(f"{self.path}: no {LABEL_VAR} variable; the file has {sorted(self.variables)}")
        values = self.read2d(LABEL_VAR, "label variable")
        if not np.isfinite(values).all() or values.min() < 0 or values.max() >= n_classes or (values % 1).any():
            bad = np.unique(values[~np.isin(values, np.arange(n_classes))])[:5]
            raise DataError(f"{self.path}: {LABEL_VAR} has values {bad.tolist()} outside the classes 0..{n_classes - 1} "
                            f"({', '.join(CLASS_NAMES[:n_classes])})")
        return values.astype(np.int64)


def read_fields(path: Path, channels: Sequence[str]) -> np.ndarray:
    """(channels, lat, lon) float32 of one file, checked: every channel present, 2-d after time, finite."""
    with _SnapshotFile(path) as f:
        return f.channels(channels)


def read_labels(path: Path, n_classes: int = len(CLASS_NAMES)) -> np.ndarray:
    """(lat, lon) int64 labels of one file, checked to lie in 0..n_classes-1."""
    with _SnapshotFile(path) as f:
        return f.labels(n_classes)


def read_snapshot(path: Path, channels: Sequence[str], labels: bool = True,
                  n_classes: int = len(CLASS_NAMES)) -> tuple[np.ndarray, np.ndarray | None]:
    """Fields (channels, lat, lon) float32 and labels (lat, lon) int64 (or None) of one file, opened once."""
    with _SnapshotFile(path) as f:
        return f.channels(channels), (f.labels(n_classes) if labels else None)


def read_grid(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon) coordinates [degrees] of one file."""
    with _SnapshotFile(path) as f:
        return f.grid()


def common_grid(snapshots: Sequence[Snapshot]) -> xr.Dataset:
    """The (lat, lon) grid most files share (within climateml.grid.GRID_TOLERANCE); a DataError naming the
    first file on another grid."""
    grids: list[tuple[xr.Dataset, list[Path]]] = []  # each distinct grid and its files
    for s in snapshots:
        for f in s.files:
            lat, lon = read_grid(f)
            same = [files for g, files in grids if len(g["lat"]) == len(lat) and len(g["lon"]) == len(lon)
                    and coord_mismatch(g["lat"], lat) is None and coord_mismatch(g["lon"], lon) is None]
            if same:
                same[0].append(f)
            else:
                grids.append((xr.Dataset(coords={"lat": lat, "lon": lon}), [f]))
    grid, common = max(grids, key=lambda g: len(g[1]))
    for other, files in grids:
        if files is not common:
            raise DataError(f"{sorted(files)[0]}: grid differs from the {len(common)} file(s) like {common[0]}: "
                            f"{grid_difference(other, grid)}")
    return grid
