"""Reading radar rain archives: a per-frame index of the archive's files and cheap reads of single frames as rain
rate [mm/h].

An archive is one file with a ``time`` dimension, or many files each holding one frame with a scalar
``valid_time`` (or a length-1 ``time`` dimension), in NetCDF or Zarr, or one ODIM HDF5 composite per frame
(:mod:`climateml.data.odim`; the variable is then the ODIM quantity, e.g. ``RATE``). Accumulations, rates and
reflectivities are all converted to a rain rate in mm/h from the variable's ``units`` / ``standard_name``
(:mod:`climateml.data.radar_header`). Opening reads only metadata (times, grid, units) into a per-frame index
(:class:`RadarReader`: file + position in the file + unit conversion); a frame is then read straight
from its file when asked for, so a window costs its own frames' reads, never a pass over the archive
(:func:`open_radar` wraps the same reads in a lazy dask-backed DataArray for interactive use). Sample windows
are :mod:`climateml.data.windows`; the network's rain transform is :mod:`climateml.models.rain_transform`.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from xarray.backends import CachingFileManager

from climateml.data import odim
from climateml.data.io import HDF5_LOCK
from climateml.data.radar_header import read_archive_headers
from climateml.data.windows import time_step
from climateml.errors import DataError


_INHERITED: list = []  # open files a forked process inherited: kept referenced so they are never closed there


def _open_file(path: Path, zarr: bool, odim: bool):
    """One file of the archive opened read-only: xarray without dask for Zarr, h5py for ODIM HDF5, netCDF4 for
    NetCDF; a DataError naming the file if it cannot be opened (it could when the archive was opened)."""
    try:
        if zarr:
            return xr.open_dataset(path, engine="zarr", consolidated=None, chunks=None, cache=False)
        if odim:
            import h5py  # noqa: PLC0415

            return h5py.File(path, "r")
        import netCDF4  # noqa: PLC0415 (imported where used: the generators do not need it)

        return netCDF4.Dataset(path, "r")
    except Exception as err:
        raise DataError(f"{path}: cannot be read ({type(err).__name__}: {err}); it was readable when the archive "
                        f"was opened") from err


class RadarReader:
    """A per-frame index of a radar archive, and cheap direct reads of single frames as rain rate [mm/h].

    Opening reads only metadata (times, grid, units) and records, for every frame, its file, its position
    along the file's time dimension and its unit conversion. :meth:`read` then reads one frame (or a
    [rows, cols] part of it) straight from its file: netCDF4 for NetCDF, xarray without dask for Zarr,
    no concatenation of the archive. Open files are kept by xarray's ``CachingFileManager`` (at most
    ``max_open_files`` per reader, least recently used closed first, and xarray's ``file_cache_maxsize`` in all;
    an open NetCDF file costs ~1 MB) per process: a DataLoader worker starts with none
    and opens its own after the fork, and pickling drops them. Converted frames are kept in an LRU cache
    of at most ``cache_mb`` MiB per process (0: none), so an epoch after the first reads from memory
    when the archive fits, and a large archive still streams with a bounded footprint.

    Conversion to mm/h (from the variable's ``units`` / ``standard_name``): accumulations [mm, kg m-2,
    m] are divided by their interval (``valid_time - start_time`` when the file has a ``start_time``, else
    ``accumulation_minutes``, else the archive's time step); rates in kg m-2 s-1 are multiplied by 3600;
    reflectivity [dBZ] becomes rain through Z = zr_a R^zr_b (Marshall-Palmer by default). Coordinates
    are kept as read (y may be descending) but must be the same in every file. Every problem is a
    DataError naming the file. ``headers``: the archive's :func:`~climateml.data.radar_header.read_archive_headers`
    when another process has read them (DDP), instead of reading every file's metadata here.
    """

    def __init__(self, paths: str | Path | Sequence[str | Path], variable: str, zr_a: float = 200.0,
                 zr_b: float = 1.6, accumulation_minutes: float | None = None, max_open_files: int = 64,
                 cache_mb: float = 0.0, region: dict | None = None, headers: Sequence[dict] | None = None):
        self.variable, self.zr_a, self.zr_b = variable, float(zr_a), float(zr_b)
        self.max_open_files = max(1, int(max_open_files))
        self.cache_bytes = int(max(0.0, float(cache_mb)) * 2**20)
        pieces = list(headers) if headers is not None else read_archive_headers(paths, variable)
        first = pieces[0]
        times = np.concatenate([p["times"] for p in pieces])
        self.frame_file = np.concatenate([np.full(p["times"].size, i, np.int64) for i, p in enumerate(pieces)])
        self.frame_index = np.concatenate([np.arange(p["times"].size) for p in pieces])
        gaps = np.diff(times)
        if np.any(gaps <= np.timedelta64(0, "ns")):
            i = int(np.argmax(gaps <= np.timedelta64(0, "ns"))) + 1
            what = "duplicated" if times[i] == times[i - 1] else "earlier than the previous frame"
            here, before = (pieces[self.frame_file[k]]["path"] for k in (i, i - 1))
            raise DataError(f"{here}: time {times[i]} is {what} ({times[i - 1]} in {before}); expected strictly "
                            f"increasing times (sort the files, drop duplicates)")
        self.times = times
        self.step = time_step(times) if times.size > 1 else None
        scales = []
        for piece in pieces:
            n = piece["times"].size
            if piece["kind"] == "amount":
                interval = piece["interval"]
                if interval is None:
                    if accumulation_minutes is not None:
                        interval = np.full(n, np.timedelta64(int(accumulation_minutes * 60e9), "ns"))
                    elif self.step is not None:
                        interval = np.full(n, self.step)
                    else:
                        raise DataError(f"{piece['path']}: accumulation {variable!r} of a single frame without "
                                        f"start_time; pass accumulation_minutes")
                scales.append(piece["factor"] / (interval / np.timedelta64(1, "h")))
            else:
                scales.append(np.full(n, piece["factor"]))
        self.frame_scale = np.concatenate(scales).astype(np.float64)
        self.files = [{k: p.get(k) for k in ("path", "zarr", "odim", "kind", "disk_dims", "disk_names", "data_path",
                                             "scaling")} for p in pieces]
        self.spatial = first["spatial"]
        self.window = tuple(_region_slice(first["coords"][d][0], (region or {}).get(d), d, first["path"])
                            for d in self.spatial)
        unknown = sorted(set(region or {}) - set(self.spatial))
        if unknown:
            raise DataError(f"{first['path']}: region names {unknown}, but the grid's dimensions are {self.spatial}")
        self.coords = {d: xr.DataArray(first["coords"][d][0][w], dims=d, attrs=first["coords"][d][1], name=d)
                       for d, w in zip(self.spatial, self.window)}
        self.source_units = str(first["units"])
        self._files: OrderedDict = OrderedDict()  # {file number: CachingFileManager}, least recently used first
        self._pid = os.getpid()
        self._cache: OrderedDict = OrderedDict()
        self._cached_bytes = 0

    def __len__(self) -> int:
        return self.times.size

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self), *(self.coords[d].size for d in self.spatial))

    def path(self, frame: int) -> Path:
        return self.files[int(self.frame_file[frame])]["path"]

    # ---- open files: xarray's CachingFileManager, at most max_open_files per reader and per process ----
    def _file(self, f: int):
        """File ``f`` open for reading, as a context (the caller holds HDF5_LOCK): xarray's file cache keeps it
        open meanwhile, even if another thread's open evicts it. A forked DataLoader worker opens its own files:
        the parent's managers are kept referenced there, so the child never closes the parent's files. A dropped
        reader's managers close their files at once, or, while another thread reads, when xarray's file cache
        next evicts them."""
        if self._pid != os.getpid():
            _INHERITED.append(self._files)
            self._files, self._pid = OrderedDict(), os.getpid()
        manager = self._files.get(f)
        if manager is None:
            info = self.files[f]
            manager = self._files[f] = CachingFileManager(_open_file, info["path"], info["zarr"], info["odim"],
                                                          lock=HDF5_LOCK)
            while len(self._files) > self.max_open_files:
                self._files.popitem(last=False)[1].close(needs_lock=False)
        self._files.move_to_end(f)
        return manager.acquire_context(needs_lock=False)

    def close(self) -> None:
        """Close this process's open files (they are reopened on the next read); the frame cache stays."""
        with HDF5_LOCK:
            if self._pid == os.getpid():
                for manager in self._files.values():
                    manager.close(needs_lock=False)
            self._files, self._pid = OrderedDict(), os.getpid()

    def __del__(self):
        if self.__dict__.get("_pid") not in (None, os.getpid()):  # a forked worker's inherited files: left open
            _INHERITED.append(self._files)

    def __getstate__(self):
        return {**self.__dict__, "_files": OrderedDict(), "_pid": None, "_cache": OrderedDict(), "_cached_bytes": 0}

    # ---- reading ----
    def read(self, frame: int, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """Frame ``frame`` (or its [rows, cols] part) as float32 rain rate [mm/h] on (y, x), NaN where the
        file has no data; from the frame cache when it holds the frame. Safe to call from several threads
        (dask's threaded scheduler): file access and the cache's bookkeeping take one lock in turn."""
        frame = int(frame)
        with HDF5_LOCK:
            if self.cache_bytes <= 0:
                return self._read_file(frame, rows, cols)
            full = self._cache.get(frame)
            if full is None:
                full = self._read_file(frame)
                if full.nbytes <= self.cache_bytes:
                    self._cache[frame] = full
                    self._cached_bytes += full.nbytes
                    while self._cached_bytes > self.cache_bytes:
                        self._cached_bytes -= self._cache.popitem(last=False)[1].nbytes
            else:
                self._cache.move_to_end(frame)
            return full[rows, cols].copy()

    def _read_file(self, frame: int, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        rows, cols = (_within(w, part, self.coords[d].size) for w, part, d in zip(self.window, (rows, cols), self.spatial))
        f = int(self.frame_file[frame])
        info = self.files[f]
        names = info["disk_names"]
        row, col = names[self.spatial[0]], names[self.spatial[1]]
        dbz = info["kind"] == "dbz"
        dtype = np.float64 if dbz else np.float32  # float64 only for the dBZ -> rain conversion
        dry = None
        with self._file(f) as handle:
            if info["odim"]:
                try:
                    values, dry = odim.read_odim(handle, info["data_path"], info["scaling"], rows, cols, dtype)
                except Exception as err:  # a file damaged after the archive was opened
                    raise DataError(f"{info['path']}: cannot read {info['data_path']} ({type(err).__name__}: {err}); "
                                    "the file looks corrupt or truncated") from err
            elif info["zarr"]:
                da = handle[self.variable]
                if names["time"] is not None:
                    da = da.isel({names["time"]: int(self.frame_index[frame])})
                values = da.isel({row: rows, col: cols}).transpose(row, col).values.astype(dtype)  # our own copy
            else:
                var = handle.variables[self.variable]
                key = {names["time"]: int(self.frame_index[frame]), row: rows, col: cols}
                values = var[tuple(key[d] for d in var.dimensions)]
                if var.dimensions.index(row) > var.dimensions.index(col):
                    values = values.T
                values = np.ma.filled(np.ma.asarray(values).astype(dtype), np.nan)
        if dbz:
            values = ((10.0 ** (values / 10.0) / self.zr_a) ** (1.0 / self.zr_b)).astype(np.float32)
        else:
            scale = self.frame_scale[frame]
            if scale != 1.0:
                values *= np.float32(scale)
        if dry is not None:
            values[dry] = 0.0  # ODIM undetect: looked at, no rain
        return values

    def read_frames(self, frames: Iterable[int], rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """Frames (n, y, x) [mm/h], each read on its own (see :meth:`read`)."""
        return np.stack([self.read(int(k), rows, cols) for k in frames])

    def check_frames(self, frames: Iterable[int] | None = None, each=None, allow_empty: bool = False) -> np.ndarray:
        """Read every frame once, one at a time; ``each(k, frame)`` is called with every frame read (e.g. to
        accumulate statistics). Returns the indices of frames that are NaN everywhere (a radar outage): with
        ``allow_empty`` they are the caller's to treat as missing, else the first is a DataError naming its file."""
        empty = []
        for k in range(len(self)) if frames is None else frames:
            frame = self.read(int(k))
            if not np.isfinite(frame).any():
                if not allow_empty:
                    raise DataError(f"{self.path(k)}: variable {self.variable!r} is NaN everywhere at time "
                                    f"{self.times[k]}; expected some valid pixels (delete the file to mark the "
                                    f"frame missing)")
                empty.append(int(k))
            if each is not None:
                each(int(k), frame)
        return np.array(empty, dtype=np.int64)

    def to_dataarray(self) -> xr.DataArray:
        """The archive as a lazy (time, y, x) DataArray [mm/h], one dask chunk per frame read by :meth:`read`."""
        import dask.array as dsa  # noqa: PLC0415

        n, ny, nx = self.shape

        def block(block_info=None):
            start, stop = block_info[None]["array-location"][0]
            return self.read_frames(range(start, stop))

        data = dsa.map_blocks(block, chunks=((1,) * n, (ny,), (nx,)), dtype=np.float32,
                              meta=np.empty((0, 0, 0), np.float32))
        rain = xr.DataArray(data, dims=("time", *self.spatial), name="rain_rate",
                            coords={"time": self.times, **self.coords})
        rain.attrs = {"units": "mm h-1", "long_name": "rain rate", "source_variable": self.variable,
                      "source_units": self.source_units}
        if self.step is not None:
            rain.attrs["time_step_minutes"] = float(self.step / np.timedelta64(1, "m"))
        return rain


def _region_slice(values: np.ndarray, bounds, dim: str, path: Path) -> slice:
    """The cells whose coordinate lies in the inclusive ``bounds`` [lo, hi] (None: all), as a slice."""
    if bounds is None:
        return slice(0, values.size)
    if len(bounds) != 2:
        raise DataError(f"region {dim}: expected [low, high] coordinate values, got {bounds}")
    lo, hi = sorted(float(b) for b in bounds)
    inside = np.nonzero((values >= lo) & (values <= hi))[0]
    if inside.size < 2:
        raise DataError(f"{path}: region {dim} [{lo:g}, {hi:g}] holds {inside.size} cells; the grid's {dim} runs from "
                        f"{values.min():g} to {values.max():g}")
    return slice(int(inside[0]), int(inside[-1]) + 1)


def _within(window: slice, part: slice, size: int) -> slice:
    """``part`` of the region ``window`` (``size`` cells), as a slice of the whole grid."""
    start, stop, _ = part.indices(size)
    return slice(window.start + start, window.start + stop)


def open_radar(
    paths: str | Path | Sequence[str | Path],
    variable: str,
    zr_a: float = 200.0,
    zr_b: float = 1.6,
    accumulation_minutes: float | None = None,
    check_nan: bool = True,
) -> xr.DataArray:
    """Rain rate [mm/h] on (time, y, x) or (time, lat, lon), lazy (one dask chunk per frame).

    ``paths``: a file, a directory, a glob or a list. See :class:`RadarReader` for the unit conversions
    (``zr_a``, ``zr_b``, ``accumulation_minutes``) and the checks. ``check_nan`` streams through the
    data once (one frame in memory at a time) to refuse an all-NaN frame.
    """
    reader = RadarReader(paths, variable, zr_a, zr_b, accumulation_minutes)
    if check_nan:
        reader.check_frames()
    return reader.to_dataarray()
