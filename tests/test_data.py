"""The data layer: synthetic ClimateBench files, reading them (NetCDF, Zarr, quirky layouts), the DataModule,
errors for bad input, atomic writes, and the metrics the data layer relies on.

Expected values are computed here independently (numpy / xarray by hand, the emission CSV parsed with the
csv module), never copied from a run of the code.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
from pathlib import Path

import cftime
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import climateml.data.synthetic as synthetic
from climateml import metrics
from climateml.data import ClimateBenchDataModule, DataError
from climateml.errors import ConfigError
from climateml.data.climatebench import available_scenarios, load_scenario
from climateml.data.io import write_dataset


def split_tensors(dm, split: str) -> tuple:
    """(x, y) of a split through the public dataset (x only for predict)."""
    t = dm.dataset(split).tensors
    return (t["x"], t["y"]) if "y" in t else (t["x"],)
from climateml.data.synthetic import Grid, generate_climatebench

NLAT, NLON = 8, 12
NCELL = NLAT * NLON
ALL_SCENARIOS = ("historical", "ssp126", "ssp245", "ssp370", "ssp585", "hist-GHG", "hist-aer")
DEFAULT_TRAIN = ("historical", "ssp126", "ssp370", "ssp585", "hist-GHG", "hist-aer")
SSPS = ("ssp126", "ssp245", "ssp370", "ssp585")
OUTPUT_VARS = ("tas", "diurnal_temperature_range", "pr", "pr90")
SECONDS_PER_YEAR = 365.25 * 86400.0
R_EARTH = 6.371e6


# ---------------------------------------------------------------- helpers (all hand-written, no package code)

def load_nc(path: Path) -> xr.Dataset:
    """Read a whole file into memory and close it, so the path can be rewritten afterwards."""
    with xr.open_dataset(path) as ds:
        return ds.load()


def rewrite(path: Path, change) -> None:
    ds = change(load_nc(path))
    os.remove(path)
    ds.to_netcdf(path)


def cos_lat_mean(values: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """cos-lat weighted mean over the last two axes (lat, lon)."""
    w = np.clip(np.cos(np.deg2rad(np.asarray(lat, float))), 0.0, None)
    w2 = np.broadcast_to(w[:, None], values.shape[-2:])
    return (values * w2).sum(axis=(-2, -1)) / w2.sum()


def sphere_cell_area(lat: np.ndarray, nlon: int) -> np.ndarray:
    """Area of cells whose latitude edges are the midpoints between centres (poles clipped), (nlat, nlon)."""
    lat = np.asarray(lat, float)
    if len(lat) == 1:
        edges = np.array([-90.0, 90.0])
    else:
        mid = (lat[1:] + lat[:-1]) / 2
        edges = np.clip(np.r_[2 * lat[0] - mid[0], mid, 2 * lat[-1] - mid[-1]], -90, 90)
    band = np.sin(np.deg2rad(edges[1:])) - np.sin(np.deg2rad(edges[:-1]))
    return np.repeat((R_EARTH**2 * 2 * np.pi / nlon * band)[:, None], nlon, axis=1)


def series(rcmip: dict, scenario: str, key: str) -> np.ndarray:
    """Yearly CSV values from 1850 to the scenario's end (SSPs preceded by the historical rows)."""
    hist = rcmip["historical"][key]
    return np.concatenate([hist, rcmip[scenario][key]]) if scenario.startswith("ssp") else hist.copy()


def expected_inputs(rcmip: dict, scenario: str) -> dict[str, np.ndarray]:
    """What the input files should hold, from the CSV: CO2 cumulative [GtCO2], CH4 [GtCH4/yr], SO2/BC [Mt/yr]."""
    co2, ch4, so2, bc = (series(rcmip, scenario, k) for k in ("co2", "ch4", "so2", "bc"))
    if scenario == "hist-GHG":
        so2[:], bc[:] = so2[0], bc[0]
    if scenario == "hist-aer":
        co2[:], ch4[:] = 0.0, ch4[0]
    keep = slice(165, None) if scenario.startswith("ssp") else slice(None)
    return {"CO2": np.cumsum(co2)[keep], "CH4": ch4[keep] / 1000.0, "SO2": so2[keep], "BC": bc[keep]}


def n_years(data_dir: Path, scenario: str) -> int:
    with xr.open_dataset(data_dir / f"inputs_{scenario}.nc") as ds:
        return ds.sizes["time"]


def member_mean(data_dir: Path, scenario: str, var: str = "tas") -> xr.DataArray:
    with xr.open_dataset(data_dir / f"outputs_{scenario}.nc") as ds:
        return ds[var].load().mean("member")


def global_mean_tas(data_dir: Path, scenario: str) -> pd.Series:
    da = member_mean(data_dir, scenario)
    return pd.Series(cos_lat_mean(da.values, da["lat"].values), index=da["time"].values)


def module(data_dir, **kw) -> ClimateBenchDataModule:
    dm = ClimateBenchDataModule(data_dir=str(data_dir), **kw)
    dm.setup()
    return dm


# ================================================================ 1. synthetic data layout and content

@pytest.mark.parametrize("scenario", ALL_SCENARIOS)
def test_synthetic_layout(small_climatebench, scenario):
    with xr.open_dataset(small_climatebench / f"inputs_{scenario}.nc") as x, \
            xr.open_dataset(small_climatebench / f"outputs_{scenario}.nc") as y:
        assert x["CO2"].dims == ("time",) and x["CH4"].dims == ("time",)
        for v in ("SO2", "BC"):
            assert x[v].dims == ("time", "latitude", "longitude")
            assert x[v].shape[1:] == (NLAT, NLON)
        for v in OUTPUT_VARS:
            assert y[v].dims == ("member", "time", "lat", "lon")
        assert "quantile" in y.coords and y["quantile"].ndim == 0
        for ds in (x, y):
            assert np.issubdtype(ds["time"].dtype, np.integer)
            years = ds["time"].values
            np.testing.assert_array_equal(np.diff(years), 1)
            if scenario.startswith("ssp"):
                assert (years[0], years[-1], len(years)) == (2015, 2100, 86)
            else:
                assert (years[0], years[-1], len(years)) == (1850, 2014, 165)
        assert y.sizes["member"] == (1 if scenario == "ssp585" else 3)
        np.testing.assert_array_equal(x["time"].values, y["time"].values)
        np.testing.assert_allclose(x["latitude"].values, np.linspace(-90, 90, NLAT))
        np.testing.assert_allclose(y["lon"].values, np.arange(NLON) * 30.0)
        for v in OUTPUT_VARS:
            assert np.isfinite(y[v].values).all()


