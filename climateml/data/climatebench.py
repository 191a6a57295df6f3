"""ClimateBench: emissions in, climate response maps out (Watson-Parris et al. 2022).

Reads the processed files as published: ``inputs_<scenario>.nc`` (CO2, CH4 series; SO2, BC maps) and
``outputs_<scenario>.nc`` (tas, diurnal_temperature_range, pr, pr90 on member, time, lat, lon), or the
same layout as ``.zarr``. Targets are the ensemble mean over ``member``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
import xarray as xr

from climateml.contracts import BatchData, TabularData
from climateml.data.adapter import FieldLayout
from climateml.data.base import ClimateDataModule, DataSpec, TensorDictDataset
from climateml.data.io import (DataError, find_file, grid_difference, open_dataset, require_finite, require_variable,
                               sample_data_folder, standardize)
from climateml.data.normalize import Standardization, fit_pattern_scaling, residual_modes
from climateml.errors import ConfigError, check_choice, check_fraction, check_positive
from climateml.grid import cell_area, flat_area_weights, lat_weights

SERIES_INPUTS = ("CO2", "CH4")
MAP_INPUTS = ("SO2", "BC")
TRAIN_SCENARIOS = ["historical", "ssp126", "ssp370", "ssp585", "hist-GHG", "hist-aer"]
SECONDS_PER_YEAR = 365.25 * 86400.0
#: the files this layout reads (globs of names in data_dir); a folder holding none of them gets no sample data
FILE_PATTERNS = ("inputs_*.nc", "inputs_*.zarr", "outputs_*.nc", "outputs_*.zarr")
#: (units, long_name) of the inputs in the published ClimateBench files, used where a file's variable has none
INPUT_ATTRS = {
    "CO2": ("GtCO2", "cumulative anthropogenic CO2 emissions since 1850"),
    "CH4": ("GtCH4 yr-1", "anthropogenic CH4 emissions"),
    "SO2": ("kg m-2 s-1", "anthropogenic SO2 emission flux"),
    "BC": ("kg m-2 s-1", "anthropogenic black carbon emission flux"),
}


@dataclass
class Scenario:
    """One scenario in memory: inputs and member-mean targets on the same years, plus where they came from."""

    name: str
    inputs: xr.Dataset  # time (+ lat, lon for maps)
    targets: xr.Dataset  # time, lat, lon
    files: tuple[Path, Path] = field(default=(Path(), Path()))


def available_scenarios(data_dir: str | Path) -> list[str]:
    """Scenario names that have an inputs_ file in ``data_dir`` (NetCDF or Zarr)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return []
    return sorted({p.stem.removeprefix("inputs_") for p in data_dir.glob("inputs_*") if p.suffix in (".nc", ".zarr")})


def load_scenario(data_dir: str | Path, scenario: str, inputs: Sequence[str], targets: Sequence[str]) -> Scenario:
    """Read and check one scenario; every problem is a DataError naming the file and variable."""
    in_path = find_file(data_dir, f"inputs_{scenario}")
    out_path = find_file(data_dir, f"outputs_{scenario}")
    with open_dataset(in_path) as raw_in, open_dataset(out_path) as raw_out:
        x_ds, y_ds = standardize(raw_in), standardize(raw_out)
        x_vars = {}
        _check_inputs(inputs)
        for name in inputs:
            dims = ("time",) if name in SERIES_INPUTS else ("time", "lat", "lon")
            x_vars[name] = _load(require_variable(x_ds, name, dims, in_path), in_path)
        y_vars = {}
        for name in targets:
            has_member = name in y_ds.data_vars and "member" in y_ds[name].dims
            dims = ("member",) * has_member + ("time", "lat", "lon")
            da = _load(require_variable(y_ds, name, dims, out_path), out_path)
            y_vars[name] = da.mean("member", keep_attrs=True) if "member" in da.dims else da
    x, y = xr.Dataset(x_vars), xr.Dataset(y_vars)
    if not np.array_equal(x["time"].values, y["time"].values):
        xt, yt = x["time"].values, y["time"].values
        raise DataError(f"time axes differ: {in_path} has {len(xt)} years ({xt[0]}-{xt[-1]}), "
                        f"{out_path} has {len(yt)} years ({yt[0]}-{yt[-1]})")
    for name in x_vars:
        diff = grid_difference(x[name], y) if name in MAP_INPUTS else None
        if diff:
            raise DataError(f"{in_path}: variable {name!r} is on another grid than the targets in {out_path}: {diff}")
    return Scenario(scenario, x, y, (in_path, out_path))


