"""Reading radar rain archives: lazy (time, y, x) rain rate in mm/h, sample windows, and rain transforms.

An archive is one file with a ``time`` dimension, or many files each holding one frame with a scalar
``valid_time`` (or a length-1 ``time`` dimension), in NetCDF or Zarr. Accumulations, rates and
reflectivities are all converted to a rain rate in mm/h from the variable's ``units`` /
``standard_name``. Nothing is loaded at open time except coordinates (and, with ``check_nan``, one
streaming pass that keeps a single frame in memory at a time).
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

from climateml.data.io import DataError, open_dataset

SPATIAL_DIMS = (("y", "x"), ("lat", "lon"))
RENAMES = {"latitude": "lat", "longitude": "lon"}
TIME_NAMES = ("valid_time", "time")

# units spelled without blanks, '**' or '^', lower case
AMOUNT_UNITS = {"kgm-2": 1.0, "kg/m2": 1.0, "mm": 1.0}                                   # -> mm
RATE_UNITS = {"mm/h": 1.0, "mmh-1": 1.0, "mm/hr": 1.0, "mmhr-1": 1.0,                      # -> mm/h
              "kgm-2s-1": 3600.0, "kg/m2/s": 3600.0, "mms-1": 3600.0, "mm/s": 3600.0}
AMOUNT_NAMES = {"precipitation_amount", "rainfall_amount", "lwe_thickness_of_precipitation_amount",
                "thickness_of_rainfall_amount", "lwe_thickness_of_rainfall_amount"}
REFLECTIVITY_NAMES = {"equivalent_reflectivity_factor"}


def resolve_paths(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """Files of an archive from a file, a directory (its .nc / .zarr entries), a glob, or a list of those."""
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
            entries = sorted(p for p in path.iterdir() if p.suffix in (".nc", ".zarr") and not p.name.startswith("."))
            if not entries:
                raise DataError(f"{path}: directory holds no .nc or .zarr files")
            found += entries
        elif path.exists():
            found.append(path)
        else:
            raise DataError(f"{path}: no such file or directory")
    return found


def _is_zarr(path: Path) -> bool:
    return path.suffix == ".zarr" or any((path / m).exists() for m in (".zgroup", ".zattrs", "zarr.json"))


def _canonical_units(units: str) -> str:
    return str(units).lower().replace("**", "").replace("^", "").replace(" ", "").replace(".", "")


def _conversion(da: xr.DataArray, path: Path, variable: str) -> tuple[str, float]:
    """(kind, factor) with kind 'amount' (factor -> mm), 'rate' (factor -> mm/h) or 'dbz'."""
    units = _canonical_units(da.attrs.get("units", ""))
    name = str(da.attrs.get("standard_name", "")).lower()
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
    raise DataError(f"{path}: variable {variable!r} has units {da.attrs.get('units')!r} (standard_name "
                    f"{name or None!r}); expected an accumulation (kg m-2, mm), a rate (mm h-1, kg m-2 s-1) "
                    f"or a reflectivity (dBZ)")


def _scalar_time(ds: xr.Dataset, name: str) -> np.ndarray | None:
    if name in ds.variables and ds[name].ndim == 0:
        return np.atleast_1d(ds[name].values)
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
    """One file's frames as a lazy (time, y, x) DataArray, with its times, accumulation intervals and units."""
    ds = open_dataset(path)
    ds = ds.rename({k: v for k, v in RENAMES.items() if k in ds.dims or k in ds.coords})
    if variable not in ds.data_vars:
        raise DataError(f"{path}: variable {variable!r} is missing; the file has {sorted(map(str, ds.data_vars))}")
    da = ds[variable]
    dims = set(da.dims)
    if "time" in da.dims:
        times = _as_datetime(da["time"].values, path, "time")
        start = ds["start_time"].values if "start_time" in ds.variables else None
        if start is not None:
            start = np.broadcast_to(_as_datetime(np.atleast_1d(start), path, "start_time"), times.shape)
    else:
        for name in TIME_NAMES:
            value = _scalar_time(ds, name)
            if value is not None:
                times = _as_datetime(value, path, name)
                break
        else:
            raise DataError(f"{path}: variable {variable!r} has dims {tuple(da.dims)} and the file has no scalar "
                            f"valid_time or time; expected a time dimension or one scalar valid_time")
        start = _scalar_time(ds, "start_time")
        start = None if start is None else _as_datetime(start, path, "start_time")
        da = da.drop_vars([n for n in TIME_NAMES if n in da.coords]).expand_dims(time=times)
        dims = set(da.dims)
    spatial = next((pair for pair in SPATIAL_DIMS if dims == {"time", *pair}), None)
    if spatial is None:
        raise DataError(f"{path}: variable {variable!r} has dims {tuple(da.dims)}, expected (time, y, x) or "
                        f"(time, lat, lon), or the same without time plus a scalar valid_time")
    da = da.transpose("time", *spatial)
    da = da.drop_vars([c for c in da.coords if c not in ("time", *spatial)])
    for dim in spatial:
        if dim not in da.coords:
            raise DataError(f"{path}: variable {variable!r} has no {dim} coordinate values")
        step = np.diff(da[dim].values)
        if step.size and not (np.all(step > 0) or np.all(step < 0)):
            raise DataError(f"{path}: coordinate {dim} is not strictly monotonic")
    if not path.is_dir() and da.chunks is None:  # NetCDF: a lazy dask array, one frame per chunk
        da = da.chunk({"time": 1, spatial[0]: -1, spatial[1]: -1})
    kind, factor = _conversion(da, path, variable)
    interval = None if start is None else (times - start)
    if interval is not None and np.any(interval <= np.timedelta64(0, "ns")):
        raise DataError(f"{path}: start_time is not before valid_time; expected the start of the accumulation")
    return {"path": path, "da": da, "times": times, "interval": interval, "kind": kind, "factor": factor,
            "spatial": spatial, "units": da.attrs.get("units")}


