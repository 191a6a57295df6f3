"""Reading radar rain archives: lazy (time, y, x) rain rate in mm/h, sample windows, and rain transforms.

An archive is one file with a ``time`` dimension, or many files each holding one frame with a scalar
``valid_time`` (or a length-1 ``time`` dimension), in NetCDF or Zarr, or one ODIM HDF5 composite per frame
(:mod:`climateml.data.odim`; the variable is then the ODIM quantity, e.g. ``RATE``). Accumulations, rates and
reflectivities are all converted to a rain rate in mm/h from the variable's ``units`` /
``standard_name``. Opening reads only metadata (times, grid, units) into a per-frame index
(:class:`RadarReader`: file + position in the file + unit conversion); a frame is then read straight
from its file when asked for, so a window costs its own frames' reads, never a pass over the archive
(:func:`open_radar` wraps the same reads in a lazy dask-backed DataArray for interactive use).
"""

from __future__ import annotations

import glob
import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

from climateml.data.io import HDF5_LOCK as _FILE_LOCK  # netCDF4/HDF5 is not thread-safe: reads take turns
from climateml.data.io import DataError, open_dataset
from climateml.data import odim
from climateml.grid import coord_mismatch

#: the files an archive folder is read from (globs of names): a folder's entries matching one of them are its
#: frames, and a folder holding none of them gets no sample data (climateml.data.io.may_write_sample_data)
FILE_PATTERNS = ("*.nc", "*.zarr", *(f"*{suffix}" for suffix in odim.SUFFIXES))  # ODIM: *.h5, *.hdf, *.hdf5
SPATIAL_DIMS = (("y", "x"), ("lat", "lon"))
RENAMES = {"latitude": "lat", "longitude": "lon"}
TIME_NAMES = ("valid_time", "time")
ENCODING_ATTRS = ("_FillValue", "missing_value", "scale_factor", "add_offset", "_Unsigned", "dtype", "coordinates")

# units spelled without blanks, '**' or '^', lower case
AMOUNT_UNITS = {"kgm-2": 1.0, "kg/m2": 1.0, "mm": 1.0}                                   # -> mm
RATE_UNITS = {"mm/h": 1.0, "mmh-1": 1.0, "mm/hr": 1.0, "mmhr-1": 1.0,                      # -> mm/h
              "kgm-2s-1": 3600.0, "kg/m2/s": 3600.0, "mms-1": 3600.0, "mm/s": 3600.0}
AMOUNT_NAMES = {"precipitation_amount", "rainfall_amount", "lwe_thickness_of_precipitation_amount",
                "thickness_of_rainfall_amount", "lwe_thickness_of_rainfall_amount"}
REFLECTIVITY_NAMES = {"equivalent_reflectivity_factor"}


