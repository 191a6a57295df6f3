"""Radar nowcasting windows: ``n_in`` past frames -> ``n_out`` future frames of rain rate [mm/h], read lazily.

The archive (one file, many one-frame files, a glob, NetCDF or Zarr; see :mod:`climateml.data.radar`) is
opened once per process, lazily: a sample reads only its own ``n_in + n_out`` frames, so a day of
512 x 512 frames never needs to be in memory at once. Windows are cut per period and never span a
missing frame nor straddle two periods (no leakage between train, validation and test).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Sequence

import dask
import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch.utils.data import Dataset

from climateml.data.base import ClimateDataModule, DataSpec
from climateml.data.radar import RainTransform, open_radar, resolve_paths, time_step, window_starts
from climateml.errors import ConfigError, DataError, check_choice, check_positive

VARIABLE = "rain_rate"


class RadarArchive:
    """The archive's rain rate [mm/h], opened lazily and again in each process (DataLoader workers open
    their own file handles after the fork instead of sharing the parent's)."""

    def __init__(self, paths, variable: str, zr_a: float, zr_b: float, check_nan: bool = True):
        self.paths, self.variable, self.zr_a, self.zr_b = paths, variable, zr_a, zr_b
        self._rain, self._pid = None, None
        self._check_nan = check_nan

    @property
    def rain(self) -> xr.DataArray:
        if self._rain is None or self._pid != os.getpid():
            self._rain = open_radar(self.paths, self.variable, self.zr_a, self.zr_b, check_nan=self._check_nan)
            self._pid, self._check_nan = os.getpid(), False  # checked once, in the first process
        return self._rain

    def frames(self, start: int, n: int) -> np.ndarray:
        """(n, y, x) float32 frames from index ``start``, read now (dask's synchronous scheduler: safe in workers)."""
        with dask.config.set(scheduler="synchronous"):
            return np.asarray(self.rain.isel(time=slice(start, start + n)).values, dtype=np.float32)

    def __getstate__(self):  # pickled into worker processes without open handles
        return {**self.__dict__, "_rain": None, "_pid": None}


class WindowDataset(Dataset):
    """Samples ``{"x": (n_in, y, x), "y": (n_out, y, x)}`` in mm/h (NaN where the radar saw nothing).

    With ``crop`` (training), a random [y, x] crop of the window (the same for every frame).
    """

    def __init__(self, archive: RadarArchive, starts: np.ndarray, n_in: int, n_out: int,
                 crop: Sequence[int] | None = None):
        self.archive, self.starts, self.n_in, self.n_out = archive, np.asarray(starts), n_in, n_out
        self.crop = tuple(crop) if crop else None

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        frames = self.archive.frames(int(self.starts[i]), self.n_in + self.n_out)
        if self.crop:
            h, w = min(self.crop[0], frames.shape[1]), min(self.crop[1], frames.shape[2])
            top = int(torch.randint(0, frames.shape[1] - h + 1, ()))
            left = int(torch.randint(0, frames.shape[2] - w + 1, ()))
            frames = frames[:, top:top + h, left:left + w]
        frames = torch.from_numpy(np.ascontiguousarray(frames))
        return {"x": frames[: self.n_in], "y": frames[self.n_in:]}