def open_radar(
    paths: str | Path | Sequence[str | Path],
    variable: str,
    zr_a: float = 200.0,
    zr_b: float = 1.6,
    accumulation_minutes: float | None = None,
    check_nan: bool = True,
) -> xr.DataArray:
    """Rain rate [mm/h] on (time, y, x) or (time, lat, lon), lazy (one dask chunk per frame).

    ``paths``: a file, a directory, a glob or a list. Accumulations [mm or kg m-2] are divided by their
    interval: ``valid_time - start_time`` when the file has a ``start_time``, else ``accumulation_minutes``,
    else the archive's time step. Rates in kg m-2 s-1 are multiplied by 3600. Reflectivity [dBZ] becomes
    rain through Z = zr_a R^zr_b (Marshall-Palmer by default). Coordinates are kept as read (y may be
    descending) but must be the same in every file. ``check_nan`` streams through the data once to refuse
    an all-NaN frame. Every problem is a DataError naming the file.
    """
    files = resolve_paths(paths)
    pieces = [_open_piece(path, variable) for path in files]
    first = pieces[0]
    for piece in pieces[1:]:
        if piece["spatial"] != first["spatial"]:
            raise DataError(f"{piece['path']}: variable {variable!r} is on {piece['spatial']}, but {first['path']} "
                            f"is on {first['spatial']}; expected one grid for the archive")
        for dim in first["spatial"]:
            a, b = first["da"][dim].values, piece["da"][dim].values
            if a.shape != b.shape or not np.allclose(a, b, rtol=0, atol=1e-6 * max(1.0, float(np.abs(a).max()))):
                raise DataError(f"{piece['path']}: grid differs from {first['path']}: {dim} has {b.size} values "
                                f"from {b[0]:g} to {b[-1]:g}, expected {a.size} from {a[0]:g} to {a[-1]:g}")
    times = np.concatenate([p["times"] for p in pieces])
    origin = [p["path"] for p in pieces for _ in range(p["times"].size)]
    gaps = np.diff(times)
    if np.any(gaps <= np.timedelta64(0, "ns")):
        i = int(np.argmax(gaps <= np.timedelta64(0, "ns"))) + 1
        what = "duplicated" if times[i] == times[i - 1] else "earlier than the previous frame"
        raise DataError(f"{origin[i]}: time {times[i]} is {what} ({times[i - 1]} in {origin[i - 1]}); "
                        f"expected strictly increasing times (sort the files, drop duplicates)")
    step = time_step(times) if times.size > 1 else None
    converted = []
    for piece in pieces:
        da, kind = piece["da"], piece["kind"]
        if kind == "amount":
            interval = piece["interval"]
            if interval is None:
                if accumulation_minutes is not None:
                    interval = np.full(piece["times"].shape, np.timedelta64(int(accumulation_minutes * 60e9), "ns"))
                elif step is not None:
                    interval = np.full(piece["times"].shape, step)
                else:
                    raise DataError(f"{piece['path']}: accumulation {variable!r} of a single frame without "
                                    f"start_time; pass accumulation_minutes")
            hours = interval / np.timedelta64(1, "h")
            da = da * (piece["factor"] / xr.DataArray(hours, dims="time"))
        elif kind == "rate":
            da = da * piece["factor"] if piece["factor"] != 1.0 else da
        else:
            da = (10.0 ** (da / 10.0) / zr_a) ** (1.0 / zr_b)
        converted.append(da.astype(np.float32))
    rain = converted[0] if len(converted) == 1 else xr.concat(
        converted, dim="time", coords="minimal", compat="override", join="override")
    rain.name = "rain_rate"
    rain.attrs = {"units": "mm h-1", "long_name": "rain rate", "source_variable": variable,
                  "source_units": str(first["units"])}
    if step is not None:
        rain.attrs["time_step_minutes"] = float(step / np.timedelta64(1, "m"))
    if check_nan:
        empty = rain.isnull().all(first["spatial"]).values
        if empty.any():
            i = int(np.argmax(empty))
            raise DataError(f"{origin[i]}: variable {variable!r} is NaN everywhere at time {times[i]}; "
                            f"expected some valid pixels (delete the file to mark the frame missing)")
    return rain


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


