"""Radar nowcasting windows: ``n_in`` past frames -> ``n_out`` future frames of rain rate [mm/h], read lazily.

The archive (one file, many one-frame files, a glob, NetCDF or Zarr; see :mod:`climateml.data.radar`) is
indexed once, frame by frame (file + position in the file); a sample then reads only its own
``n_in + n_out`` frames straight from their files, or from a frame cache of bounded size (``cache_mb``),
so a day of 512 x 512 frames (288 MiB) never needs to be in memory at once. Windows are cut per period and never
span a missing frame nor straddle two periods (no leakage between train, validation and test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch.utils.data import Dataset

from climateml.contracts import NowcastBatchData, NowcastData
from climateml.data.adapter import FieldLayout
from climateml.data.base import ClimateDataModule, DataSpec, check_crop, check_periods
from climateml.data.io import open_dataset, sample_data_folder
from climateml.data.normalize import Moments
from climateml.data.radar import RadarReader
from climateml.data.radar_header import FILE_PATTERNS, read_archive_headers, resolve_paths
from climateml.data.windows import window_starts
from climateml.errors import DataError, check_choice, check_fraction, check_positive
from climateml.models.rain_transform import RainTransform

VARIABLE = "rain_rate"
RAIN_ATTRS = {"units": "mm h-1", "long_name": "rain rate", "standard_name": "rainfall_rate"}


class WindowDataset(Dataset):
    """Samples ``{"x": (n_in, y, x), "y": (n_out, y, x)}`` in mm/h (NaN where the radar saw nothing),
    each read from its frames' files when asked for (:class:`~climateml.data.radar.RadarReader`).

    With ``crop`` (training), a random [y, x] crop of the window (the same for every frame); without a
    frame cache only the crop is read from the files. With ``augment`` (training), the window is flipped up-down and left-right and (when
    square) transposed, each with probability 1/2: one of the 8 symmetries of the square, so the
    network sees rain move in every direction, not only the directions of the training days.
    """

    def __init__(self, reader: RadarReader, starts: np.ndarray, n_in: int, n_out: int,
                 crop: Sequence[int] | None = None, augment: bool = False):
        self.reader, self.starts, self.n_in, self.n_out = reader, np.asarray(starts), n_in, n_out
        self.crop = tuple(crop) if crop else None
        self.augment = bool(augment)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        start = int(self.starts[i])
        rows = cols = slice(None)
        if self.crop:
            _, ny, nx = self.reader.shape
            h, w = min(self.crop[0], ny), min(self.crop[1], nx)
            top = int(torch.randint(0, ny - h + 1, ()))
            left = int(torch.randint(0, nx - w + 1, ()))
            rows, cols = slice(top, top + h), slice(left, left + w)
        frames = torch.from_numpy(self.reader.read_frames(range(start, start + self.n_in + self.n_out), rows, cols))
        if self.augment:
            flips = [d for d, flip in zip((1, 2), torch.rand(2) < 0.5) if flip]
            if flips:
                frames = frames.flip(flips)
            if frames.shape[1] == frames.shape[2] and bool(torch.rand(()) < 0.5):
                frames = frames.transpose(1, 2)
            frames = frames.contiguous()
        return {"x": frames[: self.n_in], "y": frames[self.n_in:]}


class NowcastingDataModule(ClimateDataModule):
    """Sliding windows of radar rain for nowcasting.

    Args:
        paths: a file, a directory, a glob or a list of them (NetCDF or Zarr).
        variable: the field's name in the files (accumulation, rate or reflectivity; converted to mm/h).
        n_in, n_out: past frames in, future frames (lead times) out, at the archive's time step.
        train_period, val_period, test_period: ``[start, end]`` time strings, inclusive, not overlapping.
            Windows lie wholly inside one period; a window spanning a missing frame is skipped.
        transform: the network's scale, fitted on the training windows' frames only: "log1p"
            (log(1 + R)), "dBR" or "none"; ``rain_threshold`` [mm/h] is the dBR threshold.
        crop: random training crops of [y, x] cells for large domains; empty for whole frames.
        augment: random flips and transposes of the training windows (see :class:`WindowDataset`); off
            for archives where direction matters (e.g. rain tied to orography).
        zr_a, zr_b: Z = a R^b for reflectivity archives.
        accumulation_minutes: the interval of accumulations stored without a ``start_time`` (default:
            the archive's time step).
        cache_mb: memory [MiB] per process for converted frames, least recently used dropped first (0:
            read every frame from its file every time); ``max_open_files`` files kept open per process.
        region: a fixed part of the grid, ``{y: [low, high], x: [low, high]}`` in coordinate values (inclusive;
            a dimension left out is whole): only it is read, trained on and scored (e.g. a rainy part of a
            continental composite).
        rain_cap_quantile, rain_cap_factor: the physical cap on the model's nowcasts [mm/h] is ``rain_cap_factor``
            x the highest, over the training windows' frames, of each frame's ``rain_cap_quantile`` quantile
            (1: its maximum); it travels in the spec's statistics (``rain_cap``) and the checkpoint.
        synthesize_if_missing: write sample frames (``climateml synth nowcasting``) into ``paths`` (a glob's
            folder) when it does not exist or is empty, with ``sample_options`` passed to the generator; a folder of
            other files is an error, never written into (:func:`~climateml.data.io.may_write_sample_data`).
        batch_size, num_workers, pin_memory, multiprocessing_context: the loaders (see
            :class:`~climateml.data.base.BaseDataModule`); each worker opens its own files.
    """

    PROTOCOLS = (NowcastData, NowcastBatchData)  # what its evaluation calls (climateml.contracts)

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
        augment: bool = False,
        zr_a: float = 200.0,
        zr_b: float = 1.6,
        accumulation_minutes: float | None = None,
        cache_mb: float = 128.0,
        max_open_files: int = 64,
        region: dict = {},
        rain_cap_quantile: float = 1.0,
        rain_cap_factor: float = 2.0,
        synthesize_if_missing: bool = False,
        sample_options: dict = {},
        batch_size: int = 16,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        multiprocessing_context: str | None = None,
    ):
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         multiprocessing_context=multiprocessing_context)
        check_positive("data.n_in", n_in)
        check_positive("data.n_out", n_out)
        check_choice("data.transform", transform, RainTransform.KINDS)
        check_positive("data.rain_threshold", rain_threshold)
        check_periods({"train_period": train_period, "val_period": val_period, "test_period": test_period})
        crop = check_crop(crop, ("y", "x"))
        if accumulation_minutes is not None:
            check_positive("data.accumulation_minutes", accumulation_minutes)
        check_positive("data.cache_mb", cache_mb, allow_zero=True)
        check_positive("data.max_open_files", max_open_files)
        self.paths, self.variable = paths, variable
        self.n_in, self.n_out = int(n_in), int(n_out)
        self.periods = {"train": list(train_period), "val": list(val_period), "test": list(test_period)}
        self.transform_kind, self.rain_threshold = transform, rain_threshold
        self.crop, self.augment = list(crop), bool(augment)
        self.zr_a, self.zr_b, self.accumulation_minutes = zr_a, zr_b, accumulation_minutes
        self.cache_mb, self.max_open_files = float(cache_mb), int(max_open_files)
        check_fraction("data.rain_cap_quantile", rain_cap_quantile, low_open=True, high_open=False)
        check_positive("data.rain_cap_factor", rain_cap_factor)
        self.region = {str(k): list(v) for k, v in dict(region).items()}
        self.rain_cap_quantile, self.rain_cap_factor = float(rain_cap_quantile), float(rain_cap_factor)
        self.synthesize_if_missing, self.sample_options = synthesize_if_missing, dict(sample_options)
        self.reader: RadarReader | None = None
        self.starts: dict[str, np.ndarray] = {}
        self._unseen: dict[str, np.ndarray] = {}  # per split: where the last input frame is NaN (to_xarray)
        self._aux: dict[str, xr.DataArray] | None = None  # the archive's 2-d lat / lon (auxiliary_coords)

    def prepare_data(self) -> None:
        """With ``synthesize_if_missing``: sample frames into ``paths`` (a glob's folder) when that folder does not
        exist or is empty; a folder of other files is an error (:func:`~climateml.data.io.may_write_sample_data`)."""
        if not self.synthesize_if_missing or not isinstance(self.paths, (str, Path)):
            return
        try:
            resolve_paths(self.paths)
            return  # the archive has files: they are read
        except DataError:
            pass
        parts = Path(str(self.paths)).parts
        glob_at = next((i for i, part in enumerate(parts) if any(c in part for c in "*?[")), None)
        folder = Path(str(self.paths)) if glob_at is None else Path(*parts[:glob_at]) if glob_at else Path(".")
        with sample_data_folder(folder, FILE_PATTERNS, "radar", "data.paths") as out:
            if out is not None:
                from climateml.data.synthetic.radar import generate_radar

                generate_radar(out, **self.sample_options)

    def build(self) -> None:
        self.prepare_data()
        # every file's metadata (times, grid, units), read by one process for all (fit_once): no metadata storm of
        # every rank opening every file of a large archive on a shared file system
        headers = self.fit_once("radar_headers", read_archive_headers, self.paths, self.variable)
        reader = RadarReader(self.paths, self.variable, self.zr_a, self.zr_b, self.accumulation_minutes,
                             max_open_files=self.max_open_files, cache_mb=self.cache_mb, region=self.region,
                             headers=headers)
        if len(reader) < 2:
            raise DataError(f"{reader.path(0)}: the archive {self.paths} holds {len(reader)} frame; expected a "
                            f"sequence of at least n_in + n_out = {self.n_in + self.n_out}")
        self.reader, self.times, self.step = reader, reader.times, reader.step
        self._unseen, self._aux = {}, None  # masks and coordinates of a previous build describe another archive
        # one streaming pass over every frame, by one process for all (fit_once): the frames NaN everywhere (radar
        # outages), each frame's moments of the transformed rain and its high quantile (the training frames' are
        # merged / maxed below)
        transform = RainTransform(self.transform_kind, self.rain_threshold)
        archive = ([str(f["path"]) for f in reader.files], self.variable, self.zr_a, self.zr_b,
                   self.accumulation_minutes, self.region, self.transform_kind, self.rain_threshold,
                   self.rain_cap_quantile)
        scan = self.fit_once("frame_scan", lambda *_: self._scan_frames(reader, transform), *archive)
        empty = scan["outage_frames"].numpy()
        reader.close()  # no open file crosses a fork into the DataLoader workers
        missing = np.zeros(len(reader), bool)
        missing[empty] = True
        skipped = 0
        for split, (start, end) in self.periods.items():
            try:
                self.starts[split] = window_starts(self.times, self.n_in, self.n_out, start, end, self.step, missing)
            except DataError as err:
                inside = np.nonzero((self.times >= np.datetime64(pd.Timestamp(start)))
                                    & (self.times <= np.datetime64(pd.Timestamp(end))))[0]
                where = (f"its frames in {reader.path(inside[0])} .. {reader.path(inside[-1])}" if inside.size
                         else f"no frame of the archive ({reader.path(0)} .. {reader.path(len(reader) - 1)}) in it")
                outage = f", {int(missing[inside].sum())} of them NaN everywhere" if inside.size and missing[inside].any() else ""
                raise DataError(f"{self.paths}: {split} {err} ({where}{outage})") from err
            if empty.size:
                try:
                    skipped += len(window_starts(self.times, self.n_in, self.n_out, start, end, self.step)) - len(self.starts[split])
                except DataError:
                    pass
        self.outage_frames = empty
        if empty.size:
            print(f"climateml: {empty.size} frame(s) NaN everywhere (radar outage), counted as missing: {skipped} "
                  f"window(s) across them skipped (first: {reader.path(int(empty[0]))} at {self.times[empty[0]]})")
        window = np.arange(self.n_in + self.n_out)
        train_frames = np.unique(self.starts["train"][:, None] + window)
        train_moments = Moments(1)
        for state in scan["moments"][train_frames].numpy():
            train_moments.merge(state)
        transform.fit_moments(train_moments)
        self.statistics = {"rain_mean": transform.mean.float().clone(), "rain_std": transform.std.float().clone(),
                           "rain_cap": torch.tensor(float(scan["highs"][train_frames].max()) * self.rain_cap_factor)}
        self.train_dataset = WindowDataset(reader, self.starts["train"], self.n_in, self.n_out, self.crop or None,
                                           self.augment)
        self.val_dataset = WindowDataset(reader, self.starts["val"], self.n_in, self.n_out)
        self.test_dataset = WindowDataset(reader, self.starts["test"], self.n_in, self.n_out)

    def _scan_frames(self, reader: RadarReader, transform: RainTransform) -> dict[str, torch.Tensor]:
        """Every frame of the archive read once: ``outage_frames`` (the indices of frames NaN everywhere),
        ``moments`` (frames, 3): each frame's :class:`~climateml.data.normalize.Moments` state of the transformed
        rain, and ``highs`` (frames,): each frame's ``rain_cap_quantile`` of its finite rain (0 when it has none)."""
        moments = np.zeros((len(reader), 3))
        highs = np.zeros(len(reader))

        def record(k: int, frame: np.ndarray) -> None:
            moments[k] = transform.moments(frame).state()
            finite = frame[np.isfinite(frame)]
            if finite.size:  # the plain maximum for the default quantile 1: no sort of every frame
                highs[k] = float(finite.max() if self.rain_cap_quantile == 1.0 else np.quantile(finite, self.rain_cap_quantile))

        empty = reader.check_frames(each=record, allow_empty=True)
        return {"outage_frames": torch.from_numpy(empty), "moments": torch.from_numpy(moments),
                "highs": torch.from_numpy(highs)}

    @property
    def grid(self) -> xr.Dataset:
        self.setup()
        return xr.Dataset(coords={d: self.reader.coords[d] for d in self.reader.spatial})

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
    def issue_times(self, split: str) -> np.ndarray:
        """The time of the last input frame of each window (the forecast reference time)."""
        self.setup()
        return self.times[self.starts[self.sample_split(split)] + self.n_in - 1]

    @property
    def lead_times(self) -> np.ndarray:
        return self.step * np.arange(1, self.n_out + 1)

    @property
    def layout(self) -> FieldLayout:
        """Nowcasts ``rain_rate`` (lead_time, *grid) [mm/h] on the archive's grid, with its 2-d lat / lon when it has
        them (:meth:`auxiliary_coords`); samples on ``time``, the issue time."""
        grid = self.grid
        coords = {"lead_time": xr.DataArray(self.lead_times, dims="lead_time"), **{d: grid[d] for d in grid.dims},
                  **self.auxiliary_coords()}
        return FieldLayout([VARIABLE], ("lead_time", *grid.dims), coords, {VARIABLE: dict(RAIN_ATTRS)}, sample_dim="time")

    def _dataset(self, values: np.ndarray, split: str, indices=None) -> xr.Dataset:
        """``rain_rate`` (time, lead_time, *grid) [mm/h] (:attr:`layout`): ``time`` the issue time, ``valid_time``
        (time, lead_time) the time each nowcast is for; of the windows ``indices`` when given (a batch)."""
        issue_times = self.issue_times(split)
        if indices is not None:
            issue_times = issue_times[np.asarray(indices, dtype=np.int64)]
        issue = xr.DataArray(issue_times, dims="time",
                             attrs={"long_name": "forecast issue time (valid time of the last input frame)",
                                    "standard_name": "forecast_reference_time"})
        valid = (("time", "lead_time"), issue_times[:, None] + self.lead_times[None, :],
                 {"long_name": "valid time of the nowcast (issue time + lead time)", "standard_name": "time"})
        return self.layout.to_xarray(values, issue, coords={"valid_time": valid})

    def auxiliary_coords(self) -> dict[str, xr.DataArray]:
        """The 2-d ``lat`` / ``lon`` (CF auxiliary coordinates on the projected y, x grid) of the archive's first
        file, when it has them (also spelled latitude / longitude); {} for an archive without them or on lat/lon."""
        self.setup()
        if self._aux is None:
            self._aux = {}
            if set(self.reader.spatial) == {"y", "x"}:
                try:
                    ds = open_dataset(self.reader.path(0))
                except DataError:  # a format the reader reads but xarray does not open has no CF coordinates
                    return self._aux
                with ds:
                    for name, disk_names in (("lat", ("lat", "latitude")), ("lon", ("lon", "longitude"))):
                        found = next((n for n in disk_names if n in ds.variables
                                      and set(ds[n].dims) == set(self.reader.spatial)), None)
                        if found is not None:
                            da = ds[found].transpose(*self.reader.spatial).isel(
                                dict(zip(self.reader.spatial, self.reader.window)))  # the data.region read
                            self._aux[name] = xr.DataArray(da.values, dims=self.reader.spatial, attrs=dict(da.attrs))
        return self._aux

    def to_xarray(self, values: torch.Tensor | np.ndarray, split: str) -> dict[str, xr.Dataset]:
        """Nowcasts (windows, lead_time, y, x) [mm/h] on the archive's grid, ``time`` = issue time; NaN
        where the radar saw nothing at issue time (e.g. beyond its range), as in the observations."""
        n = len(self.starts[self.sample_split(split)])
        if np.shape(values)[:2] != (n, self.n_out):
            raise DataError(f"predictions of shape {tuple(np.shape(values))} do not fit the {n} {split} windows x "
                            f"{self.n_out} lead times")
        return {self.sample_split(split): self._dataset(_nan_where(self._unseen_mask(split), values), split)}

    def _unseen_mask(self, split: str) -> np.ndarray:
        """(windows, 1, y, x): True where the last input frame of a window is NaN; read from the archive once
        per split and kept (to_xarray runs once per baseline and member), until the next build."""
        self.setup()
        key = self.sample_split(split)
        if key not in self._unseen:
            self._unseen[key] = np.isnan(self._stack(split, self.n_in - 1, 1))
        return self._unseen[key]

    def _stack(self, split: str, offset: int, n: int) -> np.ndarray:
        self.setup()
        starts = self.starts[self.sample_split(split)]
        return np.stack([self.reader.read_frames(range(int(s) + offset, int(s) + offset + n)) for s in starts])

    def truth(self, split: str) -> dict[str, xr.Dataset]:
        """The observed frames at each window's lead times (NaN outside the radar's range)."""
        return {self.sample_split(split): self._dataset(self._stack(split, self.n_in, self.n_out), split)}

    def past_frames(self, split: str) -> np.ndarray:
        """(windows, n_in, y, x) [mm/h]: what the baselines extrapolate from."""
        return self._stack(split, 0, self.n_in)

    def inputs_xarray(self, split: str, fill_nan: float | None = 0.0) -> xr.DataArray:
        """The split's model inputs [mm/h] on (time, input_frame, y, x): ``time`` the issue time, ``input_frame``
        the spec's input names (t-15min ... t-0min), for attribution maps on the archive's coordinates.

        NaN outside the radar's range becomes ``fill_nan`` (0: dry, as the model reads it), so gradients are
        finite; None keeps NaN (the model's nowcast is then NaN there too)."""
        grid = self.grid
        frames = self.past_frames(split)
        if fill_nan is not None:
            frames = np.nan_to_num(frames, nan=fill_nan)
        layout = FieldLayout([VARIABLE], ("input_frame", *grid.dims),
                             {"input_frame": xr.DataArray(self.spec.inputs, dims="input_frame"),
                              **{d: grid[d] for d in grid.dims}},
                             {VARIABLE: {k: RAIN_ATTRS[k] for k in ("units", "long_name")}}, sample_dim="time")
        return layout.to_xarray(frames, self.issue_times(split))[VARIABLE]

    # ---- one batch at a time (the streaming evaluation) ----
    def batch_to_xarray(self, values, split: str, indices, batch) -> dict[str, xr.Dataset]:
        """:meth:`to_xarray` of the windows ``indices`` of ``split`` (one batch of its loader, ``batch``): NaN
        where the batch's last input frame is NaN."""
        unseen = np.isnan(self.batch_past_frames(batch)[:, -1:])
        return {self.sample_split(split): self._dataset(_nan_where(unseen, values), split, indices=indices)}

    def batch_truth(self, batch, split: str, indices) -> dict[str, xr.Dataset]:
        """:meth:`truth` of the windows ``indices`` of ``split``: the batch's future frames [mm/h]."""
        return {self.sample_split(split): self._dataset(batch["y"].float().cpu().numpy(), split, indices=indices)}

    def batch_past_frames(self, batch) -> np.ndarray:
        """:meth:`past_frames` of a batch: (windows, n_in, y, x) [mm/h]."""
        return batch["x"].float().cpu().numpy()


def _nan_where(unseen: np.ndarray, values: torch.Tensor | np.ndarray) -> np.ndarray:
    """Nowcasts as a numpy array (a tensor as float32), NaN where ``unseen`` (broadcast over lead times)."""
    values = values.detach().float().cpu().numpy() if isinstance(values, torch.Tensor) else np.array(values)
    return np.where(unseen, np.float32(np.nan), values).astype(values.dtype, copy=False)
