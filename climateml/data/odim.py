"""ODIM HDF5 composites (the EUMETNET OPERA standard, ODIM_H5 2.x), one file per frame, read with h5py.

What is read from a file (names as in the ODIM_H5 specification):

* the field: ``/datasetN/dataM/data`` (a 2-D image, row 0 at the top: the first row is the northern edge);
  the dataset picked is the first whose ``quantity`` (in ``datasetN/dataM/what`` or ``datasetN/what``) is
  the requested one (``--data.variable RATE``);
* ``gain``, ``offset``, ``nodata``, ``undetect`` from ``datasetN/dataM/what``, else ``datasetN/what``: a
  physical value is ``raw * gain + offset``; a raw value equal to ``nodata`` is outside the radar network's
  range (NaN), one equal to ``undetect`` was looked at and found dry (0 mm/h); float data that already
  carries NaN is read as it is;
* ``quantity``: ``RATE`` [mm/h], ``ACRR`` [mm, accumulated between ``startdate/starttime`` and
  ``enddate/endtime``], ``DBZH`` / ``DBZV`` / ``TH`` / ``TV`` [dBZ], converted to mm/h by the radar reader's
  unit logic (:func:`climateml.data.radar_header.conversion`);
* the grid from the root ``where``: ``xsize``/``ysize`` cells of ``xscale``/``yscale`` metres in the
  projection ``projdef``, with the corners' ``LL_lon``/``LL_lat`` ... ``UR_lon``/``UR_lat``. The returned
  ``x``/``y`` coordinates [km] are cell centres measured from the grid's lower-left corner (x east, y north,
  y descending as the rows are stored); the projection and the corners travel in their attributes, so two
  files are on the same grid only if size, cell size, projection and corners all agree;
* the valid time: the root ``what`` ``date`` + ``time``, else the dataset's ``enddate`` + ``endtime``.

Every problem is a :class:`~climateml.errors.DataError` naming the file and what is wrong.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from climateml.errors import DataError

SUFFIXES = (".h5", ".hdf", ".hdf5")
#: ODIM quantity -> CF-style units, so the radar reader's one unit logic converts it to mm/h
QUANTITY_UNITS = {"RATE": "mm/h", "ACRR": "mm", "DBZH": "dBZ", "DBZV": "dBZ", "TH": "dBZ", "TV": "dBZ"}
CORNERS = ("LL_lon", "LL_lat", "UL_lon", "UL_lat", "UR_lon", "UR_lat", "LR_lon", "LR_lat")


def is_odim(path: Path) -> bool:
    """An ODIM file by its suffix (.h5, .hdf, .hdf5)."""
    return Path(path).suffix.lower() in SUFFIXES


def _text(value) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("ascii", "replace").strip("\x00 ")
    if isinstance(value, np.ndarray) and value.size == 1:
        return _text(value.item())
    return str(value).strip()


def _attrs(h5, group: str) -> dict:
    return dict(h5[group].attrs) if group in h5 else {}


def _time(date, time, path: Path, what: str) -> np.datetime64:
    text = f"{_text(date)}{_text(time)}"
    try:
        return np.datetime64(pd.Timestamp(pd.to_datetime(text, format="%Y%m%d%H%M%S")), "ns")
    except (ValueError, TypeError) as err:
        raise DataError(f"{path}: {what} date/time {_text(date)!r} {_text(time)!r} are not YYYYMMDD and HHMMSS") from err


def _sorted_groups(h5, prefix: str, parent: str = "") -> list[str]:
    base = h5[parent] if parent else h5
    names = [n for n in base if n.startswith(prefix) and n[len(prefix):].isdigit()]
    return [f"{parent}/{n}" if parent else n for n in sorted(names, key=lambda n: int(n[len(prefix):]))]


def find_quantity(h5, quantity: str, path: Path) -> tuple[str, dict]:
    """(path of the data array, its what attributes: dataset's, overridden by the data group's) of the first
    dataset holding ``quantity``; a DataError listing the quantities there are otherwise."""
    found = []
    for dataset in _sorted_groups(h5, "dataset"):
        outer = _attrs(h5, f"{dataset}/what")
        for data in _sorted_groups(h5, "data", dataset):
            what = {**outer, **_attrs(h5, f"{data}/what")}
            name = _text(what.get("quantity", ""))
            found.append(name or "?")
            if name == quantity:
                if "data" not in h5[data]:
                    raise DataError(f"{path}: {data} has quantity {quantity!r} but no data array ({data}/data)")
                return f"{data}/data", what
    if not found:
        raise DataError(f"{path}: no /datasetN/dataM groups; expected an ODIM_H5 file (dataset1/data1/data ...)")
    raise DataError(f"{path}: no dataset with quantity {quantity!r}; the file has {found} "
                    f"(--data.variable names the ODIM quantity, e.g. RATE, ACRR or DBZH)")


def odim_header(path: Path, quantity: str, lock) -> dict:
    """What the radar reader needs of one ODIM file (times, grid, unit, scaling, data path), read under ``lock``
    (HDF5 is not thread-safe) without reading the field itself. See :func:`climateml.data.radar_header.read_header`."""
    import h5py  # noqa: PLC0415

    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes); regenerate or download it again")
    try:
        with lock, h5py.File(path, "r") as h5:
            data_path, what = find_quantity(h5, quantity, path)
            shape = h5[data_path].shape
            root_what, where = _attrs(h5, "what"), _attrs(h5, "where")
    except DataError:
        raise
    except Exception as err:  # h5py raises OSError, KeyError ... for a damaged file
        reason = (str(err).strip().splitlines() or [""])[0][:120]
        raise DataError(f"{path}: cannot be read as ODIM HDF5, the file looks corrupt or truncated "
                        f"({type(err).__name__}: {reason}); download it again") from err
    if len(shape) != 2:
        raise DataError(f"{path}: {data_path} has shape {shape}, expected a 2-D image (rows, columns)")
    if "date" in root_what and "time" in root_what:
        valid = _time(root_what["date"], root_what["time"], path, "what")
    elif "enddate" in what and "endtime" in what:
        valid = _time(what["enddate"], what["endtime"], path, f"{data_path.rsplit('/', 1)[0]} what end")
    else:
        raise DataError(f"{path}: no valid time: expected what/date and what/time (or enddate/endtime in the "
                        f"dataset's what)")
    interval = None
    if {"startdate", "starttime", "enddate", "endtime"} <= set(what):
        start = _time(what["startdate"], what["starttime"], path, "startdate/starttime")
        end = _time(what["enddate"], what["endtime"], path, "enddate/endtime")
        if end > start:
            interval = np.array([end - start])
    name = _text(what["quantity"])
    if name not in QUANTITY_UNITS:
        raise DataError(f"{path}: quantity {name!r} is not rain; expected one of {sorted(QUANTITY_UNITS)}")
    missing = [k for k in ("xscale", "yscale", "projdef") if k not in where]
    if missing:
        raise DataError(f"{path}: where has no {missing}; expected the grid's projdef, xscale and yscale")
    ny, nx = shape
    for key, n in (("ysize", ny), ("xsize", nx)):
        if key in where and int(where[key]) != n:
            raise DataError(f"{path}: where/{key} is {int(where[key])} but {data_path} has {n} cells")
    dx, dy = float(where["xscale"]) / 1000.0, float(where["yscale"]) / 1000.0
    projdef = _text(where["projdef"])
    corners = {k: round(float(where[k]), 6) for k in CORNERS if k in where}
    grid_attrs = {"units": "km", "projdef": projdef, "origin": "lower-left corner of the grid",
                  **{k: v for k, v in corners.items()}}
    x = (np.arange(nx) + 0.5) * dx
    y = (ny - np.arange(ny) - 0.5) * dy  # row 0 is the top (northern) row: y descending
    coords = {"y": (y, {**grid_attrs, "standard_name": "projection_y_coordinate"}),
              "x": (x, {**grid_attrs, "standard_name": "projection_x_coordinate"})}
    scaling = {"gain": float(what.get("gain", 1.0)), "offset": float(what.get("offset", 0.0)),
               "nodata": float(what["nodata"]) if "nodata" in what else None,
               "undetect": float(what["undetect"]) if "undetect" in what else None}
    return {"times": np.array([valid]), "interval": interval, "attrs": {"units": QUANTITY_UNITS[name]},
            "quantity": name, "coords": coords, "data_path": data_path, "scaling": scaling,
            "grid_id": (ny, nx, dx, dy, projdef, tuple(sorted(corners.items())))}


def read_odim(h5, data_path: str, scaling: dict, rows: slice, cols: slice, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(physical field (rows, cols) of an open file, where it is ``undetect``): raw * gain + offset, ``nodata``
    -> NaN. The caller sets the ``undetect`` cells to 0 mm/h after converting the field to a rain rate (0 dBZ
    is not dry)."""
    raw = np.asarray(h5[data_path][rows, cols])
    values = raw.astype(dtype) * dtype(scaling["gain"]) + dtype(scaling["offset"])
    if scaling["nodata"] is not None:
        values[raw == scaling["nodata"]] = np.nan
    dry = raw == scaling["undetect"] if scaling["undetect"] is not None else np.zeros(raw.shape, bool)
    return values, dry