class NowcastingDataModule(ClimateDataModule):
    """Sliding windows of radar rain for nowcasting.

    Args:
        paths: a file, a directory, a glob or a list of them (NetCDF or Zarr).
        variable: the field's name in the files (accumulation, rate or reflectivity; converted to mm/h).
        n_in, n_out: past frames in, future frames (lead times) out, at the archive's time step.
        train_period, val_period, test_period: ``[start, end]`` time strings, inclusive. Windows lie
            wholly inside one period; a window spanning a missing frame is skipped.
        transform: the network's scale, fitted on the training frames only: "log1p" (log(1 + R)),
            "dBR" or "none"; ``rain_threshold`` [mm/h] is the dBR threshold.
        crop: random training crops of [y, x] cells for large domains; empty for whole frames.
        zr_a, zr_b: Z = a R^b for reflectivity archives.
        synthesize_if_missing: write sample data (``climateml synth nowcasting``) when ``paths`` match no
            file, with ``sample_options`` passed to the generator.
    """

    def __init__(
        self,
        paths: str = "data/radar",
        variable: str = "precipitation_amount",
        n_in: int = 4,
        n_out: int = 6,
        train_period: list[str] = [],
        val_period: list[str] = [],
        test_period: list[str] = [],
        transform: Literal["log1p", "dBR", "none"] = "log1p",
        rain_threshold: float = 0.1,
        crop: list[int] = [],
        zr_a: float = 200.0,
        zr_b: float = 1.6,
        synthesize_if_missing: bool = False,
        sample_options: dict = {},
        batch_size: int = 16,
        num_workers: int = 0,
        pin_memory: bool = False,
    ):
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
        check_positive("data.n_in", n_in)
        check_positive("data.n_out", n_out)
        check_choice("data.transform", transform, RainTransform.KINDS)
        check_positive("data.rain_threshold", rain_threshold)
        for name, period in (("train_period", train_period), ("val_period", val_period), ("test_period", test_period)):
            if len(period) != 2:
                raise ConfigError(f"data.{name} must be [start, end] time strings, got {period}")
            try:
                if pd.Timestamp(period[0]) > pd.Timestamp(period[1]):
                    raise ConfigError(f"data.{name} starts after it ends: {period}")
            except ValueError as err:
                raise ConfigError(f"data.{name}: {period} are not time strings ({err})") from err
        if crop and (len(crop) != 2 or min(crop) < 1):
            raise ConfigError(f"data.crop must be [y cells, x cells], both >= 1, or empty; got {crop}")
        self.paths, self.variable = paths, variable
        self.n_in, self.n_out = int(n_in), int(n_out)
        self.periods = {"train": list(train_period), "val": list(val_period), "test": list(test_period)}
        self.transform_kind, self.rain_threshold = transform, rain_threshold
        self.crop = list(crop)
        self.zr_a, self.zr_b = zr_a, zr_b
        self.synthesize_if_missing, self.sample_options = synthesize_if_missing, dict(sample_options)
        self.archive: RadarArchive | None = None
        self.starts: dict[str, np.ndarray] = {}

    def prepare_data(self) -> None:
        if not self.synthesize_if_missing:
            return
        try:
            resolve_paths(self.paths)
        except DataError:
            from climateml.data.synthetic.radar import generate_radar

            out = Path(self.paths)
            generate_radar(out if not any(c in str(out) for c in "*?[") else out.parent, **self.sample_options)

    def build(self) -> None:
        self.prepare_data()
        self.archive = RadarArchive(self.paths, self.variable, self.zr_a, self.zr_b)
        rain = self.archive.rain
        self.times = rain["time"].values
        self.step = time_step(self.times)
        for split, (start, end) in self.periods.items():
            try:
                self.starts[split] = window_starts(self.times, self.n_in, self.n_out, start, end, self.step)
            except DataError as err:
                raise DataError(f"{self.paths}: {split} period: {err}") from err
        transform = RainTransform(self.transform_kind, self.rain_threshold)
        train_frames = np.unique((self.starts["train"][:, None] + np.arange(self.n_in + self.n_out)).ravel())
        with dask.config.set(scheduler="synchronous"):
            transform.fit(rain.isel(time=train_frames))
        self.statistics = {"rain_mean": transform.mean.float().clone(), "rain_std": transform.std.float().clone()}
        self.train_dataset = WindowDataset(self.archive, self.starts["train"], self.n_in, self.n_out, self.crop or None)
        self.val_dataset = WindowDataset(self.archive, self.starts["val"], self.n_in, self.n_out)
        self.test_dataset = WindowDataset(self.archive, self.starts["test"], self.n_in, self.n_out)
        self.predict_dataset = self.test_dataset

    @property
    def grid(self) -> xr.Dataset:
        self.setup()
        rain = self.archive.rain
        return xr.Dataset(coords={d: rain[d] for d in rain.dims[1:]})

    @property
    def grid_spacing_km(self) -> float:
        """Mean spacing of the projected grid [km] (x and y in km, as CF radar composites store them)."""
        grid = self.grid
        dims = list(grid.dims)
        return float(np.mean([np.abs(np.diff(grid[d].values)).mean() for d in dims]))

    @property
    def spec(self) -> DataSpec:
        self.setup()
        shape = tuple(self.grid.sizes.values())
        step_min = float(self.step / np.timedelta64(1, "m"))
        inputs = [f"{VARIABLE}_t-{(self.n_in - 1 - i) * step_min:g}min" for i in range(self.n_in)]
        outputs = [f"{VARIABLE}_t+{(i + 1) * step_min:g}min" for i in range(self.n_out)]
        return DataSpec(inputs, outputs, (self.n_in, *shape), (self.n_out, *shape), dict(self.statistics),
                        {"transform": self.transform_kind, "rain_threshold": self.rain_threshold,
                         "time_step_minutes": step_min})

    # ---- back to xarray ----
    def _split(self, split: str) -> str:
        return "test" if split == "predict" else split

    def issue_times(self, split: str) -> np.ndarray:
        """The time of the last input frame of each window (the forecast reference time)."""
        self.setup()
        return self.times[self.starts[self._split(split)] + self.n_in - 1]

    @property
    def lead_times(self) -> np.ndarray:
        return self.step * np.arange(1, self.n_out + 1)

    def _dataset(self, values: np.ndarray, split: str, name: str = VARIABLE) -> xr.Dataset:
        grid = self.grid
        dims = ("time", "lead_time", *grid.dims)
        coords = {"time": self.issue_times(split), "lead_time": self.lead_times, **{d: grid[d] for d in grid.dims}}
        da = xr.DataArray(values, dims=dims, coords=coords, name=name,
                          attrs={"units": "mm h-1", "long_name": "rain rate", "standard_name": "rainfall_rate"})
        return da.to_dataset()

    def to_xarray(self, values: torch.Tensor | np.ndarray, split: str) -> dict[str, xr.Dataset]:
        """Nowcasts (windows, lead_time, y, x) [mm/h] on the archive's grid, ``time`` = issue time."""
        values = values.detach().float().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
        n = len(self.starts[self._split(split)])
        if values.shape[:2] != (n, self.n_out):
            raise DataError(f"predictions of shape {values.shape} do not fit the {n} {split} windows x {self.n_out} "
                            "lead times")
        return {self._split(split): self._dataset(values, split)}

    def _stack(self, split: str, offset: int, n: int) -> np.ndarray:
        starts = self.starts[self._split(split)]
        return np.stack([self.archive.frames(int(s) + offset, n) for s in starts])

    def truth(self, split: str) -> dict[str, xr.Dataset]:
        """The observed frames at each window's lead times (NaN outside the radar's range)."""
        return {self._split(split): self._dataset(self._stack(split, self.n_in, self.n_out), split)}

    def past_frames(self, split: str) -> np.ndarray:
        """(windows, n_in, y, x) [mm/h]: what the baselines extrapolate from."""
        return self._stack(split, 0, self.n_in)
