"""ClimateNet: expert-labelled tropical cyclones and atmospheric rivers on CAM5 fields (Kashinath et al. 2021).

The DataModule (:class:`SegmentationDataModule`) and its lazily read samples; reading one file is
:mod:`climateml.data.climatenet_reader`, merging labellings and class weights :mod:`climateml.data.climatenet_labels`.
Reads the files as published: one NetCDF file per snapshot named ``data-YYYY-MM-DD-01-1_N.nc``, where
``_N`` numbers alternative expert labellings of the same timestep (same fields, different ``LABELS``).
Fields are float32 on (time, lat, lon) with time of length 1 (a string, not a date); ``LABELS`` is an
integer map (0 background, 1 TC, 2 AR) on (lat, lon) or (time, lat, lon). Files are read lazily, one
snapshot per sample, so the 459 files of 64 MB of the real set never need to be in memory at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch.utils.data import Dataset

from climateml.contracts import FieldData, SegmentationBatchData
from climateml.data.adapter import FieldLayout
from climateml.data.base import ClimateDataModule, DataSpec, check_crop, check_periods
from climateml.data.climatenet_labels import class_weights_from_counts, merge_labellings
from climateml.data.climatenet_reader import (FILE_PATTERNS, LABEL_VAR, Snapshot, common_grid, find_snapshots,
                                              read_fields, read_labels, read_snapshot)
from climateml.data.io import FLAG_ATTRS, DataError, open_dataset, sample_data_folder
from climateml.data.normalize import Moments
from climateml.errors import ConfigError, check_choice, check_fraction
from climateml.metrics.segmentation import CLASS_NAMES


class SnapshotDataset(Dataset):
    """Lazily read samples ``{"x": (C, lat, lon) fields in physical units, "y": (lat, lon) labels}``.

    Each item is one (snapshot, labelling) pair: ``items`` holds (snapshot, labelling index, or None for
    the per-pixel majority of all its labellings). Every item opens its file(s) when it is asked for, so
    nothing is held in memory between items and DataLoader workers each open their own files.
    ``labels=False`` serves fields only (prediction on files that may carry no ``LABELS``).

    Augmentation (``augment=True``, training only), applied to fields and labels jointly: a random
    longitude shift (``shift_lon``; the globe wraps round, so the field stays whole), then a random crop of ``crop``
    = [lat, lon] cells whose longitude window wraps across 0/360 E, and with probability 1/2 a latitude
    flip (north <-> south) with the ``meridional`` channels (meridional winds) negated: the mirror image
    of a northern cyclone is then a physically consistent (clockwise) southern one.
    """

    def __init__(self, items: list[tuple[Snapshot, int | None]], channels: Sequence[str], augment: bool = False,
                 crop: Sequence[int] | None = None, flip_lat: bool = False, meridional: Sequence[int] = (),
                 shift_lon: bool = True, labels: bool = True):
        self.items, self.channels = items, list(channels)
        self.augment, self.crop, self.flip_lat = augment, tuple(crop) if crop else None, flip_lat
        self.meridional = list(meridional)
        self.shift_lon, self.with_labels = shift_lon, labels

    def __len__(self) -> int:
        return len(self.items)

    def labels(self, i: int) -> np.ndarray:
        """The (lat, lon) target of item ``i``: one labelling, or the merged labellings of its date."""
        snap, k = self.items[i]
        if k is None:
            return merge_labellings([read_labels(f) for f in snap.files])
        return read_labels(snap.files[k])

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Fields and labels of item ``i`` without augmentation (one file opened unless labellings are merged)."""
        snap, k = self.items[i]
        if not self.with_labels:
            return read_fields(snap.files[0], self.channels), None
        if k is None and len(snap.files) > 1:
            x, first = read_snapshot(snap.files[0], self.channels)  # the first file opened once for both
            return x, merge_labellings([first, *(read_labels(f) for f in snap.files[1:])])
        return read_snapshot(snap.files[k or 0], self.channels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x, y = self.read(i)
        if self.augment:
            # torch's generator: seeded by seed_everything, advanced every epoch, per-worker seeds from Lightning
            x, y = self._augment(x, y, np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()))))
        out = {"x": torch.from_numpy(np.ascontiguousarray(x))}
        if y is not None:
            out["y"] = torch.from_numpy(np.ascontiguousarray(y))
        return out

    def _augment(self, x: np.ndarray, y: np.ndarray | None, rng: np.random.Generator):
        nlat, nlon = x.shape[-2:]
        shift = int(rng.integers(nlon)) if self.shift_lon else 0
        if self.crop:
            h, w = min(self.crop[0], nlat), min(self.crop[1], nlon)
            top = int(rng.integers(nlat - h + 1))
            cols = (shift + np.arange(w)) % nlon  # wraps around in longitude
            x = x[:, top:top + h][:, :, cols]
            y = None if y is None else y[top:top + h][:, cols]
        else:
            x = np.roll(x, -shift, axis=-1)
            y = None if y is None else np.roll(y, -shift, axis=-1)
        if self.flip_lat and rng.random() < 0.5:
            x = x[:, ::-1].copy()
            y = None if y is None else y[::-1].copy()
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
        shift_lon: random longitude shifts of training samples (the field wraps round, nothing is lost).
        flip_lat: random latitude flips in training, negating ``meridional_wind`` channels.
        meridional_wind: the channels negated by a latitude flip (meridional winds).
        synthesize_if_missing: write sample data (``climateml synth climatenet``) into data_dir when it does not
            exist or is empty (:func:`~climateml.data.io.may_write_sample_data`: a folder of other files is an
            error, never written into), with ``sample_options`` passed to the generator (n_dates, nlat, nlon, seed ...).
        batch_size, num_workers, pin_memory, multiprocessing_context: the loaders (see
            :class:`~climateml.data.base.BaseDataModule`); every sample opens its own file, so worker
            processes need no shared file handles.
    """

    PROTOCOLS = (FieldData, SegmentationBatchData)  # what its evaluation calls (climateml.contracts)

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
        shift_lon: bool = True,
        flip_lat: bool = True,
        meridional_wind: list[str] = ["V850", "VBOT"],
        synthesize_if_missing: bool = False,
        sample_options: dict = {},
        batch_size: int = 8,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        multiprocessing_context: str | None = None,
    ):
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         multiprocessing_context=multiprocessing_context)
        if not channels:
            raise ConfigError("data.channels must name at least one input field")
        check_fraction("data.val_fraction", val_fraction)
        check_fraction("data.test_fraction", test_fraction)
        check_choice("data.labellings", labellings, ("extra", "merge"))
        check_choice("data.class_weighting", class_weighting, ("inverse_frequency", "inverse_sqrt", "none"))
        crop = check_crop(crop, ("lat", "lon"))
        # the parsed bounds select the dates (a date written without zero padding, "2024-1-5", is a date too); a
        # date in two splits is named with its file by _split
        self._bounds = check_periods({"train_dates": train_dates, "val_dates": val_dates, "test_dates": test_dates},
                                     required=False, disjoint=False)
        self.data_dir = Path(data_dir)
        self.channels = list(channels)
        self.periods = {"train": list(train_dates), "val": list(val_dates), "test": list(test_dates)}
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.labellings, self.class_weighting = labellings, class_weighting
        self.crop, self.flip_lat, self.shift_lon = list(crop), flip_lat, shift_lon
        self.meridional_wind = list(meridional_wind)
        self.synthesize_if_missing, self.sample_options = synthesize_if_missing, dict(sample_options)
        self.splits: dict[str, list[Snapshot]] = {}
        self.grid: xr.Dataset | None = None
        self._field_attrs: dict[str, dict] | None = None  # the first training file's variables' attributes

    # ---- reading and splitting ----
    def prepare_data(self) -> None:
        if not self.synthesize_if_missing:
            return
        with sample_data_folder(self.data_dir, FILE_PATTERNS, "ClimateNet", "data.data_dir") as out:
            if out is not None:
                from climateml.data.synthetic.climatenet import generate_climatenet

                generate_climatenet(out, **self.sample_options)

    def _split(self, snapshots: list[Snapshot]) -> dict[str, list[Snapshot]]:
        dates = [s.date for s in snapshots]
        chosen: dict[str, list[Snapshot]] = {}
        for split, period in self.periods.items():
            if period:
                start, end = self._bounds[f"{split}_dates"]
                chosen[split] = [s for s in snapshots if start <= pd.Timestamp(s.date) <= end]
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

    def build(self) -> None:
        self.prepare_data()
        snapshots = find_snapshots(self.data_dir)
        if not snapshots:
            raise DataError(f"{self.data_dir}: no ClimateNet files (data-YYYY-MM-DD-01-1_N.nc)"
                            + ("" if self.data_dir.is_dir() else "; the folder does not exist"))
        self.grid = self.fit_once("grid", common_grid, snapshots)  # every file's grid, read by one process for all
        self.splits, self._field_attrs = self._split(snapshots), None
        train_items = [(s, k) for s in self.splits["train"] for k in range(len(s.files))] \
            if self.labellings == "extra" else [(s, None) for s in self.splits["train"]]
        meridional = [i for i, c in enumerate(self.channels) if c in self.meridional_wind]
        self.train_dataset = SnapshotDataset(train_items, self.channels, augment=True, crop=self.crop or None,
                                             flip_lat=self.flip_lat, meridional=meridional, shift_lon=self.shift_lon)
        self.val_dataset = SnapshotDataset([(s, None) for s in self.splits["val"]], self.channels)
        self.test_dataset = SnapshotDataset([(s, None) for s in self.splits["test"]], self.channels)
        # prediction needs no labels: the same dates as test, fields only
        self.predict_dataset = SnapshotDataset([(s, None) for s in self.splits["test"]], self.channels, labels=False)
        # one process reads; the key is every input of the fit: the items and the options that shape the statistics
        self.statistics = self.fit_once("statistics", self._fit_statistics, train_items, self.channels,
                                        self.class_weighting)

    @staticmethod
    def _fit_statistics(items, channels: Sequence[str], class_weighting: str) -> dict[str, torch.Tensor]:
        """Per-channel mean and std of ``channels`` over the training files, and class weights from the training
        masks."""
        n_classes = len(CLASS_NAMES)
        moments, counts = Moments(len(channels)), np.zeros(n_classes)
        labellings: dict[Snapshot, list[int | None]] = {}
        for snap, k in items:
            labellings.setdefault(snap, []).append(k)
        for snap, ks in labellings.items():  # one snapshot's files at a time, each file opened once
            fields, first = read_snapshot(snap.files[0], channels)
            moments.add(fields, channel_axis=0)
            known: list[np.ndarray | None] = [first] + [None] * (len(snap.files) - 1)
            for k in ks:  # the targets SnapshotDataset.labels serves for these items
                for j in range(len(snap.files)) if k is None else (k,):
                    if known[j] is None:
                        known[j] = read_labels(snap.files[j])
                y = merge_labellings(known) if k is None else known[k]
                counts += np.bincount(y.ravel(), minlength=n_classes)
        mean, std = moments.mean_std()
        if class_weighting == "none":
            weights = torch.ones(n_classes)
        else:
            weights = class_weights_from_counts(counts, class_weighting)
        return {"x_mean": mean, "x_std": std, "class_weights": weights, "class_pixel_fraction": torch.tensor(counts / counts.sum(), dtype=torch.float32)}

    # ---- the data -> model spec ----
    @property
    def spec(self) -> DataSpec:
        self.setup()
        shape = (self.grid.sizes["lat"], self.grid.sizes["lon"])
        return DataSpec(list(self.channels), list(CLASS_NAMES), (len(self.channels), *shape),
                        (len(CLASS_NAMES), *shape), dict(self.statistics))

    # ---- back to xarray ----
    def _snapshots(self, split: str) -> list[Snapshot]:
        self.setup()
        return self.splits[self.sample_split(split)]

    def dates(self, split: str) -> list[str]:
        """The dates ("YYYY-MM-DD") of a split's samples, in order (predict: the test dates)."""
        return [s.date for s in self._snapshots(split)]

    @property
    def layout(self) -> FieldLayout:
        """The model's output: one logit map per class (background, tc, ar) on the files' (lat, lon) grid."""
        self.setup()
        return self._layout(CLASS_NAMES, {})

    def fields_layout(self, variables: Sequence[str]) -> FieldLayout:
        """How ``variables`` of the first file sit on the (lat, lon) grid, with their attributes (units); the file's
        attributes are read once per build (the streaming evaluation asks for the fields of every batch)."""
        self.setup()
        ref = self._snapshots("train")[0].files[0]
        if self._field_attrs is None:
            with open_dataset(ref) as ds:
                self._field_attrs = {str(v): dict(ds[v].attrs) for v in ds.data_vars}
        missing = [v for v in variables if v not in self._field_attrs]
        if missing:
            raise DataError(f"{ref}: variable(s) {missing} missing; the file has {sorted(self._field_attrs)}")
        return self._layout(variables, {v: dict(self._field_attrs[v]) for v in variables})

    def _layout(self, variables: Sequence[str], attrs: dict[str, dict]) -> FieldLayout:
        """``variables`` on this DataModule's (lat, lon) grid (a copy of its coordinates), one per date."""
        coords = {"lat": self.grid["lat"].copy(), "lon": self.grid["lon"].copy()}
        return FieldLayout(list(variables), ("lat", "lon"), coords, attrs, sample_dim="time")

    def _time(self, split: str, indices=None) -> xr.DataArray:
        dates = self.dates(split)
        dates = dates if indices is None else [dates[int(i)] for i in indices]  # some samples (a batch)
        return xr.DataArray(dates, dims="time", attrs={"long_name": "date of the snapshot (YYYY-MM-DD)"})

    def to_xarray(self, values: torch.Tensor | np.ndarray, split: str, indices=None) -> dict[str, xr.Dataset]:
        """Logits (samples, class, lat, lon) -> ``LABELS`` (argmax) and ``probability`` (softmax over
        ``class``) on the input's lat / lon, one time step per date of ``split`` (or of its samples ``indices``)."""
        logits = torch.as_tensor(values).float()
        n = len(self.dates(split)) if indices is None else len(indices)
        if logits.ndim != 4 or logits.shape[0] != n or logits.shape[1] != len(CLASS_NAMES):
            raise DataError(f"predictions of shape {tuple(logits.shape)} do not fit the {n} {split} dates "
                            f"x {len(CLASS_NAMES)} classes x (lat, lon)")
        prob = torch.softmax(logits, dim=1)
        attrs = {"probability": {"long_name": "class probability", "units": "1"},
                 LABEL_VAR: {"long_name": "predicted label", **FLAG_ATTRS}}
        time = self._time(split, indices)
        probability = self._layout(["probability"], attrs).to_xarray(prob[:, :, None], time,
                                                                      extra_dims={"class": list(CLASS_NAMES)})
        labels = self._layout([LABEL_VAR], attrs).to_xarray(prob.argmax(1, keepdim=True).numpy().astype(np.int64), time)
        return {self.sample_split(split): labels.assign(probability=probability["probability"])}

    def truth(self, split: str) -> dict[str, xr.Dataset]:
        """The (merged) expert labels of ``split`` as ``LABELS`` (time, lat, lon)."""
        ds = SnapshotDataset([(s, None) for s in self._snapshots(split)], self.channels)
        labels = np.stack([ds.labels(i) for i in range(len(ds))])[:, None]
        return {self.sample_split(split): self._truth_layout().to_xarray(labels, self._time(split))}

    def _truth_layout(self) -> FieldLayout:
        """The expert labels ``LABELS`` on the (lat, lon) grid."""
        return self._layout([LABEL_VAR], {LABEL_VAR: {"long_name": "expert label", **FLAG_ATTRS}})

    def fields(self, split: str, channels: Sequence[str] | None = None, indices=None) -> xr.Dataset:
        """The raw input fields (physical units, with the files' attributes) of a split's dates (or of its
        samples ``indices``), from each date's first file; e.g. for the heuristic baseline and the figures."""
        names = list(channels or self.channels)
        snapshots = self._snapshots(split)
        chosen = snapshots if indices is None else [snapshots[int(i)] for i in indices]
        data = np.stack([read_fields(s.files[0], names) for s in chosen])
        return self.fields_layout(names).to_xarray(data, self._time(split, indices))

    def inputs_xarray(self, split: str) -> xr.DataArray:
        """The split's model inputs on (time, channel, lat, lon) in physical units, channels in the model's
        order: what attribution maps are computed on, so they come back on the files' grid."""
        return self.fields(split).to_array("channel").transpose("time", "channel", "lat", "lon").rename("fields")

    # ---- one batch at a time (the streaming evaluation) ----
    def batch_to_xarray(self, values, split: str, indices, batch) -> dict[str, xr.Dataset]:
        """:meth:`to_xarray` of the samples ``indices`` of ``split`` (one batch of its loader)."""
        return self.to_xarray(values, split, indices)

    def batch_truth(self, batch, split: str, indices) -> dict[str, xr.Dataset]:
        """:meth:`truth` of the samples ``indices`` of ``split``: the batch's (merged) expert labels."""
        labels = batch["y"].cpu().numpy().astype(np.int64)[:, None]
        return {self.sample_split(split): self._truth_layout().to_xarray(labels, self._time(split, indices))}
