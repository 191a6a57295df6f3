"""ClimateNet: expert-labelled tropical cyclones and atmospheric rivers on CAM5 fields (Kashinath et al. 2021).

Reads the files as published: one NetCDF file per snapshot named ``data-YYYY-MM-DD-01-1_N.nc``, where
``_N`` numbers alternative expert labellings of the same timestep (same fields, different ``LABELS``).
Fields are float32 on (time, lat, lon) with time of length 1 (a string, not a date); ``LABELS`` is an
integer map (0 background, 1 TC, 2 AR) on (lat, lon) or (time, lat, lon). Files are read lazily, one
snapshot per sample, so the 459 files of 64 MB of the real set never need to be in memory at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
import xarray as xr
from torch.utils.data import Dataset

from climateml.data.base import ClimateDataModule, DataSpec
from climateml.data.io import DataError, grid_difference, open_dataset
from climateml.errors import ConfigError, check_choice, check_fraction, check_positive

FILE_PATTERN = re.compile(r"^data-(\d{4}-\d{2}-\d{2})-01-1_(\d+)\.nc$")
CLASS_NAMES = ("background", "tc", "ar")
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


def read_fields(path: Path, channels: Sequence[str]) -> np.ndarray:
    """(channels, lat, lon) float32 of one file, checked: every channel present, 2-d after time, finite."""
    with open_dataset(path) as ds:
        missing = [c for c in channels if c not in ds.data_vars]
        if missing:
            raise DataError(f"{path}: channel(s) {missing} missing; the file has {sorted(map(str, ds.data_vars))}")
        out = []
        for c in channels:
            da = ds[c]
            if "time" in da.dims:
                da = da.isel(time=0)
            if set(da.dims) != {"lat", "lon"}:
                raise DataError(f"{path}: variable {c!r} has dims {ds[c].dims}, expected (time, lat, lon)")
            try:
                values = da.transpose("lat", "lon").values.astype(np.float32)
            except Exception as err:
                raise DataError(f"{path}: variable {c!r} cannot be read, the file looks corrupt ({type(err).__name__})") from err
            if not np.isfinite(values).all():
                raise DataError(f"{path}: variable {c!r} has {int((~np.isfinite(values)).sum())} NaN or infinite values")
            out.append(values)
    return np.stack(out)


def read_labels(path: Path, n_classes: int = len(CLASS_NAMES)) -> np.ndarray:
    """(lat, lon) int64 labels of one file, checked to lie in 0..n_classes-1."""
    with open_dataset(path) as ds:
        if LABEL_VAR not in ds.data_vars:
            raise DataError(f"{path}: no {LABEL_VAR} variable; the file has {sorted(map(str, ds.data_vars))}")
        da = ds[LABEL_VAR]
        if "time" in da.dims:
            da = da.isel(time=0)
        values = da.transpose("lat", "lon").values
    if not np.isfinite(values).all() or values.min() < 0 or values.max() >= n_classes or (values % 1).any():
        bad = np.unique(values[~np.isin(values, np.arange(n_classes))])[:5]
        raise DataError(f"{path}: {LABEL_VAR} has values {bad.tolist()} outside the classes 0..{n_classes - 1} "
                        f"({', '.join(CLASS_NAMES[:n_classes])})")
    return values.astype(np.int64)


def merge_labellings(labellings: Sequence[np.ndarray], n_classes: int = len(CLASS_NAMES)) -> np.ndarray:
    """One mask from several expert labellings: the per-pixel majority; ties go to the feature class
    (TC before AR before background), so a feature one expert of two marked is kept."""
    stack = np.stack(labellings)
    votes = np.stack([(stack == c).sum(0) for c in range(n_classes)])  # (class, lat, lon)
    priority = np.array([0, 2, 1])[:n_classes] if n_classes == 3 else np.arange(n_classes)
    # highest vote, ties broken by priority (TC=2 > AR=1 > background=0)
    score = votes * (n_classes + 1) + priority[:, None, None]
    return score.argmax(0).astype(np.int64)


class SnapshotDataset(Dataset):
    """Lazily read samples ``{"x": (C, lat, lon) normalised later by the model, "y": (lat, lon) labels}``.

    Each item is one (file set, labelling) pair: ``items`` holds (snapshot, labelling index or None
    for the merged labelling). Augmentation (training only): a random longitude shift (wraps around),
    a random crop of ``crop`` cells (wrapping in longitude), and a latitude flip with the meridional wind
    channels negated, which maps a northern-hemisphere cyclone onto a physically consistent southern one.
    """

    def __init__(self, items: list[tuple[Snapshot, int | None]], channels: Sequence[str], augment: bool = False,
                 crop: Sequence[int] | None = None, flip_lat: bool = False, meridional: Sequence[int] = ()):
        self.items, self.channels = items, list(channels)
        self.augment, self.crop, self.flip_lat = augment, tuple(crop) if crop else None, flip_lat
        self.meridional = list(meridional)

    def __len__(self) -> int:
        return len(self.items)

    def labels(self, i: int) -> np.ndarray:
        snap, k = self.items[i]
        if k is None:
            return merge_labellings([read_labels(f) for f in snap.files])
        return read_labels(snap.files[k])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        snap, _ = self.items[i]
        x = read_fields(snap.files[0], self.channels)
        y = self.labels(i)
        if self.augment:
            # torch's generator: seeded by seed_everything, advanced every epoch, per-worker seeds from Lightning
            x, y = self._augment(x, y, np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()))))
        return {"x": torch.from_numpy(np.ascontiguousarray(x)), "y": torch.from_numpy(np.ascontiguousarray(y))}

    def _augment(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator):
        nlat, nlon = y.shape
        shift = int(rng.integers(nlon))
        if self.crop:
            h, w = min(self.crop[0], nlat), min(self.crop[1], nlon)
            top = int(rng.integers(nlat - h + 1))
            cols = (shift + np.arange(w)) % nlon  # wraps around in longitude
            x, y = x[:, top:top + h][:, :, cols], y[top:top + h][:, cols]
        else:
            x, y = np.roll(x, shift, axis=-1), np.roll(y, shift, axis=-1)
        if self.flip_lat and rng.random() < 0.5:
            x, y = x[:, ::-1].copy(), y[::-1].copy()
            x[self.meridional] *= -1.0
        return x, y


class SegmentationDataModule(ClimateDataModule):
    """TC / AR segmentation on ClimateNet-layout files, split by date (never by file).

    Args:
        data_dir: folder of ``data-YYYY-MM-DD-01-1_N.nc`` files.
        channels: input fields, in order (any of the 16 CAM5 variables).
        train_dates, val_dates, test_dates: ``[first, last]`` dates (inclusive, "YYYY-MM-DD") of each
            split; any left empty are taken chronologically from the remaining dates by ``val_fraction``
            and ``test_fraction`` (test last, validation before it). A date in two splits is an error.
        labellings: "extra" uses every expert labelling of a training date as its own target; "merge"
            trains on their per-pixel majority. Validation and test always score the merged mask, once per date.
        class_weighting: class weights from the training masks' pixel counts ("inverse_frequency",
            "inverse_sqrt") or "none".
        crop: random training crops of [lat, lon] cells (wrapping in longitude); empty for whole fields.
        flip_lat: random latitude flips in training, negating ``meridional_wind`` channels.
        synthesize_if_missing: write sample data (``climateml synth climatenet``) into an empty data_dir,
            with ``sample_options`` passed to the generator (n_dates, nlat, nlon, seed ...).
    """

    def __init__(
        self,
        data_dir: str = "data/climatenet",
        channels: list[str] = ["TMQ", "U850", "V850", "PSL"],
        train_dates: list[str] = [],
        val_dates: list[str] = [],
        test_dates: list[str] = [],
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        labellings: Literal["extra", "merge"] = "extra",
        class_weighting: Literal["inverse_frequency", "inverse_sqrt", "none"] = "inverse_sqrt",
        crop: list[int] = [],
        flip_lat: bool = True,
        meridional_wind: list[str] = ["V850", "VBOT"],
        synthesize_if_missing: bool = False,
        sample_options: dict = {},
        seed: int = 0,
        batch_size: int = 8,
        num_workers: int = 0,
        pin_memory: bool = False,
    ):
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
        if not channels:
            raise ConfigError("data.channels must name at least one input field")
        check_fraction("data.val_fraction", val_fraction)
        check_fraction("data.test_fraction", test_fraction)
        check_choice("data.labellings", labellings, ("extra", "merge"))
        check_choice("data.class_weighting", class_weighting, ("inverse_frequency", "inverse_sqrt", "none"))
        if crop and (len(crop) != 2 or min(crop) < 1):
            raise ConfigError(f"data.crop must be [lat cells, lon cells], both >= 1, or empty; got {crop}")
        for name, period in (("train_dates", train_dates), ("val_dates", val_dates), ("test_dates", test_dates)):
            if period and len(period) != 2:
                raise ConfigError(f"data.{name} must be [first, last] dates or empty, got {period}")
        self.data_dir = Path(data_dir)
        self.channels = list(channels)
        self.periods = {"train": list(train_dates), "val": list(val_dates), "test": list(test_dates)}
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.labellings, self.class_weighting = labellings, class_weighting
        self.crop, self.flip_lat = list(crop), flip_lat
        self.meridional_wind = list(meridional_wind)
        self.synthesize_if_missing, self.sample_options = synthesize_if_missing, dict(sample_options)
        self.seed = seed
        self.splits: dict[str, list[Snapshot]] = {}
        self.grid: xr.Dataset | None = None

    # ---- reading and splitting ----
    def prepare_data(self) -> None:
        if self.synthesize_if_missing and not find_snapshots(self.data_dir):
            from climateml.data.synthetic.climatenet import generate_climatenet

            generate_climatenet(self.data_dir, **self.sample_options)

    def _split(self, snapshots: list[Snapshot]) -> dict[str, list[Snapshot]]:
        dates = [s.date for s in snapshots]
        chosen: dict[str, list[Snapshot]] = {}
        for split, period in self.periods.items():
            if period:
                chosen[split] = [s for s in snapshots if period[0] <= s.date <= period[1]]
                if not chosen[split]:
                    raise ConfigError(f"data.{split}_dates {period} holds none of the {len(dates)} dates "
                                      f"({dates[0]}..{dates[-1]}) in {self.data_dir}")
        taken = {s.date for v in chosen.values() for s in v}
        rest = [s for s in snapshots if s.date not in taken]
        for split, fraction in (("test", self.test_fraction), ("val", self.val_fraction)):
            if split not in chosen:
                n = max(1, int(round(fraction * len(snapshots)))) if fraction > 0 else 0
                chosen[split], rest = rest[len(rest) - n:], rest[:len(rest) - n]
        chosen.setdefault("train", rest)
        seen: dict[str, str] = {}
        for split, snaps in chosen.items():
            for s in snaps:
                if s.date in seen:
                    raise ConfigError(f"date {s.date} ({s.files[0].name}) is in both the {seen[s.date]} and the "
                                      f"{split} split; splits must not share a date")
                seen[s.date] = split
        for split in ("train", "val", "test"):
            if not chosen.get(split):
                raise ConfigError(f"the {split} split of {self.data_dir} is empty ({len(snapshots)} dates); "
                                  "set data.*_dates or the fractions")
        return chosen

    def _check_grids(self, snapshots: list[Snapshot]) -> xr.Dataset:
        """The common (lat, lon) grid; a DataError naming the first file on another grid."""
        ref_path = snapshots[0].files[0]
        with open_dataset(ref_path) as ref:
            grid = xr.Dataset(coords={"lat": ref["lat"].values, "lon": ref["lon"].values})
        for s in snapshots:
            for f in s.files:
                with open_dataset(f) as ds:
                    diff = grid_difference(ds, grid)
                if diff:
                    raise DataError(f"{f}: grid differs from {ref_path}: {diff}")
        return grid

    def build(self) -> None:
        self.prepare_data()
        snapshots = find_snapshots(self.data_dir)
        if not snapshots:
            raise DataError(f"{self.data_dir}: no ClimateNet files (data-YYYY-MM-DD-01-1_N.nc)"
                            + ("" if self.data_dir.is_dir() else "; the folder does not exist"))
        self.grid = self._check_grids(snapshots)
        self.splits = self._split(snapshots)
        train_items = [(s, k) for s in self.splits["train"] for k in range(len(s.files))] \
            if self.labellings == "extra" else [(s, None) for s in self.splits["train"]]
        meridional = [i for i, c in enumerate(self.channels) if c in self.meridional_wind]
        self.train_dataset = SnapshotDataset(train_items, self.channels, augment=True, crop=self.crop or None,
                                             flip_lat=self.flip_lat, meridional=meridional)
        self.val_dataset = SnapshotDataset([(s, None) for s in self.splits["val"]], self.channels)
        self.test_dataset = SnapshotDataset([(s, None) for s in self.splits["test"]], self.channels)
        self.predict_dataset = self.test_dataset
        self.statistics = self._fit_statistics(train_items)

    def _fit_statistics(self, items) -> dict[str, torch.Tensor]:
        """Per-channel mean and std over the training files, and class weights from the training masks."""
        n_classes = len(CLASS_NAMES)
        sums = np.zeros(len(self.channels)), np.zeros(len(self.channels))
        counts, n = np.zeros(n_classes), 0
        for snap in dict.fromkeys(s for s, _ in items):
            x = read_fields(snap.files[0], self.channels).astype(np.float64)
            sums[0][:] += x.sum(axis=(1, 2))
            sums[1][:] += (x ** 2).sum(axis=(1, 2))
            n += x[0].size
        ds = SnapshotDataset(items, self.channels)
        for i in range(len(ds)):
            counts += np.bincount(ds.labels(i).ravel(), minlength=n_classes)
        mean = sums[0] / n
        std = np.sqrt(np.maximum(sums[1] / n - mean ** 2, 0.0))
        std = np.where(std > 0, std, 1.0)
        if self.class_weighting == "none":
            weights = torch.ones(n_classes)
        else:
            from climateml.models.losses import class_weights_from_counts  # pure function, no model state

            weights = class_weights_from_counts(counts, self.class_weighting)
        return {"x_mean": torch.tensor(mean, dtype=torch.float32), "x_std": torch.tensor(std, dtype=torch.float32),
                "class_weights": weights, "class_pixel_fraction": torch.tensor(counts / counts.sum(), dtype=torch.float32)}

    # ---- the data -> model spec ----
    @property
    def spec(self) -> DataSpec:
        self.setup()
        shape = (self.grid.sizes["lat"], self.grid.sizes["lon"])
        return DataSpec(list(self.channels), list(CLASS_NAMES), (len(self.channels), *shape),
                        (len(CLASS_NAMES), *shape), dict(self.statistics))

    # ---- back to xarray ----
    def dates(self, split: str) -> list[str]:
        self.setup()
        return [s.date for s in self.splits["test" if split == "predict" else split]]

    def to_xarray(self, values: torch.Tensor | np.ndarray, split: str) -> dict[str, xr.Dataset]:
        """Logits (samples, class, lat, lon) -> ``LABELS`` (argmax) and ``probability`` (softmax) on the grid."""
        logits = torch.as_tensor(values).float()
        dates = self.dates(split)
        if logits.shape[0] != len(dates) or logits.shape[1] != len(CLASS_NAMES):
            raise DataError(f"predictions of shape {tuple(logits.shape)} do not fit the {len(dates)} {split} dates "
                            f"x {len(CLASS_NAMES)} classes")
        prob = torch.softmax(logits, dim=1).numpy()
        coords = {"time": dates, "class": list(CLASS_NAMES), "lat": self.grid["lat"].values,
                  "lon": self.grid["lon"].values}
        ds = xr.Dataset({
            LABEL_VAR: (("time", "lat", "lon"), prob.argmax(1).astype(np.int64),
                        {"long_name": "predicted label", "flag_values": "0 1 2",
                         "flag_meanings": "background tropical_cyclone atmospheric_river"}),
            "probability": (("time", "class", "lat", "lon"), prob.astype(np.float32),
                            {"long_name": "class probability", "units": "1"})}, coords=coords)
        return {split: ds}

    def truth(self, split: str) -> dict[str, xr.Dataset]:
        ds = self.dataset(split)
        labels = np.stack([ds.labels(i) for i in range(len(ds))])
        coords = {"time": self.dates(split), "lat": self.grid["lat"].values, "lon": self.grid["lon"].values}
        return {split: xr.Dataset({LABEL_VAR: (("time", "lat", "lon"), labels)}, coords=coords)}

    def fields(self, split: str, channels: Sequence[str] | None = None) -> xr.Dataset:
        """The raw input fields of a split's dates (first labelling's file), e.g. for the heuristic baseline."""
        names = list(channels or self.channels)
        snaps = self.splits["test" if split == "predict" else split]
        data = np.stack([read_fields(s.files[0], names) for s in snaps])
        coords = {"time": [s.date for s in snaps], "lat": self.grid["lat"].values, "lon": self.grid["lon"].values}
        return xr.Dataset({c: (("time", "lat", "lon"), data[:, i]) for i, c in enumerate(names)}, coords=coords)
