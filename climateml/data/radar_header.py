"""Radar archive files and their headers: which files make an archive, what one file holds (times, grid, units),
and the unit conversion of its variable to a rain rate [mm/h].

Nothing here reads a field: :func:`read_header` reads a file's coordinates, times and attributes (netCDF4 for
NetCDF, xarray for Zarr, h5py for ODIM HDF5 through :mod:`climateml.data.odim`) and checks them, so that the
reader (:class:`climateml.data.radar.RadarReader`) can then read single frames straight from their files.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pandas as pd

from climateml.data import odim
# HDF5_LOCK, xarray's own: netCDF4/HDF5 is not thread-safe, so reads take turns (not re-entrant)
from climateml.data.io import HDF5_LOCK, DataError, open_dataset
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
        if path.is_dir() and not is_zarr(path):
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


def is_zarr(path: Path) -> bool:
    return path.suffix == ".zarr" or any((path / m).exists() for m in (".zgroup", ".zattrs", "zarr.json"))


def _canonical_units(units: str) -> str:
    return str(units).lower().replace("**", "").replace("^", "").replace(" ", "").replace(".", "")


def conversion(attrs: dict, path: Path, variable: str) -> tuple[str, float]:
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


def read_header(path: Path, variable: str) -> dict:
    """Metadata of one file: its frames' times and accumulation intervals, the variable's on-disk dims,
    the grid's coordinates and the unit conversion. Nothing but coordinates and times is read."""
    if odim.is_odim(path):
        return _odim_header(path, variable)
    if not is_zarr(path):
        return _describe_piece(_netcdf_header(path), path, variable, zarr=False)
    ds = open_dataset(path)
    try:
        header = {str(n): (v.dims, v.values if v.ndim <= 1 else None, dict(v.attrs)) for n, v in ds.variables.items()}
    finally:
        ds.close()
    return _describe_piece(header, path, variable, zarr=True)


def _odim_header(path: Path, quantity: str) -> dict:
    """:func:`read_header`'s answer for one ODIM HDF5 composite (one frame, grid from ``where``)."""
    header = odim.odim_header(path, quantity, HDF5_LOCK)
    kind, factor = conversion(header["attrs"], path, quantity)
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
        with HDF5_LOCK, netCDF4.Dataset(path, "r") as nc:  # HDF5 is not thread-safe: see climateml.data.radar.RadarReader.read
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


def _describe_piece(header: dict, path: Path, variable: str, zarr: bool) -> dict:
    """What the reader (:class:`~climateml.data.radar.RadarReader`) needs of one file, from its header
    {name: (dims, values, attrs)}, checked; ``zarr``: whether the file is a Zarr store (:func:`read_header` looked)."""
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
    kind, factor = conversion(var_attrs, path, variable)
    interval = None if start is None else (times - start)
    if interval is not None and np.any(interval <= np.timedelta64(0, "ns")):
        raise DataError(f"{path}: start_time is not before valid_time; expected the start of the accumulation")
    return {"path": path, "zarr": zarr, "odim": False, "times": times, "interval": interval, "kind": kind,
            "factor": factor, "spatial": spatial, "coords": coords, "units": var_attrs.get("units"),
            "disk_dims": tuple(on_disk.get(d, d) for d in var_dims),
            "disk_names": {"time": time_dim, **{d: on_disk.get(d, d) for d in spatial}}}


def read_archive_headers(paths: str | Path | Sequence[str | Path], variable: str) -> list[dict]:
    """:func:`read_header` of every file of an archive (:func:`resolve_paths`), checked to be on one grid; only
    the first file keeps its coordinates (the archive's), so the index stays small for many files (a process
    that reads it can send it to the others: :meth:`climateml.data.base.BaseDataModule.fit_once`)."""
    pieces = [read_header(path, variable) for path in resolve_paths(paths)]
    check_one_grid(pieces, variable)
    return [pieces[0], *({**p, "coords": None} for p in pieces[1:])]


def check_one_grid(pieces: Sequence[dict], variable: str) -> None:
    """A DataError naming the first file whose grid (dimensions, ODIM projection and corners, coordinates) differs
    from the first file's: an archive is on one grid."""
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


def _grid_text(piece: dict) -> str:
    """A grid in words for error messages: size, cell size and (ODIM) projection and lower-left corner."""
    gid = piece.get("grid_id")
    if gid is None:
        return f"a CF grid of {' x '.join(str(piece['coords'][d][0].size) for d in piece['spatial'])} cells"
    ny, nx, dx, dy, projdef, corners = gid
    ll = dict(corners)
    return (f"{ny} x {nx} cells of {dy:g} x {dx:g} km, {projdef!r}, lower-left corner "
            f"({ll.get('LL_lon')}, {ll.get('LL_lat')})")
