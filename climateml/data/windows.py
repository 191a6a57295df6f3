"""Sample windows of a time series of frames: the archive's time step, and the starts of windows of ``n_in`` past
+ ``n_out`` future consecutive frames inside a period (the train / val / test splits by period)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from climateml.errors import DataError


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