def _check_inputs(names: Sequence[str]) -> None:
    unknown = [v for v in names if v not in SERIES_INPUTS + MAP_INPUTS]
    if unknown:
        raise ConfigError(f"data.inputs: unknown input(s) {unknown}; choose from {list(SERIES_INPUTS + MAP_INPUTS)}")


def _load(da: xr.DataArray, path: Path) -> xr.DataArray:
    """Read a lazily opened variable and check it is finite; every problem is a DataError naming file and variable."""
    try:
        da = da.load()
    except Exception as err:
        raise DataError(f"{path}: variable {da.name!r} cannot be read, the file looks corrupt "
                        f"({type(err).__name__}: {err})") from err
    require_finite(da, path)
    return da


class MapReducer:
    """Turns SO2/BC emission maps into a few numbers per year, fitted on training years only.

    ``global_sum``: area-integrated emission [Mt yr-1]; ``global_mean``: area-weighted mean flux
    [kg m-2 s-1]; ``eof``: the leading ``n_eofs`` principal components (area-weighted EOFs).
    """

    def __init__(self, method: Literal["global_sum", "global_mean", "eof"] = "global_sum", n_eofs: int = 5):
        check_choice("data.map_reduction", method, ("global_sum", "global_mean", "eof"))
        check_positive("data.n_eofs", n_eofs)
        self.method, self.n_eofs = method, n_eofs
        self.eofs: dict[str, np.ndarray] = {}
        self.means: dict[str, np.ndarray] = {}

    def width(self) -> int:
        return self.n_eofs if self.method == "eof" else 1

    @staticmethod
    def _weighted_flat(maps: xr.DataArray) -> np.ndarray:
        """(time, cells) maps scaled by sqrt(cos lat), so EOFs maximise area-weighted variance."""
        return (maps.values * np.sqrt(lat_weights(maps["lat"]))[:, None]).reshape(maps.shape[0], -1)

    def fit(self, name: str, maps: xr.DataArray) -> None:
        if self.method != "eof":
            return
        flat = self._weighted_flat(maps)
        self.means[name] = flat.mean(axis=0)
        _, _, vt = np.linalg.svd(flat - self.means[name], full_matrices=False)
        if vt.shape[0] < self.n_eofs:
            raise DataError(f"{name}: only {vt.shape[0]} training years for {self.n_eofs} EOFs")
        self.eofs[name] = vt[: self.n_eofs]

    def transform(self, name: str, maps: xr.DataArray) -> np.ndarray:
        """(time, width) features of the maps (time, lat, lon)."""
        if self.method == "eof":
            return (self._weighted_flat(maps) - self.means[name]) @ self.eofs[name].T
        area = cell_area(maps["lat"], maps["lon"])
        total = (maps.values * area).sum(axis=(1, 2))
        if self.method == "global_sum":
            return (total * SECONDS_PER_YEAR / 1e9)[:, None]  # kg s-1 -> Mt yr-1
        return (total / area.sum())[:, None]

    def describe(self, units: str, long_name: str) -> list[tuple[str, str]]:
        """(units, long_name) of each feature :meth:`transform` makes from maps of ``units`` and ``long_name``."""
        if self.method == "global_sum":
            return [("Mt yr-1", f"{long_name}, area-integrated over the globe")]
        if self.method == "global_mean":
            return [(units, f"{long_name}, area-weighted global mean")]
        return [(units, f"{long_name}, principal component {k + 1} (area-weighted EOFs of the training years)")
                for k in range(self.n_eofs)]

    def state_dict(self) -> dict:
        """Plain types and tensors only, so checkpoints load with torch.load(weights_only=True)."""
        as_tensors = lambda d: {k: torch.as_tensor(v) for k, v in d.items()}  # noqa: E731
        return {"method": self.method, "n_eofs": self.n_eofs, "eofs": as_tensors(self.eofs), "means": as_tensors(self.means)}

    def load_state_dict(self, state: dict) -> None:
        self.method, self.n_eofs = state["method"], state["n_eofs"]
        self.eofs = {k: np.asarray(v) for k, v in state["eofs"].items()}
        self.means = {k: np.asarray(v) for k, v in state["means"].items()}