def window_starts(times, n_in: int, n_out: int, start=None, end=None, step=None) -> np.ndarray:
    """Indices i into ``times`` such that times[i : i + n_in + n_out] are consecutive at ``step``.

    A window never spans a missing frame and lies entirely inside the inclusive period [start, end]
    (None: open-ended), so windows of two periods never overlap. ``step`` defaults to the archive's.
    A DataError if the period holds no complete window.
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

    @torch.no_grad()
    def fit(self, rain) -> "RainTransform":
        """Set mean and std of g(R) over ``rain`` [mm/h] (NaN ignored): a tensor, an array, or a lazy
        DataArray, which is reduced chunk by chunk without being loaded at once."""
        if isinstance(rain, xr.DataArray):
            g = xr.apply_ufunc(lambda a: self._g(torch.from_numpy(np.asarray(a, np.float64))).numpy(), rain,
                               dask="parallelized", output_dtypes=[np.float64])
            mean, std = float(g.mean(skipna=True)), float(g.std(skipna=True))
        else:
            values = self._g(torch.as_tensor(np.asarray(rain) if not isinstance(rain, torch.Tensor) else rain,
                                             dtype=torch.float64))
            values = values[~torch.isnan(values)]
            mean, std = float(values.mean()), float(values.std(unbiased=False))
        if not np.isfinite(mean) or not std > 0:
            raise DataError(f"cannot fit the {self.kind} transform: mean {mean}, std {std} (no or constant data)")
        self.mean.fill_(mean)
        self.std.fill_(std)
        return self

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, threshold_mm_h={self.threshold_mm_h}, mean={float(self.mean):.4g}, std={float(self.std):.4g}"