def write_odim(path: str | Path, data: np.ndarray, valid_time, quantity: str = "RATE", gain: float = 1.0,
               offset: float = 0.0, nodata: float = 255.0, undetect: float = 0.0, xscale: float = 1000.0,
               yscale: float = 1000.0, projdef: str = "+proj=aeqd +lat_0=52.0 +lon_0=5.0 +units=m +ellps=WGS84",
               corners: dict | None = None, accumulation_minutes: float | None = None,
               extra_quantities: dict | None = None, scaling_in_data_group: bool = False) -> Path:
    """Write one ODIM_H5 2.1 composite frame with h5py, atomically: ``data`` (rows, columns, row 0 north) as
    stored (raw values, already scaled and with ``nodata``/``undetect`` in place) in ``/dataset1/data1/data``,
    ``quantity`` and scaling in ``dataset1/what`` (or ``dataset1/data1/what`` with ``scaling_in_data_group``),
    the grid in ``where``, the valid time in ``what``; ``extra_quantities`` {quantity: raw array} go to
    dataset2, dataset3 ... (e.g. ``QIND``). For tests and for cropping real composites."""
    import h5py  # noqa: PLC0415

    from climateml.writers import atomic_path  # noqa: PLC0415

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    valid = pd.Timestamp(valid_time)
    start = valid - pd.Timedelta(minutes=accumulation_minutes or 5.0)
    ny, nx = data.shape
    corners = corners or {"LL_lon": 0.0, "LL_lat": 50.0, "UL_lon": 0.0, "UL_lat": 51.0, "UR_lon": 1.0,
                          "UR_lat": 51.0, "LR_lon": 1.0, "LR_lat": 50.0}
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs["Conventions"] = np.bytes_("ODIM_H5/V2_1")
        what = h5.create_group("what")
        for k, v in {"object": "COMP", "version": "H5rad 2.1", "source": "ORG:247",
                     "date": valid.strftime("%Y%m%d"), "time": valid.strftime("%H%M%S")}.items():
            what.attrs[k] = np.bytes_(v)
        where = h5.create_group("where")
        where.attrs["projdef"] = np.bytes_(projdef)
        where.attrs["xsize"], where.attrs["ysize"] = np.int64(nx), np.int64(ny)
        where.attrs["xscale"], where.attrs["yscale"] = float(xscale), float(yscale)
        for k, v in corners.items():
            where.attrs[k] = float(v)
        for i, (name, raw) in enumerate({quantity: data, **(extra_quantities or {})}.items(), start=1):
            group = h5.create_group(f"dataset{i}")
            dwhat = group.create_group("what")
            for k, v in {"product": "COMP", "startdate": start.strftime("%Y%m%d"), "starttime": start.strftime("%H%M%S"),
                         "enddate": valid.strftime("%Y%m%d"), "endtime": valid.strftime("%H%M%S")}.items():
                dwhat.attrs[k] = np.bytes_(v)
            scaled = group.create_group("data1/what") if scaling_in_data_group else dwhat
            scaled.attrs["quantity"] = np.bytes_(name)
            for k, v in {"gain": gain, "offset": offset, "nodata": nodata, "undetect": undetect}.items():
                scaled.attrs[k] = float(v)
            image = group.require_group("data1").create_dataset("data", data=raw, compression="gzip")
            image.attrs["CLASS"], image.attrs["IMAGE_VERSION"] = np.bytes_("IMAGE"), np.bytes_("1.2")
    return path