class ClimateBenchDataModule(ClimateDataModule):
    """Emissions -> climate maps, in the ClimateBench layout.

    Samples are dicts ``{"x": inputs (n_inputs,), "y": targets (n_targets * lat * lon,)}`` in physical
    units; the statistics the model standardises with (x_mean, x_std, y_mean, y_std) are fitted on the
    training split only, with the cos-lat ``cell_weights`` of the grid (summing to 1).

    Args:
        data_dir: folder with inputs_<scenario>.nc / outputs_<scenario>.nc (or .zarr).
        train_scenarios: scenarios to train on (any names found in data_dir).
        test_scenarios: scenarios held out for testing.
        inputs: any of CO2, CH4 (global series) and SO2, BC (maps, reduced by ``map_reduction``).
        target: output variable(s), e.g. "tas" or ["tas", "pr"].
        target_reduction: "map" keeps the grid; "global_mean" predicts the cos-lat weighted mean series.
        map_reduction: "global_sum", "global_mean" or "eof" for SO2/BC maps; ``n_eofs`` for "eof".
        val_scenarios: hold out whole scenarios for validation; if empty, ``val_fraction`` of the
            training years is drawn at random (seeded by ``seed``), in blocks of ``val_block_years``
            consecutive years.
        val_block_years: the length of the blocks of validation years (1: single years). Internal variability
            is correlated from year to year, so a validation year between two training years shares much of
            their noise and rewards fitting it; blocks of a decade keep most validation years away from
            training years and early stopping honest.
        predict_scenarios: scenarios the predict step runs on (default: the test scenarios).
        synthesize_if_missing: write sample data (``climateml synth climatebench``) into data_dir when it does not
            exist or is empty (:func:`~climateml.data.io.may_write_sample_data`: a folder of other files is an
            error, never written into), with ``sample_options`` passed to the generator (nlat, nlon, seed,
            scenarios, members, fmt).
        batch_size, num_workers, pin_memory, multiprocessing_context: the loaders (see
            :class:`~climateml.data.base.BaseDataModule`).
    """

    predict_split = "predict"  # prediction runs on its own scenarios (predict_scenarios)
    PROTOCOLS = (TabularData, BatchData)  # what its evaluation calls (climateml.contracts)

    def __init__(
        self,
        data_dir: str = "data/climatebench",
        train_scenarios: list[str] = TRAIN_SCENARIOS,
        test_scenarios: list[str] = ["ssp245"],
        inputs: list[str] = ["CO2", "CH4"],
        target: str | list[str] = "tas",
        target_reduction: Literal["map", "global_mean"] = "map",
        map_reduction: Literal["global_sum", "global_mean", "eof"] = "global_sum",
        n_eofs: int = 5,
        val_scenarios: list[str] = [],
        val_fraction: float = 0.2,
        val_block_years: int = 1,
        predict_scenarios: list[str] = [],
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        multiprocessing_context: str | None = None,
        seed: int = 0,
        synthesize_if_missing: bool = False,
        sample_options: dict = {},
    ):
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         multiprocessing_context=multiprocessing_context)
        self.data_dir = Path(data_dir)
        self.train_scenarios = list(train_scenarios)
        self.test_scenarios = list(test_scenarios)
        self.inputs = list(inputs)
        self.targets = [target] if isinstance(target, str) else list(target)
        check_choice("data.target_reduction", target_reduction, ("map", "global_mean"))
        check_fraction("data.val_fraction", val_fraction)
        check_positive("data.val_block_years", val_block_years)
        self.val_block_years = int(val_block_years)
        if not self.inputs or not self.targets:
            raise ConfigError("data.inputs and data.target must name at least one variable each")
        if not self.train_scenarios or not self.test_scenarios:
            raise ConfigError("data.train_scenarios and data.test_scenarios must name at least one scenario each")
        _check_inputs(self.inputs)
        self.target_reduction = target_reduction
        self.reducer = MapReducer(map_reduction, n_eofs)
        self.val_scenarios = list(val_scenarios)
        self.val_fraction = val_fraction
        self.predict_scenarios = list(predict_scenarios) or self.test_scenarios
        self.seed = seed
        self.synthesize_if_missing, self.sample_options = synthesize_if_missing, dict(sample_options)
        self.scenarios: dict[str, Scenario] = {}
        self.normalization: Standardization | None = None
        self.pattern_scaling: dict[str, torch.Tensor] | None = None

    # ---- the data -> model spec (LightningCLI links it to the model once) ----
    @property
    def feature_names(self) -> list[str]:
        """One name per input column: CO2, CH4, SO2 (or SO2_eof1 ... with EOF reduction)."""
        names = []
        for v in self.inputs:
            width = 1 if v in SERIES_INPUTS else self.reducer.width()
            names += [v] if width == 1 else [f"{v}_eof{i + 1}" for i in range(width)]
        return names

    @property
    def layout(self) -> FieldLayout:
        """How target maps are flattened into the output tensor (targets one after another, each lat-major)."""
        self._load()
        ref = self.target_dataset(self.train_scenarios[0])
        return FieldLayout.from_dataset(ref, self.targets, sample_dim="time")

    @property
    def spec(self) -> DataSpec:
        self.setup()
        layout = self.layout
        stats = dict(self.statistics)  # x_mean, x_std, y_mean, y_std (a checkpoint's, when one was loaded)
        stats["cell_weights"] = self.area_weights
        if self.pattern_scaling is not None:  # the emulator's starting point, see fit_pattern_scaling
            stats["ps_intercept"], stats["ps_slope"] = self.pattern_scaling["intercept"], self.pattern_scaling["slope"]
            stats["ps_modes"] = self.pattern_scaling["modes"]
        return DataSpec(self.feature_names, list(self.targets), (len(self.feature_names),), (layout.n_values,), stats,
                        {"field_dims": list(layout.field_dims)})

    @property
    def area_weights(self) -> torch.Tensor:
        """cos(lat) weight of every grid cell, summing to 1 (one weight if targets are global means)."""
        ref = self.target_dataset(self.train_scenarios[0])
        return torch.as_tensor(flat_area_weights(ref["lat"].values, ref.sizes["lon"]), dtype=torch.float32)

    # ---- loading ----
    def prepare_data(self) -> None:
        if not self.synthesize_if_missing:
            return
        with sample_data_folder(self.data_dir, FILE_PATTERNS, "ClimateBench", "data.data_dir") as out:
            if out is not None:
                from climateml.data.synthetic import Grid, generate_climatebench

                options = dict(self.sample_options)
                if "nlat" in options or "nlon" in options:
                    options["grid"] = Grid(options.pop("nlat", Grid.nlat), options.pop("nlon", Grid.nlon))
                generate_climatebench(out, **options)

    def _load(self) -> None:
        needed = dict.fromkeys(self.train_scenarios + self.val_scenarios + self.test_scenarios + self.predict_scenarios)
        if all(s in self.scenarios for s in needed):
            return
        self.prepare_data()
        found = available_scenarios(self.data_dir)
        missing = [s for s in needed if s not in found]
        if missing:
            raise DataError(f"{self.data_dir}: no files for scenario(s) {missing}; found scenarios {found or 'none'} "
                            f"(expected inputs_<scenario>.nc and outputs_<scenario>.nc)")
        for s in needed:
            if s not in self.scenarios:
                self.scenarios[s] = load_scenario(self.data_dir, s, self.inputs, self.targets)
        first = self.scenarios[self.train_scenarios[0]]
        for s in self.scenarios.values():
            diff = grid_difference(s.targets, first.targets)
            if diff:
                raise DataError(f"{s.files[1]}: grid differs from {first.files[1]}: {diff}")

    def features(self, scenario: str) -> torch.Tensor:
        """Input tensor (years, n_inputs) of a scenario, in physical units (maps reduced)."""
        self._load()
        x = self.scenarios[scenario].inputs
        cols = [x[v].values[:, None] if v in SERIES_INPUTS else self.reducer.transform(v, x[v]) for v in self.inputs]
        return torch.as_tensor(np.concatenate(cols, axis=1), dtype=torch.float32)

    def target_tensor(self, scenario: str) -> torch.Tensor:
        """Target tensor (years, n_outputs) of a scenario: variables one after another, each lat-major."""
        y = self.target_dataset(scenario)
        return self.layout.to_tensor(y).reshape(y.sizes["time"], -1)

    def target_dataset(self, scenario: str) -> xr.Dataset:
        """The member-mean targets of a scenario as xarray (global means if target_reduction is global_mean)."""
        self._load()
        y = self.scenarios[scenario].targets
        if self.target_reduction == "global_mean":
            w = xr.DataArray(lat_weights(y["lat"]), dims="lat", coords={"lat": y["lat"]})
            y = y.weighted(w).mean(("lat", "lon"), keep_attrs=True).expand_dims(lat=[0.0], lon=[0.0], axis=(1, 2))
        return y

    def build(self) -> None:
        self._load()
        train_names = [s for s in self.train_scenarios if s not in self.val_scenarios]
        n_years = sum(self.scenarios[s].inputs.sizes["time"] for s in train_names)
        if self.val_scenarios:
            train_idx, val_idx = torch.arange(n_years), None
        else:
            generator = torch.Generator().manual_seed(self.seed)
            if self.val_block_years <= 1:
                order = torch.randperm(n_years, generator=generator)
            else:  # whole blocks of consecutive years (of the concatenated training scenarios), in random order
                blocks = torch.arange(n_years).split(self.val_block_years)
                order = torch.cat([blocks[i] for i in torch.randperm(len(blocks), generator=generator)])
            n_val = int(round(self.val_fraction * n_years))
            val_idx, train_idx = order[:n_val], order[n_val:]
            if len(train_idx) == 0:
                raise ConfigError(f"data.val_fraction={self.val_fraction} of {n_years} training years leaves none "
                                  "for training")
        if self.reducer.method == "eof":  # fitted on the training years only, never on validation years
            for v in self.inputs:
                if v in MAP_INPUTS:
                    maps = xr.concat([self.scenarios[s].inputs[v] for s in train_names], "time")
                    self.reducer.fit(v, maps.isel(time=train_idx.numpy()))
        x_all = torch.cat([self.features(s) for s in train_names])
        y_all = torch.cat([self.target_tensor(s) for s in train_names])
        x, y = x_all[train_idx], y_all[train_idx]
        origin_all = self._origins(train_names)
        self.sample_origin = {"train": {k: v[train_idx.numpy()] for k, v in origin_all.items()},
                              "test": self._origins(self.test_scenarios),
                              "predict": self._origins(self.predict_scenarios)}
        if self.val_scenarios:
            x_val = torch.cat([self.features(s) for s in self.val_scenarios])
            y_val = torch.cat([self.target_tensor(s) for s in self.val_scenarios])
            self.sample_origin["val"] = self._origins(self.val_scenarios)
        else:
            x_val, y_val = x_all[val_idx], y_all[val_idx]
            self.sample_origin["val"] = {k: v[val_idx.numpy()] for k, v in origin_all.items()}
        self.normalization = Standardization.fit(x, y, len(self.targets))
        self.statistics = {k: getattr(self.normalization, k) for k in ("x_mean", "x_std", "y_mean", "y_std")}
        # two-step pattern scaling on the training years (never validation years), when CO2 is an input
        self.pattern_scaling = None
        if "CO2" in self.feature_names:
            co2 = x[:, self.feature_names.index("CO2")]
            self.pattern_scaling = fit_pattern_scaling(co2, y, self.area_weights, len(self.targets))
            # the leading modes of what pattern scaling leaves, standardised (the emulator's correction may use them)
            ps_std = (y - (self.pattern_scaling["intercept"] + co2[:, None] * self.pattern_scaling["slope"])) / self.normalization.y_std
            self.pattern_scaling["modes"] = residual_modes(ps_std, self.area_weights.repeat(len(self.targets)))
        self.train_dataset = TensorDictDataset(x=x.contiguous(), y=y.contiguous())
        self.val_dataset = TensorDictDataset(x=x_val.contiguous(), y=y_val.contiguous())
        self.test_dataset = TensorDictDataset(x=torch.cat([self.features(s) for s in self.test_scenarios]),
                                            y=torch.cat([self.target_tensor(s) for s in self.test_scenarios]))
        self.predict_dataset = TensorDictDataset(x=torch.cat([self.features(s) for s in self.predict_scenarios]))

    def _origins(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """``scenario`` and ``year`` of every sample of the scenarios ``names``, in the order of their features."""
        self._load()
        years = [np.asarray(self.scenarios[s].inputs["time"].values) for s in names]
        return {"scenario": np.concatenate([np.full(len(y), s, dtype=object) for s, y in zip(names, years)]),
                "year": np.concatenate(years).astype(np.int64)}

    # ---- back to xarray ----
    def feature_attrs(self) -> list[tuple[str, str]]:
        """(units, long_name) of every input column, in :attr:`feature_names` order: from the files' variables
        (the first training scenario), else ClimateBench's; reduced maps say how they were reduced."""
        self._load()
        ref = self.scenarios[self.train_scenarios[0]].inputs
        out = []
        for v in self.inputs:
            units = str(ref[v].attrs.get("units", INPUT_ATTRS[v][0]))
            long_name = str(ref[v].attrs.get("long_name", INPUT_ATTRS[v][1]))
            out += [(units, long_name)] if v in SERIES_INPUTS else self.reducer.describe(units, long_name)
        return out

    def inputs_xarray(self, split: str) -> xr.DataArray:
        """The split's model inputs on (sample, feature) in physical units, exactly the ``x`` the split's loader
        feeds the model (maps reduced, not standardised), for attribution labelled with the inputs' names.

        ``feature`` holds :attr:`feature_names` (CO2, CH4, SO2 or SO2_eof1 ...), with ``feature_units`` and
        ``feature_long_name`` beside it; every sample carries its ``scenario`` and ``year`` (plain coordinates,
        so the array writes to NetCDF as it is; ``.set_index(sample=["scenario", "year"])`` selects by them).
        ``split``: train, val, test or predict; train and val samples come in their datasets' order (years drawn
        at random for val unless ``val_scenarios``)."""
        check_choice("split", split, ("train", "val", "test", "predict"))
        origin = self.sample_origin[split]
        return self.inputs_layout.to_xarray(self.tensors(split)["x"], None, coords={
            "scenario": ("sample", origin["scenario"].astype(str), {"long_name": "scenario"}),
            "year": ("sample", origin["year"], {"long_name": "year", "units": "year"})})["emissions"]

    @property
    def inputs_layout(self) -> FieldLayout:
        """The model inputs as one variable, ``emissions`` on (sample, feature): :attr:`feature_names` with their
        units and long names beside them (``feature_units``, ``feature_long_name``)."""
        units, long_names = zip(*self.feature_attrs())
        coords = {"feature": xr.DataArray(self.feature_names, dims="feature", attrs={"long_name": "model input"}),
                  "feature_units": ("feature", list(units)), "feature_long_name": ("feature", list(long_names))}
        attrs = {"long_name": "model inputs (emissions)",
                 **({"map_reduction": self.reducer.method} if set(self.inputs) & set(MAP_INPUTS) else {})}
        return FieldLayout(["emissions"], ("feature",), coords, {"emissions": attrs}, sample_dim="sample")

    def tensors(self, split: str) -> dict[str, torch.Tensor]:
        """``{"x": inputs, "y": targets}`` of every sample of ``split`` in physical units (predict: ``x`` only),
        in the order the split's loader serves them (:class:`~climateml.contracts.TabularData`)."""
        return self.dataset(split).tensors

    def groups(self, split: str) -> list[str]:
        """The scenarios of the test or predict split, in the order their samples come."""
        if split == "test":
            return list(self.test_scenarios)
        if split == "predict":
            return list(self.predict_scenarios)
        raise ValueError(f"split must be 'test' or 'predict' (train and val years are shuffled), got {split!r}")

    def to_xarray(self, values: torch.Tensor | np.ndarray, split: str) -> dict[str, xr.Dataset]:
        """Model outputs for the ``split``'s samples, cut into one Dataset per scenario on the targets' coordinates."""
        out = self.layout.to_groups(values, {s: self.target_dataset(s)["time"].values for s in self.groups(split)},
                                    what=f"years of {split} scenarios")
        for s, ds in out.items():
            ds.attrs["scenario"] = s
        return out

    def truth(self, split: str) -> dict[str, xr.Dataset]:
        return {s: self.target_dataset(s) for s in self.groups(split)}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "reducer": self.reducer.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.reducer.load_state_dict(state_dict["reducer"])

    # ---- one batch at a time (the streaming evaluation) ----
    def _batch_groups(self, split: str, indices) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{scenario: (positions in the batch, years)} of the samples ``indices`` of ``split``, in scenario order."""
        idx = np.asarray(indices, dtype=np.int64)
        scenarios, years = self.sample_origin[split]["scenario"][idx], self.sample_origin[split]["year"][idx]
        rows = {s: np.nonzero(scenarios == s)[0] for s in self.groups(split)}
        return {s: (r, years[r]) for s, r in rows.items() if r.size}

    def batch_to_xarray(self, values, split: str, indices, batch) -> dict[str, xr.Dataset]:
        """:meth:`to_xarray` of the samples ``indices`` of ``split``: one Dataset per scenario the batch holds."""
        layout, out = self.layout, {}
        for s, (rows, years) in self._batch_groups(split, indices).items():
            out[s] = layout.to_xarray(values[torch.as_tensor(rows)] if isinstance(values, torch.Tensor) else values[rows],
                                      years)
            out[s].attrs["scenario"] = s
        return out

    def batch_truth(self, batch, split: str, indices) -> dict[str, xr.Dataset]:
        """:meth:`truth` of the samples ``indices`` of ``split``: each scenario's target maps of the batch's years."""
        return {s: self.target_dataset(s).sel(time=years) for s, (_, years) in self._batch_groups(split, indices).items()}