def resolve_paths(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """Files of an archive from a file, a directory (its .nc / .zarr / ODIM .h5 .hdf .hdf5 entries), a glob, or a
    list of those."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    for item in paths:
        text = str(item)
        if any(c in text for c in "*?["):
            matches = sorted(Path(p) for p in glob.glob(text))
            if not matches:
                raise DataError(f"{text}: the pattern matches no file")
            found += matches
            continue
        path = Path(item)
        if path.is_dir() and not _is_zarr(path):
            entries = sorted(p for p in path.iterdir() if is_archive_file(p))
            if not entries:
                raise DataError(f"{path}: directory holds no radar files ({', '.join(FILE_PATTERNS)})")
            found += entries
        elif path.exists():
            found.append(path)
        else:
            raise DataError(f"{path}: no such file or directory")
    return found


def is_archive_file(path: Path) -> bool:
    """Whether a folder entry is a file (or Zarr store) of the archive: a name matching FILE_PATTERNS, not hidden."""
    return not path.name.startswith(".") and any(fnmatch(path.name, pattern) for pattern in FILE_PATTERNS)


def _is_zarr(path: Path) -> bool:
    return path.suffix == ".zarr" or any((path / m).exists() for m in (".zgroup", ".zattrs", "zarr.json"))


def _canonical_units(units: str) -> str:
    return str(units).lower().replace("**", "").replace("^", "").replace(" ", "").replace(".", "")


def _conversion(attrs: dict, path: Path, variable: str) -> tuple[str, float]:
    """(kind, factor) with kind 'amount' (factor -> mm), 'rate' (factor -> mm/h) or 'dbz', from the
    variable's attributes."""
    units = _canonical_units(attrs.get("units", ""))
    name = str(attrs.get("standard_name", "")).lower()
    if name in REFLECTIVITY_NAMES or units == "dbz":
        return "dbz", 1.0
    if units in AMOUNT_UNITS:
        return "amount", AMOUNT_UNITS[units]
    if units == "m" and name in AMOUNT_NAMES:
        return "amount", 1000.0
    if units == "" and name in AMOUNT_NAMES:
        return "amount", 1.0
    if units in RATE_UNITS:
        return "rate", RATE_UNITS[units]
    raise DataError(f"{path}: variable {variable!r} has units {attrs.get('units')!r} (standard_name "
                    f"{name or None!r}); expected an accumulation (kg m-2, mm), a rate (mm h-1, kg m-2 s-1) "
                    f"or a reflectivity (dBZ)")


def _scalar_time(header: dict, name: str) -> np.ndarray | None:
    dims, values, _ = header.get(name, ((None,), None, None))
    if dims == ():
        return np.atleast_1d(values)
    return None


def _as_datetime(values: np.ndarray, path: Path, name: str) -> np.ndarray:
    if np.issubdtype(values.dtype, np.datetime64):
        out = values.astype("datetime64[ns]")
    else:
        try:
            out = pd.to_datetime([str(v) for v in values]).values.astype("datetime64[ns]")
        except (ValueError, TypeError) as err:
            raise DataError(f"{path}: {name} values {values[:3]} are not CF-decodable times") from err
    if np.isnat(out).any():
        raise DataError(f"{path}: {name} has missing values (NaT); expected a time for every frame")
    return out


def _open_piece(path: Path, variable: str) -> dict:
    """Metadata of one file: its frames' times and accumulation intervals, the variable's on-disk dims,
    the grid's coordinates and the unit conversion. Nothing but coordinates and times is read."""
    if odim.is_odim(path):
        return _odim_piece(path, variable)
    if not _is_zarr(path):
        return _describe_piece(_netcdf_header(path), path, variable)
    ds = open_dataset(path)
    try:
        header = {str(n): (v.dims, v.values if v.ndim <= 1 else None, dict(v.attrs)) for n, v in ds.variables.items()}
    finally:
        ds.close()
    return _describe_piece(header, path, variable)


def _odim_piece(path: Path, quantity: str) -> dict:
    """:func:`_describe_piece`'s answer for one ODIM HDF5 composite (one frame, grid from ``where``)."""
    header = odim.odim_header(path, quantity, _FILE_LOCK)
    kind, factor = _conversion(header["attrs"], path, quantity)
    return {"path": path, "zarr": False, "odim": True, "times": header["times"], "interval": header["interval"],
            "kind": kind, "factor": factor, "spatial": ("y", "x"), "coords": header["coords"],
            "units": header["attrs"]["units"], "disk_dims": ("y", "x"), "disk_names": {"time": None, "y": "y", "x": "x"},
            "data_path": header["data_path"], "scaling": header["scaling"], "grid_id": header["grid_id"]}


def _netcdf_header(path: Path) -> dict:
    """A NetCDF file's variables as {name: (dims, values, attrs)}, with values read (CF times decoded)
    only for 1-D and scalar variables, None for the others. Several times faster than
    ``xarray.open_dataset`` for the many small files of a radar archive."""
    import netCDF4  # noqa: PLC0415
    from xarray.coding.times import decode_cf_datetime  # noqa: PLC0415

    if not path.exists() or path.stat().st_size == 0:
        open_dataset(path)  # raises its clear DataError
    try:
        header = {}
        with _FILE_LOCK, netCDF4.Dataset(path, "r") as nc:  # HDF5 is not thread-safe: see RadarReader.read
            for name, var in nc.variables.items():
                attrs = {k: var.getncattr(k) for k in var.ncattrs()}
                values = None
                if var.ndim <= 1:
                    units = str(attrs.get("units", ""))
                    if " since " in units:
                        var.set_auto_maskandscale(False)
                        values = decode_cf_datetime(np.asarray(var[...]), units, attrs.get("calendar", "standard"))
                    elif var.dtype.kind in "fiu":
                        values = np.ma.filled(np.ma.asarray(var[...]).astype(np.float64), np.nan)
                    else:
                        values = np.asarray(var[...])
                header[name] = (tuple(var.dimensions), values, attrs)
    except Exception as err:  # netCDF4, HDF5 and cftime raise many types for a damaged file
        reason = (str(err).strip().splitlines() or [""])[0][:120]
        raise DataError(f"{path}: cannot be read as NetCDF, the file looks corrupt or truncated, or its times "
                        f"are not CF ({type(err).__name__}: {reason})") from err
    return header


def _describe_piece(header: dict, path: Path, variable: str) -> dict:
    """What :class:`RadarReader` needs of one file, from its header {name: (dims, values, attrs)}, checked."""
    renamed = {k: v for k, v in RENAMES.items() if k in header}
    on_disk = {v: k for k, v in renamed.items()}
    header = {renamed.get(n, n): (tuple(renamed.get(d, d) for d in dims), values, attrs)
              for n, (dims, values, attrs) in header.items()}
    data_vars = sorted(n for n, (dims, _, _) in header.items() if dims != (n,))
    if variable not in header or header[variable][0] == (variable,):
        raise DataError(f"{path}: variable {variable!r} is missing; the file has {data_vars}")
    var_dims, _, var_attrs = header[variable]
    dims = set(var_dims)
    if "time" in var_dims:
        time_dim = "time"
        if "time" not in header or header["time"][1] is None:
            raise DataError(f"{path}: variable {variable!r} has a time dimension without time values")
        times = _as_datetime(np.atleast_1d(header["time"][1]), path, "time")
        start = header["start_time"][1] if "start_time" in header else None
        if start is not None:
            start = np.broadcast_to(_as_datetime(np.atleast_1d(start), path, "start_time"), times.shape)
    else:
        time_dim = None
        for name in TIME_NAMES:
            value = _scalar_time(header, name)
            if value is not None:
                times = _as_datetime(value, path, name)
                break
        else:
            raise DataError(f"{path}: variable {variable!r} has dims {var_dims} and the file has no scalar "
                            f"valid_time or time; expected a time dimension or one scalar valid_time")
        start = _scalar_time(header, "start_time")
        start = None if start is None else _as_datetime(start, path, "start_time")
        dims = {"time", *dims}
    spatial = next((pair for pair in SPATIAL_DIMS if dims == {"time", *pair}), None)
    if spatial is None:
        shown = var_dims if time_dim else ("time", *var_dims)
        raise DataError(f"{path}: variable {variable!r} has dims {shown}, expected (time, y, x) or "
                        f"(time, lat, lon), or the same without time plus a scalar valid_time")
    coords = {}
    for dim in spatial:
        if dim not in header or header[dim][0] != (dim,):
            raise DataError(f"{path}: variable {variable!r} has no {dim} coordinate values")
        values = np.asarray(header[dim][1], dtype=np.float64)
        step = np.diff(values)
        if step.size and not (np.all(step > 0) or np.all(step < 0)):
            raise DataError(f"{path}: coordinate {dim} is not strictly monotonic")
        coords[dim] = (values, {k: v for k, v in header[dim][2].items() if k not in ENCODING_ATTRS})
    kind, factor = _conversion(var_attrs, path, variable)
    interval = None if start is None else (times - start)
    if interval is not None and np.any(interval <= np.timedelta64(0, "ns")):
        raise DataError(f"{path}: start_time is not before valid_time; expected the start of the accumulation")
    return {"path": path, "zarr": _is_zarr(path), "odim": False, "times": times, "interval": interval, "kind": kind,
            "factor": factor, "spatial": spatial, "coords": coords, "units": var_attrs.get("units"),
            "disk_dims": tuple(on_disk.get(d, d) for d in var_dims),
            "disk_names": {"time": time_dim, **{d: on_disk.get(d, d) for d in spatial}}}


class RadarReader:
    """A per-frame index of a radar archive, and cheap direct reads of single frames as rain rate [mm/h].

    Opening reads only metadata (times, grid, units) and records, for every frame, its file, its position
    along the file's time dimension and its unit conversion. :meth:`read` then reads one frame (or a
    [rows, cols] part of it) straight from its file: netCDF4 for NetCDF, xarray without dask for Zarr,
    no concatenation of the archive. Open files are kept (at most ``max_open_files``, least recently
    used closed first; an open NetCDF file costs ~1 MB) per process: a DataLoader worker starts with none
    and opens its own after the fork, and pickling drops them. Converted frames are kept in an LRU cache
    of at most ``cache_mb`` MiB per process (0: none), so an epoch after the first reads from memory
    when the archive fits, and a large archive still streams with a bounded footprint.

    Conversion to mm/h (from the variable's ``units`` / ``standard_name``): accumulations [mm, kg m-2,
    m] are divided by their interval (``valid_time - start_time`` when the file has a ``start_time``, else
    ``accumulation_minutes``, else the archive's time step); rates in kg m-2 s-1 are multiplied by 3600;
    reflectivity [dBZ] becomes rain through Z = zr_a R^zr_b (Marshall-Palmer by default). Coordinates
    are kept as read (y may be descending) but must be the same in every file. Every problem is a
    DataError naming the file.
    """

    def __init__(self, paths: str | Path | Sequence[str | Path], variable: str, zr_a: float = 200.0,
                 zr_b: float = 1.6, accumulation_minutes: float | None = None, max_open_files: int = 64,
                 cache_mb: float = 0.0, region: dict | None = None):
        self.variable, self.zr_a, self.zr_b = variable, float(zr_a), float(zr_b)
        self.max_open_files = max(1, int(max_open_files))
        self.cache_bytes = int(max(0.0, float(cache_mb)) * 2**20)
        pieces = [_open_piece(path, variable) for path in resolve_paths(paths)]
        first = pieces[0]
        for piece in pieces[1:]:
            if piece["spatial"] != first["spatial"]:
                raise DataError(f"{piece['path']}: variable {variable!r} is on {piece['spatial']}, but "
                                f"{first['path']} is on {first['spatial']}; expected one grid for the archive")
            if piece.get("grid_id") != first.get("grid_id"):
                raise DataError(f"{piece['path']}: grid differs from {first['path']}: {_grid_text(piece)} against "
                                f"{_grid_text(first)}; expected one grid for the archive")
            for dim in first["spatial"]:
                a, b = first["coords"][dim][0], piece["coords"][dim][0]
                if a.shape != b.shape or coord_mismatch(a, b) is not None:
                    raise DataError(f"{piece['path']}: grid differs from {first['path']}: {dim} has {b.size} values "
                                    f"from {b[0]:g} to {b[-1]:g}, expected {a.size} from {a[0]:g} to {a[-1]:g}")
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
        self.coords = {d: xr.DataArray(v[w], dims=d, attrs=a, name=d)
                       for (d, (v, a)), w in zip(((d, first["coords"][d]) for d in self.spatial), self.window)}
        self.source_units = str(first["units"])
        self._handles: OrderedDict = OrderedDict()
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

    # ---- file handles, one set per process ----
    def _handle(self, f: int):
        if self._pid != os.getpid():  # a forked worker: leave the parent's handles alone, open our own
            _INHERITED.append(self._handles)
            self._handles, self._pid = OrderedDict(), os.getpid()
        handle = self._handles.get(f)
        if handle is not None:
            self._handles.move_to_end(f)
            return handle
        info = self.files[f]
        try:
            if info["zarr"]:
                handle = xr.open_dataset(info["path"], engine="zarr", consolidated=None, chunks=None, cache=False)
            elif info["odim"]:
                import h5py  # noqa: PLC0415

                handle = h5py.File(info["path"], "r")
            else:
                import netCDF4  # noqa: PLC0415 (imported where used: the generators do not need it)

                handle = netCDF4.Dataset(info["path"], "r")
        except Exception as err:
            raise DataError(f"{info['path']}: cannot be read ({type(err).__name__}: {err}); it was readable when "
                            f"the archive was opened") from err
        self._handles[f] = handle
        while len(self._handles) > self.max_open_files:
            self._handles.popitem(last=False)[1].close()
        return handle

    def close(self) -> None:
        """Close this process's open files (they are reopened on the next read); the frame cache stays."""
        with _FILE_LOCK:
            if self._pid == os.getpid():
                _close_all(list(self._handles.values()))
            self._handles, self._pid = OrderedDict(), os.getpid()
            _close_unclosed()

    def __del__(self):
        # netCDF4 closes a file when its Dataset is deallocated, and the garbage collector may do that in any
        # thread, outside the lock, while another thread reads (a crash in HDF5). A dropped reader's open files
        # are therefore handed to the next read, which closes them under the lock.
        handles = self.__dict__.get("_handles")
        if not handles or _UNCLOSED is None:  # nothing open, or the interpreter is exiting
            return
        if self.__dict__.get("_pid") != os.getpid():  # a forked worker's inherited handles: never closed here
            _INHERITED.append(dict(handles))
        elif _FILE_LOCK.acquire(blocking=False):  # no read under way (in this thread or another): close now
            try:
                _close_all(list(handles.values()))
            finally:
                _FILE_LOCK.release()
        else:
            _UNCLOSED.extend((os.getpid(), h) for h in handles.values())
        handles.clear()

    def __getstate__(self):
        return {**self.__dict__, "_handles": OrderedDict(), "_pid": None, "_cache": OrderedDict(), "_cached_bytes": 0}

    # ---- reading ----
    def read(self, frame: int, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """Frame ``frame`` (or its [rows, cols] part) as float32 rain rate [mm/h] on (y, x), NaN where the
        file has no data; from the frame cache when it holds the frame. Safe to call from several threads
        (dask's threaded scheduler): file access and the cache's bookkeeping take one lock in turn."""
        frame = int(frame)
        with _FILE_LOCK:
            if _UNCLOSED:
                _close_unclosed()
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
        handle = self._handle(f)
        dbz = info["kind"] == "dbz"
        dtype = np.float64 if dbz else np.float32  # float64 only for the dBZ -> rain conversion
        dry = None
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


def _grid_text(piece: dict) -> str:
    """A grid in words for error messages: size, cell size and (ODIM) projection and lower-left corner."""
    gid = piece.get("grid_id")
    if gid is None:
        return f"a CF grid of {' x '.join(str(piece['coords'][d][0].size) for d in piece['spatial'])} cells"
    ny, nx, dx, dy, projdef, corners = gid
    ll = dict(corners)
    return (f"{ny} x {nx} cells of {dy:g} x {dx:g} km, {projdef!r}, lower-left corner "
            f"({ll.get('LL_lon')}, {ll.get('LL_lat')})")


_INHERITED: list = []  # handles a forked process inherited: kept referenced so they are never closed there
_UNCLOSED: list = []  # (pid, handle): open files of readers dropped during a read, closed by the next read


def _close_all(handles) -> None:
    """Close files, ignoring a failure to close one (a file of a dropped reader must not fail another read)."""
    for handle in handles:
        try:
            handle.close()
        except Exception:  # noqa: BLE001 (already closed, or its file is gone: nothing left to release)
            pass


def _close_unclosed() -> None:
    """Close this process's files of dropped readers (the caller holds the lock); a forked process keeps its
    parent's."""
    pid = os.getpid()
    mine = [h for p, h in _UNCLOSED if p == pid]
    _INHERITED.extend(h for p, h in _UNCLOSED if p != pid)
    _UNCLOSED.clear()
    _close_all(mine)


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


def _datetimes(times) -> np.ndarray:
    values = times.values if isinstance(times, (xr.DataArray, pd.Index, pd.Series)) else np.asarray(times)
    return values.astype("datetime64[ns]")


def time_step(times) -> np.timedelta64:
    """The archive's time step: the most common difference between consecutive times."""
    t = _datetimes(times)
    if t.size < 2:
        raise DataError(f"need at least 2 times to find the archive's time step, got {t.size}")
    diffs, counts = np.unique(np.diff(t), return_counts=True)
    step = diffs[np.argmax(counts)]
    if step <= np.timedelta64(0, "ns"):
        raise DataError(f"times are not increasing (most common difference {step}); expected sorted times")
    return step


def window_starts(times, n_in: int, n_out: int, start=None, end=None, step=None, missing=None) -> np.ndarray:
    """Indices i into ``times`` such that times[i : i + n_in + n_out] are consecutive at ``step``.

    A window never spans a missing frame (absent from ``times``, or True in the boolean ``missing``, e.g.
    a radar outage) and lies entirely inside the inclusive period [start, end] (None: open-ended), so
    windows of two periods never overlap. ``step`` defaults to the archive's. A DataError if the period
    holds no complete window.
    """
    t = _datetimes(times)
    n = n_in + n_out
    if n_in < 1 or n_out < 0:
        raise ValueError(f"n_in must be >= 1 and n_out >= 0, got {n_in}, {n_out}")
    step = time_step(t) if step is None else pd.Timedelta(step).to_timedelta64()
    inside = np.ones(t.size, bool)
    if start is not None:
        inside &= t >= np.datetime64(pd.Timestamp(start))
    if end is not None:
        inside &= t <= np.datetime64(pd.Timestamp(end))
    if missing is not None:
        inside &= ~np.asarray(missing, bool)
    good = (np.diff(t) == step) & inside[:-1] & inside[1:]  # link i -> i+1 usable
    links = np.concatenate([[0], np.cumsum(good)])
    i = np.arange(max(t.size - n + 1, 0))
    ok = inside[i] & (links[i + n - 1] - links[i] == n - 1)
    starts = i[ok]
    if starts.size == 0:
        raise DataError(f"period {start} .. {end}: {int(inside.sum())} frames, none of them starting {n} = {n_in} "
                        f"+ {n_out} consecutive frames at step {pd.Timedelta(step)}; expected a longer period")
    return starts


class RainTransform(torch.nn.Module):
    """Rain rate [mm/h] <-> network space: ``(g(R) - mean) / std`` with g one of

    * ``"log1p"``: log(1 + R);
    * ``"dBR"``: 10 log10(R) for R >= ``threshold_mm_h``, ``zero_dbr`` below (default 5 dB under the
      threshold's dBR, as pysteps does), so dry pixels sit a clear gap below the lightest rain;
    * ``"none"``: R itself.

    ``mean`` / ``std`` are buffers (0 and 1 until :meth:`fit`), so they travel in the state_dict and the
    checkpoint. NaN passes through. Works on torch tensors and numpy arrays, returning the same type;
    :meth:`inverse` returns a non-negative rate.
    """

    KINDS = ("log1p", "dBR", "none")

    def __init__(self, kind: str = "log1p", threshold_mm_h: float = 0.1, zero_dbr: float | None = None):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        self.kind = kind
        self.threshold_mm_h = float(threshold_mm_h)
        self.threshold_dbr = 10.0 * float(np.log10(threshold_mm_h))
        self.zero_dbr = self.threshold_dbr - 5.0 if zero_dbr is None else float(zero_dbr)
        self.register_buffer("mean", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("std", torch.tensor(1.0, dtype=torch.float64))

    def _g(self, r: torch.Tensor) -> torch.Tensor:
        if self.kind == "log1p":
            return torch.log1p(r.clamp(min=0))
        if self.kind == "dBR":
            value = torch.where(r >= self.threshold_mm_h, 10.0 * torch.log10(r.clamp(min=self.threshold_mm_h)),
                                torch.full_like(r, self.zero_dbr))
            return torch.where(torch.isnan(r), r, value)
        return r

    def _g_inverse(self, v: torch.Tensor) -> torch.Tensor:
        if self.kind == "log1p":
            return torch.expm1(v).clamp(min=0)
        if self.kind == "dBR":
            return torch.where(v >= self.threshold_dbr, 10.0 ** (v / 10.0), torch.where(torch.isnan(v), v, 0 * v))
        return v.clamp(min=0)

    @staticmethod
    def _map(fn, x):
        if isinstance(x, torch.Tensor):
            return fn(x)
        array = np.asarray(x)
        return fn(torch.from_numpy(array)).numpy().astype(array.dtype, copy=False)

    def forward(self, rain):
        """Rain rate [mm/h] -> standardised network value."""
        return self._map(lambda r: (self._g(r) - self.mean.to(r.dtype)) / self.std.to(r.dtype), rain)

    def inverse(self, value):
        """Standardised network value -> rain rate [mm/h], >= 0."""
        return self._map(lambda v: self._g_inverse(v * self.std.to(v.dtype) + self.mean.to(v.dtype)), value)

    def moments(self, rain) -> np.ndarray:
        """[count, sum, sum of squares] of g(R) over the finite values of ``rain`` [mm/h] (float64): add
        them up over frames and pass the total to :meth:`fit_moments` to fit without holding all frames."""
        g = self._g(torch.as_tensor(np.asarray(rain) if not isinstance(rain, torch.Tensor) else rain,
                                    dtype=torch.float64))
        g = g[~torch.isnan(g)]
        return np.array([g.numel(), float(g.sum()), float((g * g).sum())])

    @torch.no_grad()
    def fit_moments(self, moments) -> "RainTransform":
        """Set mean and std of g(R) from summed :meth:`moments`."""
        n, s, ss = (float(v) for v in moments)
        mean = s / n if n > 0 else float("nan")
        std = float(np.sqrt(max(ss / n - mean * mean, 0.0))) if n > 0 else float("nan")
        if not np.isfinite(mean) or not std > 0:
            raise DataError(f"cannot fit the {self.kind} transform: mean {mean}, std {std} (no or constant data)")
        self.mean.fill_(mean)
        self.std.fill_(std)
        return self

    @torch.no_grad()
    def fit(self, rain) -> "RainTransform":
        """Set mean and std of g(R) over ``rain`` [mm/h] (NaN ignored): a tensor, an array, or a lazy
        DataArray, which is reduced frame by frame (chunk by chunk) without being loaded at once."""
        if isinstance(rain, xr.DataArray) and rain.chunks is not None:
            import dask  # noqa: PLC0415

            parts = rain.data.map_blocks(lambda a: self.moments(a)[None, None, None, :], dtype=np.float64,
                                         chunks=((1,) * len(rain.data.chunks[0]), (1,) * len(rain.data.chunks[1]),
                                                 (1,) * len(rain.data.chunks[2]), (3,)), new_axis=3)
            with dask.config.set(scheduler="synchronous"):
                total = parts.sum(axis=(0, 1, 2)).compute()
            return self.fit_moments(total)
        return self.fit_moments(self.moments(rain.values if isinstance(rain, xr.DataArray) else rain))

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, threshold_mm_h={self.threshold_mm_h}, mean={float(self.mean):.4g}, std={float(self.std):.4g}"