@pytest.mark.parametrize("scenario", ["historical", "ssp126", "ssp585", "hist-GHG", "hist-aer"])
def test_synthetic_inputs_match_emission_csv(small_climatebench, rcmip, scenario):
    """Area integral of the flux maps x seconds per year = the CSV totals; CO2 is cumulative, CH4 in Gt."""
    expected = expected_inputs(rcmip, scenario)
    x = load_nc(small_climatebench / f"inputs_{scenario}.nc")
    area = metrics.cell_area(x["latitude"].values, x["longitude"].values)
    for v in ("SO2", "BC"):
        total_mt = (x[v].values.astype(float) * area).sum(axis=(1, 2)) * SECONDS_PER_YEAR / 1e9
        np.testing.assert_allclose(total_mt, expected[v], rtol=1e-3, err_msg=v)
        assert (x[v].values >= 0).all()
    np.testing.assert_allclose(x["CO2"].values, expected["CO2"], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(x["CH4"].values, expected["CH4"], rtol=1e-3)


def test_hist_aer_has_no_co2_and_constant_ch4(small_climatebench, rcmip):
    x = load_nc(small_climatebench / "inputs_hist-aer.nc")
    assert (x["CO2"].values == 0).all()
    np.testing.assert_allclose(x["CH4"].values, rcmip["historical"]["ch4"][0] / 1000.0, rtol=1e-6)
    g = load_nc(small_climatebench / "inputs_hist-GHG.nc")
    area = metrics.cell_area(g["latitude"].values, g["longitude"].values)
    for v in ("SO2", "BC"):  # hist-GHG: aerosol emission totals frozen at 1850
        totals = (g[v].values.astype(float) * area).sum(axis=(1, 2))
        np.testing.assert_allclose(totals, totals[0], rtol=1e-5)


def test_synthetic_is_deterministic_per_seed(small_climatebench, tmp_path):
    for seed, name in ((0, "a"), (0, "b"), (1, "c")):
        generate_climatebench(tmp_path / name, scenarios=["ssp585", "hist-aer"], grid=Grid(NLAT, NLON),
                              seed=seed, progress=False)
    for s in ("ssp585", "hist-aer"):
        a, b, c = (load_nc(tmp_path / n / f"outputs_{s}.nc") for n in "abc")
        ref = load_nc(small_climatebench / f"outputs_{s}.nc")
        for v in OUTPUT_VARS:
            np.testing.assert_array_equal(a[v].values, b[v].values)
            np.testing.assert_array_equal(a[v].values, ref[v].values)
        diff = a["tas"].values - c["tas"].values
        assert diff.std() > 0.05, "a different seed must draw different internal variability"
        # ... but the forced signal is the same: the time-mean difference is small against the noise
        assert abs(diff.mean()) < diff.std()
        xa, xc = load_nc(tmp_path / "a" / f"inputs_{s}.nc"), load_nc(tmp_path / "c" / f"inputs_{s}.nc")
        for v in ("CO2", "CH4", "SO2", "BC"):
            np.testing.assert_array_equal(xa[v].values, xc[v].values)
    hist = load_nc(small_climatebench / "outputs_historical.nc")["tas"].values
    assert np.abs(hist[0] - hist[1]).max() > 0.05, "members must have independent noise"


def test_synthetic_physically_plausible(small_climatebench):
    ssp585 = global_mean_tas(small_climatebench, "ssp585")[2100]
    ssp126 = global_mean_tas(small_climatebench, "ssp126")[2100]
    ssp245 = global_mean_tas(small_climatebench, "ssp245")[2100]
    assert ssp585 > ssp245 > ssp126 > 0
    assert ssp585 > 2.5  # several degrees under the high-emission scenario
    assert global_mean_tas(small_climatebench, "hist-aer")[2014] < 0
    assert global_mean_tas(small_climatebench, "hist-GHG")[2014] > global_mean_tas(small_climatebench, "historical")[2014]
    early = global_mean_tas(small_climatebench, "historical").loc[1850:1879]
    assert abs(early.mean()) < 0.3  # anomalies against pre-industrial
    # precipitation increases with warming
    pr = member_mean(small_climatebench, "ssp585", "pr")
    assert cos_lat_mean(pr.sel(time=2100).values, pr["lat"].values) > 0


def test_synthetic_response_is_not_linear_in_inputs(small_climatebench, rcmip):
    """A least-squares fit of global-mean tas on all four inputs (CO2, CH4 and the SO2, BC totals), pooled over
    every scenario, leaves a residual several times larger than the internal variability of the member mean."""
    rows, target, noise_var = [], [], []
    for s in ALL_SCENARIOS:
        e = expected_inputs(rcmip, s)
        rows.append(np.stack([e["CO2"], e["CH4"], e["SO2"], e["BC"]], axis=1))
        target.append(global_mean_tas(small_climatebench, s).values)
        with xr.open_dataset(small_climatebench / f"outputs_{s}.nc") as y:
            members = cos_lat_mean(y["tas"].values, y["lat"].values)  # (member, time)
        if members.shape[0] > 1:
            noise_var.append(members.var(axis=0, ddof=1).mean() / members.shape[0])
    x, t = np.concatenate(rows), np.concatenate(target)
    design = np.c_[np.ones(len(x)), x]
    coef, *_ = np.linalg.lstsq(design, t, rcond=None)
    resid_rms = np.sqrt(np.mean((t - design @ coef) ** 2))
    noise_rms = np.sqrt(np.mean(noise_var))
    assert resid_rms > 2.5 * noise_rms, (resid_rms, noise_rms)
    # and yet the fit is not hopeless: the signal is there, it is just not linear
    assert 1 - np.var(t - design @ coef) / np.var(t) > 0.5


def test_generate_rejects_unknown_format(tmp_path):
    with pytest.raises(DataError, match="hdf5"):
        generate_climatebench(tmp_path, grid=Grid(NLAT, NLON), fmt="hdf5", progress=False)


# ================================================================ 2. Zarr

@pytest.mark.filterwarnings("ignore::UserWarning")
def test_zarr_gives_same_tensors_as_netcdf(small_climatebench, tmp_path):
    scen = ["historical", "ssp126", "ssp245"]
    written = generate_climatebench(tmp_path / "z", scenarios=scen, grid=Grid(NLAT, NLON), fmt="zarr", progress=False)
    assert all(p.suffix == ".zarr" and p.is_dir() for p in written)
    assert not list((tmp_path / "z").glob("*.nc"))
    assert available_scenarios(tmp_path / "z") == sorted(scen)
    kw = dict(train_scenarios=["historical", "ssp126"], test_scenarios=["ssp245"],
              inputs=["CO2", "CH4", "SO2", "BC"], target=["tas", "pr"])
    z, n = module(tmp_path / "z", **kw), module(small_climatebench, **kw)
    for split in ("train", "val", "test"):
        for tz, tn in zip(split_tensors(z, split), split_tensors(n, split)):
            assert torch.equal(tz, tn), split
    assert torch.equal(z.normalization.y_mean, n.normalization.y_mean)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_corrupt_zarr_chunk_is_a_data_error(tmp_path):
    generate_climatebench(tmp_path, scenarios=["ssp245"], grid=Grid(NLAT, NLON), fmt="zarr", progress=False)
    chunk = next(p for p in (tmp_path / "outputs_ssp245.zarr" / "tas").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(b"these are not zstd-compressed float32 values")
    with pytest.raises(DataError, match="outputs_ssp245.zarr"):
        load_scenario(tmp_path, "ssp245", ["CO2"], ["tas"])


# ================================================================ 3. quirks of real files

def _quirky_copy(src: Path, dst: Path, scenarios, change_time=None, rename_outputs=False, files=("inputs", "outputs")):
    dst.mkdir()
    for s in scenarios:
        for kind in ("inputs", "outputs"):
            ds = load_nc(src / f"{kind}_{s}.nc")
            if kind in files and change_time is not None:
                ds = ds.assign_coords(time=change_time(ds["time"].values))
            if kind == "outputs" and rename_outputs:
                ds = ds.rename(lat="latitude", lon="longitude")
            ds.to_netcdf(dst / f"{kind}_{s}.nc")


TIME_QUIRKS = {
    "datetime64": lambda y: pd.to_datetime([f"{v}-07-01" for v in y]).values,
    "cftime_noleap": lambda y: np.array([cftime.DatetimeNoLeap(int(v), 1, 16) for v in y]),
    "cftime_360day": lambda y: np.array([cftime.Datetime360Day(int(v), 12, 30) for v in y]),
    "float": lambda y: y.astype(float),
}


@pytest.mark.parametrize("quirk", list(TIME_QUIRKS))
@pytest.mark.parametrize("files", [("inputs", "outputs"), ("outputs",)])
def test_time_quirks_load_with_integer_years(small_climatebench, tmp_path, quirk, files):
    scen = ["historical", "ssp245"]
    _quirky_copy(small_climatebench, tmp_path / "q", scen, TIME_QUIRKS[quirk], rename_outputs=True, files=files)
    with xr.open_dataset(tmp_path / "q" / "outputs_ssp245.nc") as raw:  # the quirk really is on disk
        assert not np.issubdtype(raw["time"].dtype, np.integer)
        assert "latitude" in raw.dims and "lat" not in raw.dims
    sc = load_scenario(tmp_path / "q", "ssp245", ["CO2", "SO2"], ["tas"])
    for ds in (sc.inputs, sc.targets):
        assert np.issubdtype(ds["time"].dtype, np.integer)
        np.testing.assert_array_equal(ds["time"].values, np.arange(2015, 2101))
    assert sc.targets["tas"].dims == ("time", "lat", "lon")
    np.testing.assert_allclose(sc.targets["tas"].values, member_mean(small_climatebench, "ssp245").values, rtol=1e-6)

    dm = module(tmp_path / "q", train_scenarios=["historical"], test_scenarios=["ssp245"], inputs=["CO2", "SO2"])
    ref = module(small_climatebench, train_scenarios=["historical"], test_scenarios=["ssp245"], inputs=["CO2", "SO2"])
    for split in ("train", "val", "test"):
        for a, b in zip(split_tensors(dm, split), split_tensors(ref, split)):
            torch.testing.assert_close(a, b)
    np.testing.assert_array_equal(dm.target_dataset("historical")["time"].values, np.arange(1850, 2015))


def test_latitude_longitude_names_in_outputs(small_climatebench, tmp_path):
    _quirky_copy(small_climatebench, tmp_path / "q", ["historical", "ssp245"], rename_outputs=True)
    dm = module(tmp_path / "q", train_scenarios=["historical"], test_scenarios=["ssp245"], inputs=["CO2", "BC"])
    ref = module(small_climatebench, train_scenarios=["historical"], test_scenarios=["ssp245"], inputs=["CO2", "BC"])
    ds = dm.target_dataset("ssp245")
    assert ds["tas"].dims == ("time", "lat", "lon") and "latitude" not in ds.coords
    np.testing.assert_array_equal(ds["lat"].values, np.linspace(-90, 90, NLAT))
    torch.testing.assert_close(split_tensors(dm, "train")[1], split_tensors(ref, "train")[1])


def test_fractional_mid_year_float_time(small_climatebench, tmp_path):
    _quirky_copy(small_climatebench, tmp_path / "q", ["ssp245"], lambda y: y + 0.5)
    sc = load_scenario(tmp_path / "q", "ssp245", ["CO2"], ["tas"])
    np.testing.assert_array_equal(sc.targets["time"].values, np.arange(2015, 2101))


def test_targets_are_member_mean(small_climatebench):
    for s in ("historical", "ssp585"):
        sc = load_scenario(small_climatebench, s, ["CO2"], list(OUTPUT_VARS))
        with xr.open_dataset(small_climatebench / f"outputs_{s}.nc") as y:
            for v in OUTPUT_VARS:
                by_hand = y[v].values.astype(np.float64).mean(axis=0)
                np.testing.assert_allclose(sc.targets[v].values, by_hand, rtol=1e-5,
                                           atol=1e-6 * np.abs(by_hand).max(), err_msg=v)
                assert "member" not in sc.targets[v].dims
            if s == "historical":  # the mean really averages 3 different members
                assert not np.allclose(sc.targets["tas"].values, y["tas"].values[0])
        assert "quantile" not in sc.targets.coords


def test_outputs_without_member_dim_and_transposed_maps(cb_copy):
    """A single-run file with no member dimension, and SO2 stored (time, lon, lat), still load."""
    ref_tas = load_nc(cb_copy / "outputs_ssp245.nc")["tas"].values[1]
    ref_so2 = load_nc(cb_copy / "inputs_ssp245.nc")["SO2"].values
    rewrite(cb_copy / "outputs_ssp245.nc", lambda ds: ds.isel(member=1, drop=True))
    rewrite(cb_copy / "inputs_ssp245.nc", lambda ds: ds.transpose("time", "longitude", "latitude"))
    sc = load_scenario(cb_copy, "ssp245", ["SO2"], ["tas"])
    np.testing.assert_array_equal(sc.targets["tas"].values, ref_tas)
    assert sc.inputs["SO2"].dims == ("time", "lat", "lon")
    np.testing.assert_array_equal(sc.inputs["SO2"].values, ref_so2)


# ================================================================ 4. the DataModule

@pytest.fixture(scope="module")
def default_dm(small_climatebench):
    return module(small_climatebench)


def test_default_split_sizes(default_dm, small_climatebench):
    total = sum(n_years(small_climatebench, s) for s in DEFAULT_TRAIN)
    assert total == 165 * 3 + 86 * 3 == 753
    n_train, n_val = len(default_dm.dataset("train")), len(default_dm.dataset("val"))
    assert n_train + n_val == total
    assert n_val == round(0.2 * total)
    assert len(default_dm.dataset("test")) == n_years(small_climatebench, "ssp245")
    assert len(default_dm.dataset("predict")) == n_years(small_climatebench, "ssp245")
    assert default_dm.spec.input_shape[0] == 2 and default_dm.spec.output_shape[0] == NCELL and (default_dm.spec.output_shape[0] // len(default_dm.spec.outputs)) == NCELL
    x, y = split_tensors(default_dm, "train")
    assert x.shape == (n_train, 2) and y.shape == (n_train, NCELL)
    assert x.dtype == y.dtype == torch.float32
    # train and val partition the pooled samples: every target row appears exactly once
    pooled = torch.cat([default_dm.target_tensor(s) for s in DEFAULT_TRAIN]).numpy()
    split = torch.cat([y, split_tensors(default_dm, "val")[1]]).numpy()
    rows = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731  (rows in lexicographic order)
    np.testing.assert_array_equal(rows(pooled), rows(split))
    assert len(np.unique(split, axis=0)) == total


def test_dataloaders_batches(default_dm):
    default_dm.batch_size = 50
    try:
        batches = list(default_dm.train_dataloader())
        assert len(batches) == math.ceil(len(default_dm.dataset("train")) / 50)
        assert sum(len(b["x"]) for b in batches) == len(default_dm.dataset("train"))
        assert batches[0]["x"].shape == (50, 2) and batches[0]["y"].shape == (50, NCELL)
        pred = next(iter(default_dm.predict_dataloader()))
        assert list(pred) == ["x"] and pred["x"].shape[1] == 2
        # the test loader is not shuffled: its first batch is the first ssp245 years in order
        first = next(iter(default_dm.test_dataloader()))
        torch.testing.assert_close(first["y"], default_dm.target_tensor("ssp245")[:50])
    finally:
        default_dm.batch_size = 64


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5001])
def test_val_fraction_sizes(small_climatebench, fraction):
    dm = module(small_climatebench, val_fraction=fraction)
    n_val = int(math.floor(fraction * 753 + 0.5))
    assert len(dm.dataset("val")) == n_val
    assert len(dm.dataset("train")) == 753 - n_val


def test_val_fraction_split_depends_on_seed(small_climatebench):
    a, b, c = (module(small_climatebench, seed=s) for s in (0, 0, 1))
    assert torch.equal(split_tensors(a, "train")[1], split_tensors(b, "train")[1])
    assert not torch.equal(split_tensors(a, "train")[1], split_tensors(c, "train")[1])


def test_val_years_in_blocks_of_consecutive_years(small_climatebench):
    dm = module(small_climatebench, val_block_years=10)
    origin = dm.sample_origin["val"]
    starts = {s: int(dm.scenarios[s].inputs["time"].values[0]) for s in DEFAULT_TRAIN}
    offsets = dict(zip(DEFAULT_TRAIN, np.cumsum([0] + [n_years(small_climatebench, s) for s in DEFAULT_TRAIN[:-1]])))
    index = np.array([offsets[s] + y - starts[s] for s, y in zip(origin["scenario"], origin["year"])])
    n_val = len(index)
    assert n_val == int(math.floor(0.2 * 753 + 0.5)) and len(set(index)) == n_val
    # whole blocks of 10 consecutive years of the concatenated scenarios (753 years: the last block has 3), but
    # for the block drawn last, of which only as many years as are still needed are taken
    touched = np.unique(index // 10)
    assert len(touched) in (math.ceil(n_val / 10), math.ceil(n_val / 10) + 1)
    assert sum(np.sum(index // 10 == b) < min(10, 753 - 10 * b) for b in touched) <= 1
    with pytest.raises(ConfigError, match="val_block_years"):
        module(small_climatebench, val_block_years=0)


def test_val_scenarios_hold_out_whole_scenarios(small_climatebench):
    dm = module(small_climatebench, val_scenarios=["ssp370"])
    expected_train = sum(n_years(small_climatebench, s) for s in DEFAULT_TRAIN if s != "ssp370")
    assert len(dm.dataset("train")) == expected_train == 165 * 3 + 86 * 2
    x_val, y_val = split_tensors(dm, "val")
    assert len(x_val) == 86
    torch.testing.assert_close(y_val, torch.as_tensor(member_mean(small_climatebench, "ssp370").values.reshape(86, -1)))
    # none of the ssp370 years leaks into training
    y_train = split_tensors(dm, "train")[1]
    assert not any(torch.equal(y_train[i], y_val[j]) for i in range(len(y_train)) for j in (0, 40, 85))


def _hand_stats(x: torch.Tensor, y: torch.Tensor, n_targets: int):
    xn, yn = x.double().numpy(), y.double().numpy()
    groups = yn.reshape(len(yn), n_targets, -1)
    return (xn.mean(0), xn.std(0), np.repeat(groups.mean(axis=(0, 2)), groups.shape[2]),
            np.repeat(groups.std(axis=(0, 2)), groups.shape[2]))


def test_normalization_fitted_on_train_split_only(small_climatebench):
    dm = module(small_climatebench, inputs=["CO2", "CH4", "SO2"], target=["tas", "pr"])
    x, y = split_tensors(dm, "train")
    x_mean, x_std, y_mean, y_std = _hand_stats(x, y, 2)
    norm = dm.normalization
    for got, want in ((norm.x_mean, x_mean), (norm.x_std, x_std), (norm.y_mean, y_mean), (norm.y_std, y_std)):
        np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-4)
    assert norm.y_mean.shape == (2 * NCELL,)
    assert len(set(norm.y_mean[:NCELL].tolist())) == 1 and norm.y_mean[0] != norm.y_mean[NCELL]
    # and not on train + val
    xv, yv = split_tensors(dm, "val")
    x_all_mean, _, y_all_mean, _ = _hand_stats(torch.cat([x, xv]), torch.cat([y, yv]), 2)
    assert not np.allclose(norm.x_mean.double().numpy(), x_all_mean, rtol=1e-6)
    assert not np.allclose(norm.y_mean.double().numpy(), y_all_mean, rtol=1e-6)


def test_normalization_excludes_val_scenarios(small_climatebench):
    dm = module(small_climatebench, val_scenarios=["ssp585"])
    x, y = split_tensors(dm, "train")
    x_mean, x_std, y_mean, y_std = _hand_stats(x, y, 1)
    np.testing.assert_allclose(dm.normalization.x_mean.double().numpy(), x_mean, rtol=1e-5)
    np.testing.assert_allclose(dm.normalization.y_std.double().numpy(), y_std, rtol=1e-4)
    # including the very warm ssp585 would raise the tas mean clearly
    xv, yv = split_tensors(dm, "val")
    _, _, y_all_mean, _ = _hand_stats(torch.cat([x, xv]), torch.cat([y, yv]), 1)
    assert y_all_mean[0] > y_mean[0] + 0.1


def test_zero_variance_input_gets_unit_std(small_climatebench):
    dm = module(small_climatebench, train_scenarios=["hist-aer"], test_scenarios=["ssp245"], inputs=["CO2", "SO2"])
    assert dm.normalization.x_std[0] == 1.0  # CO2 is all zero in hist-aer
    assert dm.normalization.x_mean[0] == 0.0


SUBSETS = [list(c) for r in range(1, 5) for c in itertools.combinations(("CO2", "CH4", "SO2", "BC"), r)]


@pytest.mark.parametrize("inputs", SUBSETS, ids=["+".join(s) for s in SUBSETS])
def test_input_subsets_global_sum_match_csv(small_climatebench, rcmip, inputs):
    dm = module(small_climatebench, train_scenarios=["historical", "hist-GHG"], test_scenarios=["ssp126"],
                inputs=inputs, map_reduction="global_sum")
    assert dm.spec.input_shape[0] == len(inputs)
    for s in ("historical", "hist-GHG", "ssp126"):
        feats = dm.features(s).double().numpy()
        assert feats.shape == (n_years(small_climatebench, s), len(inputs))
        expected = expected_inputs(rcmip, s)
        for i, v in enumerate(inputs):
            np.testing.assert_allclose(feats[:, i], expected[v], rtol=1e-3, atol=1e-6, err_msg=f"{s} {v}")
    x, _ = split_tensors(dm, "train")
    assert x.shape[1] == len(inputs)


def test_map_reduction_global_mean(small_climatebench, rcmip):
    dm = module(small_climatebench, train_scenarios=["historical"], test_scenarios=["ssp370"],
                inputs=["SO2", "BC", "CO2"], map_reduction="global_mean")
    assert dm.spec.input_shape[0] == 3
    for s in ("historical", "ssp370"):
        feats = dm.features(s).double().numpy()
        e = expected_inputs(rcmip, s)
        earth = 4 * np.pi * R_EARTH**2
        np.testing.assert_allclose(feats[:, 0], e["SO2"] * 1e9 / SECONDS_PER_YEAR / earth, rtol=1e-3)
        np.testing.assert_allclose(feats[:, 1], e["BC"] * 1e9 / SECONDS_PER_YEAR / earth, rtol=1e-3)
        np.testing.assert_allclose(feats[:, 2], e["CO2"], rtol=1e-3)


@pytest.mark.parametrize("n_eofs", [1, 3])
def test_map_reduction_eof(small_climatebench, n_eofs):
    dm = module(small_climatebench, inputs=["CO2", "CH4", "SO2", "BC"], map_reduction="eof", n_eofs=n_eofs,
                val_scenarios=["ssp370"])
    assert dm.spec.input_shape[0] == 2 + 2 * n_eofs
    x, _ = split_tensors(dm, "train")
    assert x.shape[1] == 2 + 2 * n_eofs
    eof = x[:, 2:].double().numpy()
    # EOF features of the training years are centred (relative to their spread) ...
    assert (np.abs(eof.mean(0)) < 1e-4 * eof.std(0)).all()
    # ... and uncorrelated principal components, ordered by decreasing variance
    for block in (eof[:, :n_eofs], eof[:, n_eofs:]):
        var = block.var(0)
        assert (np.diff(var) <= 1e-6 * var[0]).all()
        if n_eofs > 1:
            c = np.corrcoef(block.T)
            np.testing.assert_allclose(c[~np.eye(n_eofs, dtype=bool)], 0, atol=1e-3)
    # the leading EOF of the raw SO2 maps carries most of the variance of the area-weighted anomalies
    maps = torch.cat([torch.as_tensor(dm.scenarios[s].inputs["SO2"].values) for s in DEFAULT_TRAIN if s != "ssp370"])
    w = np.sqrt(np.clip(np.cos(np.deg2rad(dm.scenarios["historical"].inputs["lat"].values)), 0, None))[:, None]
    flat = (maps.double().numpy() * w).reshape(len(maps), -1)
    anom_var = (flat - flat.mean(0)).var(0).sum()
    np.testing.assert_allclose(eof[:, 0].var(), np.linalg.svd(flat - flat.mean(0), compute_uv=False)[0] ** 2 / len(flat),
                               rtol=1e-3)
    assert eof[:, 0].var() > 0.5 * anom_var
    # a model state restores the fitted EOFs
    other = ClimateBenchDataModule(str(small_climatebench), inputs=["CO2", "CH4", "SO2", "BC"], map_reduction="eof",
                                   n_eofs=n_eofs, val_scenarios=["ssp370"])
    other.load_state_dict(dm.state_dict())
    torch.testing.assert_close(other.features("ssp245"), dm.features("ssp245"))


def test_eof_fitted_on_training_years_only_with_val_fraction(small_climatebench):
    dm = module(small_climatebench, inputs=["CO2", "CH4", "SO2", "BC"], map_reduction="eof", n_eofs=2)
    eof = split_tensors(dm, "train")[0][:, 2:].double().numpy()
    assert (np.abs(eof.mean(0)) < 1e-4 * eof.std(0)).all()


def test_target_list(small_climatebench):
    dm = module(small_climatebench, train_scenarios=["historical"], test_scenarios=["ssp245"], target=["tas", "pr"])
    assert dm.spec.output_shape[0] == 2 * NCELL and dm.spec.outputs == ["tas", "pr"]
    y = dm.target_tensor("ssp245").double().numpy()
    np.testing.assert_allclose(y[:, :NCELL], member_mean(small_climatebench, "ssp245", "tas").values.reshape(86, -1),
                               rtol=1e-5)
    np.testing.assert_allclose(y[:, NCELL:], member_mean(small_climatebench, "ssp245", "pr").values.reshape(86, -1),
                               rtol=1e-5, atol=1e-12)
    ds = dm.to_xarray(dm.target_tensor("ssp245"), "test")["ssp245"]
    assert set(ds.data_vars) == {"tas", "pr"}
    np.testing.assert_allclose(ds["pr"].values, dm.target_dataset("ssp245")["pr"].values, rtol=1e-6)


def test_target_reduction_global_mean(small_climatebench):
    dm = module(small_climatebench, train_scenarios=["historical"], test_scenarios=["ssp585"],
                target_reduction="global_mean")
    assert dm.spec.output_shape[0] == 1 and (dm.spec.output_shape[0] // len(dm.spec.outputs)) == 1
    assert dm.area_weights.tolist() == [1.0]
    tas = member_mean(small_climatebench, "ssp585")
    want = cos_lat_mean(tas.values.astype(float), tas["lat"].values)
    np.testing.assert_allclose(dm.target_tensor("ssp585")[:, 0].double().numpy(), want, rtol=1e-5, atol=1e-6)
    # the unweighted mean is different, so the weighting is really applied
    assert not np.allclose(tas.values.mean(axis=(1, 2)), want, rtol=1e-3)
    y = split_tensors(dm, "train")[1]
    assert y.shape[1] == 1
    dm2 = module(small_climatebench, train_scenarios=["historical"], test_scenarios=["ssp585"],
                 target=["tas", "pr"], target_reduction="global_mean")
    assert dm2.spec.output_shape[0] == 2


def test_area_weights_map(default_dm, small_climatebench):
    w = default_dm.area_weights.double().numpy()
    assert w.shape == (NCELL,)
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)
    lat = np.linspace(-90, 90, NLAT)
    hand = np.repeat(np.clip(np.cos(np.deg2rad(lat)), 0, None), NLON)
    np.testing.assert_allclose(w, hand / hand.sum(), rtol=1e-5, atol=1e-9)


def test_to_xarray_round_trip(default_dm):
    ref = default_dm.target_dataset("ssp245")
    out = default_dm.to_xarray(default_dm.target_tensor("ssp245"), "test")["ssp245"]
    for c in ("time", "lat", "lon"):
        np.testing.assert_array_equal(out[c].values, ref[c].values)
        assert out[c].dtype == ref[c].dtype
    assert out["tas"].dims == ("time", "lat", "lon")
    np.testing.assert_allclose(out["tas"].values, ref["tas"].values, rtol=1e-6)
    assert out["tas"].attrs.get("units") == "K"
    assert out.attrs["scenario"] == "ssp245"
    # numpy input too, and a wrong shape is refused
    out_np = default_dm.to_xarray(default_dm.target_tensor("ssp245").numpy(), "test")["ssp245"]
    np.testing.assert_array_equal(out_np["tas"].values, out["tas"].values)
    with pytest.raises(DataError, match="85 predictions do not fit the 86 years"):
        default_dm.to_xarray(torch.zeros(85, NCELL), "test")
    parts = default_dm.to_xarray(default_dm.target_tensor("ssp245"), "predict")
    assert list(parts) == ["ssp245"] and parts["ssp245"].sizes["time"] == 86


def test_one_by_one_grid_end_to_end(tmp_path, rcmip):
    generate_climatebench(tmp_path, scenarios=["historical", "ssp126", "ssp245"], grid=Grid(1, 1), progress=False)
    dm = ClimateBenchDataModule(str(tmp_path), train_scenarios=["historical", "ssp126"], test_scenarios=["ssp245"],
                                inputs=["CO2", "CH4", "SO2", "BC"], batch_size=32)
    assert dm.spec.output_shape[0] == 1 and (dm.spec.output_shape[0] // len(dm.spec.outputs)) == 1 and dm.spec.input_shape[0] == 4
    assert dm.area_weights.tolist() == [1.0]
    dm.setup("fit")
    n = 0
    for batch in dm.train_dataloader():
        xb, yb = batch["x"], batch["y"]
        assert xb.shape[1] == 4 and yb.shape[1] == 1
        assert torch.isfinite(xb).all() and torch.isfinite(yb).all()
        n += len(xb)
    assert n == len(dm.dataset("train")) == 251 - round(0.2 * 251)
    assert sum(len(b["x"]) for b in dm.val_dataloader()) == round(0.2 * 251)
    assert sum(len(b["x"]) for b in dm.test_dataloader()) == 86
    assert sum(len(b["x"]) for b in dm.predict_dataloader()) == 86
    # the single cell covers the whole sphere, so its SO2 flux integrates to the CSV total
    np.testing.assert_allclose(dm.features("ssp245")[:, 2].double().numpy(), expected_inputs(rcmip, "ssp245")["SO2"],
                               rtol=1e-3)
    out = dm.to_xarray(dm.target_tensor("ssp245"), "test")["ssp245"]
    assert out["tas"].shape == (86, 1, 1)
    tas = member_mean(tmp_path, "ssp245")
    np.testing.assert_allclose(out["tas"].values, tas.values, rtol=1e-6)
    gm = module(tmp_path, train_scenarios=["historical"], test_scenarios=["ssp245"], target_reduction="global_mean")
    np.testing.assert_allclose(gm.target_tensor("ssp245").numpy()[:, 0], tas.values[:, 0, 0], rtol=1e-6)


def test_synthesize_if_missing(monkeypatch, tmp_path):
    calls = []
    original = synthetic.generate_climatebench

    def small(out_dir, *args, **kwargs):
        calls.append(Path(out_dir))
        kwargs.setdefault("grid", Grid(NLAT, NLON))
        kwargs.setdefault("progress", False)
        return original(out_dir, *args, **kwargs)

    monkeypatch.setattr(synthetic, "generate_climatebench", small)
    target = tmp_path / "empty"
    target.mkdir()
    dm = module(target, synthesize_if_missing=True)
    # written beside the folder, then renamed into its place whole (climateml.data.io.sample_data_folder)
    assert len(calls) == 1 and calls[0].parent == target.parent and not calls[0].exists()
    assert available_scenarios(target) == sorted(ALL_SCENARIOS)
    for s in ALL_SCENARIOS:
        assert (target / f"inputs_{s}.nc").is_file() and (target / f"outputs_{s}.nc").is_file()
    assert len(dm.dataset("train")) + len(dm.dataset("val")) == 753
    # a second module on the now populated folder does not synthesise again
    module(target, synthesize_if_missing=True)
    assert len(calls) == 1


def test_synthesize_if_missing_default_grid_is_only_called_when_empty(monkeypatch, small_climatebench):
    monkeypatch.setattr(synthetic, "generate_climatebench", lambda *a, **k: pytest.fail("must not synthesise"))
    module(small_climatebench, synthesize_if_missing=True)


# ================================================================ 5. bad input -> DataError naming file and variable

def test_missing_data_dir_and_empty_dir(tmp_path):
    with pytest.raises(DataError, match="found scenarios none"):
        module(tmp_path)
    with pytest.raises(DataError, match="found scenarios none"):
        module(tmp_path / "does-not-exist")


def test_missing_scenario_lists_found(cb_copy):
    with pytest.raises(DataError) as err:
        module(cb_copy, test_scenarios=["ssp460"])
    msg = str(err.value)
    assert "ssp460" in msg and str(cb_copy) in msg
    for s in ALL_SCENARIOS:
        assert s in msg
    # outputs file gone but inputs present: the error names the missing outputs file
    os.remove(cb_copy / "outputs_ssp245.nc")
    with pytest.raises(DataError, match=r"outputs_ssp245\.nc"):
        module(cb_copy)


def test_missing_variable(cb_copy):
    path = cb_copy / "inputs_historical.nc"
    rewrite(path, lambda ds: ds.drop_vars("CH4"))
    with pytest.raises(DataError) as err:
        module(cb_copy)
    assert str(path) in str(err.value) and "'CH4'" in str(err.value) and "missing" in str(err.value)
    # other inputs still load
    module(cb_copy, inputs=["CO2", "SO2"])


def test_missing_target_variable(cb_copy):
    with pytest.raises(DataError) as err:
        module(cb_copy, target="tasmax")
    assert "outputs_" in str(err.value) and "'tasmax'" in str(err.value)


def test_wrong_dims(cb_copy):
    path = cb_copy / "inputs_ssp126.nc"

    def change(ds):
        co2 = ds["CO2"].values
        return ds.drop_vars("CO2").assign(CO2=(("time", "x"), np.stack([co2, co2], axis=1)))

    rewrite(path, change)
    with pytest.raises(DataError) as err:
        module(cb_copy)
    msg = str(err.value)
    assert str(path) in msg and "'CO2'" in msg and "('time', 'x')" in msg


def test_map_with_missing_dim(cb_copy):
    path = cb_copy / "inputs_ssp245.nc"
    rewrite(path, lambda ds: ds.assign(SO2=ds["SO2"].isel(longitude=0, drop=True)))
    with pytest.raises(DataError, match=r"inputs_ssp245\.nc.*'SO2'"):
        module(cb_copy, inputs=["CO2", "SO2"])


def test_nan_in_targets(cb_copy):
    path = cb_copy / "outputs_historical.nc"

    def change(ds):
        tas = ds["tas"].values.copy()
        tas[2, 3, 4, 5] = np.nan  # member 3, year 1853
        tas[0, 100, 0, 0] = np.inf  # member 1, year 1950: the first bad value in storage order
        return ds.assign(tas=(ds["tas"].dims, tas, ds["tas"].attrs))

    rewrite(path, change)
    with pytest.raises(DataError) as err:
        module(cb_copy)
    msg = str(err.value)
    assert str(path) in msg and "'tas'" in msg and "NaN" in msg
    assert "2 NaN" in msg and "time=1950" in msg
    # pr is untouched: using it as the target works
    module(cb_copy, target="pr")


def test_nan_in_inputs(cb_copy):
    path = cb_copy / "inputs_hist-GHG.nc"

    def change(ds):
        so2 = ds["SO2"].values.copy()
        so2[10, 2, 3] = np.nan
        return ds.assign(SO2=(ds["SO2"].dims, so2))

    rewrite(path, change)
    with pytest.raises(DataError, match=r"inputs_hist-GHG\.nc.*'SO2'.*NaN"):
        module(cb_copy, inputs=["CO2", "SO2"])
    module(cb_copy, inputs=["CO2", "BC"])


def test_time_axes_mismatch(cb_copy):
    path = cb_copy / "outputs_historical.nc"
    rewrite(path, lambda ds: ds.isel(time=slice(0, -1)))  # drop 2014
    with pytest.raises(DataError) as err:
        module(cb_copy)
    msg = str(err.value)
    assert str(cb_copy / "inputs_historical.nc") in msg and str(path) in msg
    assert "165" in msg and "164" in msg


def test_time_axes_shifted(cb_copy):
    rewrite(cb_copy / "outputs_ssp245.nc", lambda ds: ds.assign_coords(time=ds["time"].values + 1))
    with pytest.raises(DataError, match=r"time axes differ.*outputs_ssp245\.nc"):
        module(cb_copy)


@pytest.mark.parametrize("damage", ["truncate", "overwrite_header", "garbage", "empty"])
def test_corrupt_file(cb_copy, damage):
    path = cb_copy / "outputs_ssp245.nc"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "overwrite_header":
        path.write_bytes(b"\x00" * 512 + data[512:])
    elif damage == "garbage":
        path.write_bytes(b"this is not a netcdf file\n" * 10)
    else:
        path.write_bytes(b"")
    with pytest.raises(DataError) as err:
        module(cb_copy)
    msg = str(err.value).removeprefix(str(path))  # (the test's folder name itself contains "corrupt")
    assert str(err.value).startswith(str(path)) and "\n" not in msg
    assert ("the file is empty (0 bytes)" if damage == "empty" else "corrupt") in msg


def test_mismatched_grids_between_scenarios(cb_copy, tmp_path):
    generate_climatebench(tmp_path / "other", scenarios=["ssp245"], grid=Grid(6, NLON), progress=False)
    shutil.copy(tmp_path / "other" / "outputs_ssp245.nc", cb_copy / "outputs_ssp245.nc")
    shutil.copy(tmp_path / "other" / "inputs_ssp245.nc", cb_copy / "inputs_ssp245.nc")
    with pytest.raises(DataError) as err:
        module(cb_copy)
    msg = str(err.value)
    assert str(cb_copy / "outputs_ssp245.nc") in msg and "lat has 6 points vs 8" in msg


def test_mismatched_grid_inputs_vs_outputs(cb_copy, tmp_path):
    generate_climatebench(tmp_path / "other", scenarios=["ssp245"], grid=Grid(NLAT, 6), progress=False)
    shutil.copy(tmp_path / "other" / "inputs_ssp245.nc", cb_copy / "inputs_ssp245.nc")
    module(cb_copy, inputs=["CO2", "CH4"])  # series only: the SO2 grid does not matter
    with pytest.raises(DataError) as err:
        module(cb_copy, inputs=["CO2", "SO2"])
    msg = str(err.value)
    assert str(cb_copy / "inputs_ssp245.nc") in msg and "SO2" in msg and "outputs_ssp245.nc" in msg


@pytest.mark.parametrize("values", [np.arange(-88.75, 90.0, 2.5),          # lat in degrees
                                    np.arange(0.0, 360.0, 0.25),            # lon in degrees
                                    np.arange(-400e3, 400e3 + 1, 1000.0)],  # radar y in metres
                         ids=["lat 2.5 deg", "lon 0.25 deg", "y 1 km"])
def test_one_grid_tolerance_a_fraction_of_the_spacing(values):
    """Grids agree within GRID_TOLERANCE x spacing whatever the unit; float32 storage stays inside it."""
    from climateml.data.io import grid_difference
    from climateml.grid import GRID_TOLERANCE, coord_mismatch

    step = float(np.diff(values).min())
    assert coord_mismatch(values, values.astype(np.float32)) is None
    assert coord_mismatch(values, values + 0.5 * GRID_TOLERANCE * step) is None
    shifted = values.copy()
    shifted[3] += 2 * GRID_TOLERANCE * step
    assert coord_mismatch(values, shifted) == 3
    assert coord_mismatch([7.0], [7.0 + 2 * GRID_TOLERANCE]) == 0  # one point: within a unit's fraction
    a, b = (xr.Dataset(coords={"lat": [0.0, 1.0], "lon": v}) for v in (values, shifted))
    assert grid_difference(a, a.assign_coords(lon=values.astype(np.float32))) is None
    assert grid_difference(a, b).startswith("lon values differ: lon[3]")


def test_same_size_but_shifted_grid(cb_copy):
    rewrite(cb_copy / "outputs_ssp126.nc", lambda ds: ds.assign_coords(lon=ds["lon"].values + 15.0))
    with pytest.raises(DataError, match=r"outputs_ssp126\.nc"):
        module(cb_copy)


@pytest.mark.parametrize("kwargs, pattern", [
    ({"val_fraction": 1.5}, "val_fraction"),
    ({"val_fraction": 1.0}, "val_fraction"),
    ({"val_fraction": -0.1}, "val_fraction"),
    ({"map_reduction": "pca"}, "pca"),
    ({"target_reduction": "zonal_mean"}, "zonal_mean"),
    ({"inputs": []}, "at least one"),
    ({"target": []}, "at least one"),
    ({"train_scenarios": []}, "at least one scenario"),
    ({"test_scenarios": []}, "at least one scenario"),
])
def test_bad_config_rejected_at_construction(small_climatebench, kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        ClimateBenchDataModule(str(small_climatebench), **kwargs)


def test_unknown_input(small_climatebench):
    with pytest.raises(ConfigError, match="'N2O'"):
        module(small_climatebench, inputs=["CO2", "N2O"])


def test_too_few_years_for_eofs(small_climatebench):
    with pytest.raises(DataError, match="EOFs"):
        module(small_climatebench, train_scenarios=["ssp126"], test_scenarios=["ssp245"], inputs=["SO2"],
               map_reduction="eof", n_eofs=500)


# ================================================================ 6. atomic writes

def _dataset(value: float) -> xr.Dataset:
    return xr.Dataset({"a": (("time",), np.full(4, value))}, coords={"time": np.arange(2000, 2004)})


def test_write_dataset_netcdf_roundtrip_and_overwrite(tmp_path):
    path = tmp_path / "sub" / "f.nc"
    assert write_dataset(_dataset(1.0), path) == path
    write_dataset(_dataset(2.0), path)
    np.testing.assert_array_equal(load_nc(path)["a"].values, 2.0)
    assert sorted(os.listdir(path.parent)) == ["f.nc"]


def test_write_dataset_is_atomic_netcdf(tmp_path, monkeypatch):
    path = tmp_path / "f.nc"
    write_dataset(_dataset(1.0), path)
    before = path.read_bytes()
    original = xr.Dataset.to_netcdf

    def failing(self, target=None, *args, **kwargs):
        original(self, target, *args, **kwargs)  # a partial file really lands on disk first
        Path(target).write_bytes(b"half written")
        raise OSError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", failing)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(_dataset(2.0), path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["f.nc"]
    monkeypatch.undo()
    np.testing.assert_array_equal(load_nc(path)["a"].values, 1.0)


def test_write_dataset_failure_without_existing_file(tmp_path, monkeypatch):
    monkeypatch.setattr(xr.Dataset, "to_netcdf", lambda self, *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        write_dataset(_dataset(1.0), tmp_path / "g.nc")
    assert os.listdir(tmp_path) == []


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_write_dataset_is_atomic_zarr(tmp_path, monkeypatch):
    path = tmp_path / "f.zarr"
    write_dataset(_dataset(1.0), path)
    write_dataset(_dataset(3.0), path)  # overwriting a store works
    with xr.open_zarr(path) as ds:
        np.testing.assert_array_equal(ds["a"].values, 3.0)
    files_before = {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}

    def failing(self, store=None, *args, **kwargs):
        Path(store).mkdir(parents=True)
        (Path(store) / "zarr.json").write_text("{")
        raise OSError("quota exceeded")

    monkeypatch.setattr(xr.Dataset, "to_zarr", failing)
    with pytest.raises(OSError, match="quota"):
        write_dataset(_dataset(2.0), path)
    assert {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()} == files_before
    assert sorted(os.listdir(tmp_path)) == ["f.zarr"]


# ================================================================ 7. metrics

def test_lat_weights():
    w = metrics.lat_weights([-90.0, -60.0, 0.0, 30.0, 90.0, 100.0])
    np.testing.assert_allclose(w, [0.0, 0.5, 1.0, math.sqrt(3) / 2, 0.0, 0.0], atol=1e-12)
    assert (w >= 0).all()


@pytest.mark.parametrize("nlat, nlon", [(96, 144), (1, 1), (NLAT, NLON), (3, 4), (2, 5)])
def test_cell_area_covers_the_sphere(nlat, nlon):
    g = Grid(nlat, nlon)
    area = metrics.cell_area(g.lat, g.lon)
    assert area.shape == (nlat, nlon)
    np.testing.assert_allclose(area.sum(), 4 * np.pi * R_EARTH**2, rtol=1e-6)
    np.testing.assert_allclose(area, sphere_cell_area(g.lat, nlon), rtol=1e-9)
    assert (area > 0).all()


def test_cell_area_by_hand_three_by_four():
    area = metrics.cell_area([-90.0, 0.0, 90.0], [0.0, 90.0, 180.0, 270.0])
    # latitude edges -90, -45, 45, 90; each cell spans a quarter of the longitudes
    polar = R_EARTH**2 * (np.pi / 2) * (1 - math.sqrt(0.5))
    equatorial = R_EARTH**2 * (np.pi / 2) * 2 * math.sqrt(0.5)
    np.testing.assert_allclose(area[:, 0], [polar, equatorial, polar], rtol=1e-12)
    np.testing.assert_allclose(area[1], equatorial, rtol=1e-12)


def test_cell_area_gaussian_like_grid():
    lat = np.arange(-87.5, 90, 5.0)  # centres, edges at multiples of 5 degrees up to the poles
    area = metrics.cell_area(lat, np.arange(72) * 5.0)
    np.testing.assert_allclose(area.sum(), 4 * np.pi * R_EARTH**2, rtol=1e-9)
    want = R_EARTH**2 * np.deg2rad(5.0) * (np.sin(np.deg2rad(lat + 2.5)) - np.sin(np.deg2rad(lat - 2.5)))
    np.testing.assert_allclose(area[:, 0], want, rtol=1e-9)


def _field(values_by_time_lat, lat=(0.0, 60.0), lon=(0.0, 180.0)):
    v = np.asarray(values_by_time_lat, dtype=float)  # (time, lat) -> broadcast over lon
    v = np.repeat(v[:, :, None], len(lon), axis=2)
    return xr.DataArray(v, dims=("time", "lat", "lon"),
                        coords={"time": np.arange(len(v)), "lat": list(lat), "lon": list(lon)})


def test_rmse_mae_bias_by_hand():
    truth = _field([[0, 0], [0, 0]])
    pred = _field([[1, 2], [1, 2]])  # error 1 at the equator (w 1), 2 at 60N (w 0.5)
    assert metrics.rmse(pred, truth) == pytest.approx(math.sqrt((1 * 1 + 0.5 * 4) / 1.5), rel=1e-12)
    assert metrics.mae(pred, truth) == pytest.approx((1 * 1 + 0.5 * 2) / 1.5, rel=1e-12)
    assert metrics.bias(truth, pred) == pytest.approx(-(4 / 3), rel=1e-12)
    assert metrics.rmse(truth, truth) == 0.0
    gm = metrics.global_mean(pred)
    np.testing.assert_allclose(gm.values, [4 / 3, 4 / 3])


def test_metrics_dim_and_weights_like_xskillscore():
    truth = _field([[0, 0], [0, 0]])
    pred = _field([[1, 2], [3, 2]])  # time 0: errors 1 (equator), 2 (60N); time 1: 3, 2
    per_time = metrics.rmse(pred, truth, dim=("lat", "lon"))
    assert per_time.dims == ("time",)
    np.testing.assert_allclose(per_time.values, [math.sqrt((1 + 0.5 * 4) / 1.5), math.sqrt((9 + 0.5 * 4) / 1.5)])
    per_cell = metrics.mae(pred, truth, dim="time")
    assert per_cell.dims == ("lat", "lon")
    np.testing.assert_allclose(per_cell.values[:, 0], [2.0, 2.0])
    # weights=None: equal weights; explicit weights: used as given
    assert float(metrics.rmse(pred, truth, weights=None)) == pytest.approx(math.sqrt((1 + 4 + 9 + 4) / 4))
    w = xr.DataArray([0.0, 1.0], dims="lat", coords={"lat": truth["lat"]})
    assert float(metrics.bias(pred, truth, weights=w)) == pytest.approx(2.0)
    # NaN is skipped, not propagated
    assert float(metrics.mae(pred.where(pred != 3), truth, weights=None)) == pytest.approx((1 + 2 + 2) / 3)


def test_metrics_on_projected_xy_grid():
    """A radar-like (time, y, x) field: no lat, so area weights are equal weights."""
    truth = xr.DataArray(np.zeros((2, 3, 4)), dims=("time", "y", "x"),
                         coords={"time": [0, 1], "y": [2.0, 1.0, 0.0], "x": [0.0, 1.0, 2.0, 3.0]})
    pred = truth + np.arange(24).reshape(2, 3, 4)
    assert float(metrics.rmse(pred, truth)) == pytest.approx(math.sqrt(np.mean(np.arange(24) ** 2)))
    np.testing.assert_allclose(metrics.global_mean(pred).values, [5.5, 17.5])
    np.testing.assert_allclose(metrics.mae(pred, truth, dim=("time", "x")).values, [7.5, 11.5, 15.5])


def test_r2_by_hand():
    """SST about each cell's mean over time (the evaluation set's climatology), cos(lat) weights."""
    truth = _field([[1, 3], [5, 7]])  # (time, lat): cell means 3 (equator) and 5 (60N); every anomaly is +-2
    pred = truth + 1.0
    assert metrics.r2(pred, truth) == pytest.approx(1 - 1.0 / 4.0, rel=1e-12)
    assert metrics.r2(truth, truth) == 1.0
    # about the grand weighted mean instead, the spatial pattern would count as skill
    w = np.array([1.0, 0.5])
    mean = (np.array([[1, 3], [5, 7]]) * w).sum() / (w.sum() * 2)
    ss_tot = (((np.array([[1, 3], [5, 7]]) - mean) ** 2) * w).sum() / (w.sum() * 2)
    assert metrics.r2(pred, truth, sample_dim=None) == pytest.approx(1 - 1.0 / ss_tot, rel=1e-12)
    with pytest.raises(ValueError, match="sample_dim 'member'"):
        metrics.r2(pred, truth, sample_dim="member")


def test_r2_is_scikit_learns_and_the_attribution_skill():
    from sklearn.metrics import r2_score

    from climateml.attribution import r2_skill

    rng = np.random.default_rng(1)
    truth = _field(rng.normal(size=(30, 2)) * [1.0, 3.0] + [10.0, -5.0])
    pred = truth + rng.normal(scale=0.5, size=truth.shape)
    want = r2_score(truth.values.reshape(30, -1), pred.values.reshape(30, -1), multioutput="variance_weighted")
    assert float(metrics.r2(pred, truth, weights=None)) == pytest.approx(want, rel=1e-12)
    assert r2_skill(pred.values, truth.values) == pytest.approx(want, rel=1e-12)
    pred[0, 0, 0] = np.nan  # a missing prediction leaves its cell out of both sums
    keep = np.ones((30, 4), bool)
    keep[0, 0] = False
    t, p = truth.values.reshape(30, -1), pred.values.reshape(30, -1)
    clim = np.array([t[keep[:, j], j].mean() for j in range(4)])
    want = 1 - ((p - t) ** 2)[keep].sum() / ((t - clim) ** 2)[keep].sum()
    assert float(metrics.r2(pred, truth, weights=None)) == pytest.approx(want, rel=1e-12)


def test_nrmse_by_hand():
    truth = _field([[2, 2], [4, 4]])  # global mean 2 then 4: normaliser |3|
    # spatial pattern error with zero global mean: +1 at the equator, -2 at 60N (weights 1, 0.5)
    pattern = truth + _field([[1, -2], [1, -2]])
    out = metrics.nrmse(pattern, truth)
    assert out["nrmse_global"] == pytest.approx(0.0, abs=1e-12)
    assert out["nrmse_spatial"] == pytest.approx(math.sqrt((1 * 1 + 0.5 * 4) / 1.5) / 3, rel=1e-12)
    assert out["nrmse_total"] == pytest.approx(out["nrmse_spatial"], rel=1e-12)
    # errors of opposite sign in time cancel in the time-mean map but not in the global series
    wobble = truth + _field([[1, 1], [-1, -1]])
    out = metrics.nrmse(wobble, truth)
    assert out["nrmse_spatial"] == pytest.approx(0.0, abs=1e-12)
    assert out["nrmse_global"] == pytest.approx(1 / 3, rel=1e-12)
    assert out["nrmse_total"] == pytest.approx(5 / 3, rel=1e-12)
    # a uniform bias: both terms, total = spatial + 5 global; the sign of the truth does not matter
    out = metrics.nrmse(-truth - 0.6, -truth)
    assert out["nrmse_spatial"] == pytest.approx(0.2, rel=1e-12)
    assert out["nrmse_global"] == pytest.approx(0.2, rel=1e-12)
    assert out["nrmse_total"] == pytest.approx(1.2, rel=1e-12)
