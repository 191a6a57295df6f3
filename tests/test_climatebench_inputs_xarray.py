"""ClimateBenchDataModule.inputs_xarray: the temperature lab's model inputs as xarray on (sample, feature) with
each sample's scenario and year, so attribution of the emulator comes back labelled (and `climateml attribute`
writes it so).

Expected values come from the files read here with xarray (scenario order, years) and from the DataModule's
own loaders (the tensors the model is fed), never from the method under test.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import xarray as xr

from climateml.attribution import attribute, region_mean
from climateml.attribution.commands import attribute_task
from climateml.attribution.plots import plot_feature_attribution, save
from climateml.data import ClimateBenchDataModule
from climateml.errors import ConfigError
from climateml.models import TemperatureEmulator
from climateml.writers import write_cf

TRAIN = ["historical", "ssp126", "ssp585", "hist-aer"]
SPLITS = ("train", "val", "test", "predict")


def module(data_dir, **kw) -> ClimateBenchDataModule:
    kw = {"train_scenarios": TRAIN, "test_scenarios": ["ssp245", "ssp370"], **kw}
    dm = ClimateBenchDataModule(data_dir=str(data_dir), **kw)
    dm.setup()
    return dm


def file_years(data_dir, scenario: str) -> np.ndarray:
    with xr.open_dataset(data_dir / f"inputs_{scenario}.nc") as ds:
        return ds["time"].values.astype(int)


def loader_x(dm: ClimateBenchDataModule, split: str) -> torch.Tensor:
    """The ``x`` the split's loader feeds the model, batch after batch (train: the dataset's order, unshuffled)."""
    if split == "train":
        return dm.dataset("train").tensors["x"]
    loader = {"val": dm.val_dataloader, "test": dm.test_dataloader, "predict": dm.predict_dataloader}[split]()
    return torch.cat([batch["x"] for batch in loader])


@pytest.fixture(scope="module")
def dm_series(small_climatebench):
    return module(small_climatebench)


@pytest.fixture(scope="module")
def dm_maps(small_climatebench):
    return module(small_climatebench, inputs=["CO2", "CH4", "SO2", "BC"], map_reduction="eof", n_eofs=2,
                  val_scenarios=["ssp126"], batch_size=16)


@pytest.mark.parametrize("which", ["dm_series", "dm_maps"])
@pytest.mark.parametrize("split", SPLITS)
def test_values_round_trip_to_the_loaders_tensors(which, split, request):
    dm = request.getfixturevalue(which)
    x = dm.inputs_xarray(split)
    assert torch.equal(torch.as_tensor(x.values), loader_x(dm, split))
    x.values[:] = 0  # a copy: changing it leaves the DataModule's samples alone
    assert torch.equal(torch.as_tensor(dm.inputs_xarray(split).values), loader_x(dm, split))


def test_dims_coords_and_attrs(dm_series, dm_maps, small_climatebench):
    x = dm_series.inputs_xarray("test")
    assert x.dims == ("sample", "feature")
    assert list(x["feature"].values) == ["CO2", "CH4"] == dm_series.spec.inputs
    assert list(x["feature_units"].values) == ["GtCO2", "GtCH4 yr-1"]
    assert x["scenario"].dims == x["year"].dims == ("sample",)
    years = [file_years(small_climatebench, s) for s in ("ssp245", "ssp370")]
    assert list(x["scenario"].values) == ["ssp245"] * len(years[0]) + ["ssp370"] * len(years[1])
    np.testing.assert_array_equal(x["year"].values, np.concatenate(years))
    assert "map_reduction" not in x.attrs

    m = dm_maps.inputs_xarray("val")
    assert list(m["feature"].values) == ["CO2", "CH4", "SO2_eof1", "SO2_eof2", "BC_eof1", "BC_eof2"]
    assert list(m["feature_units"].values)[2:] == ["kg m-2 s-1"] * 4
    assert "principal component 2" in str(m["feature_long_name"].values[3]) and m.attrs["map_reduction"] == "eof"
    assert set(m["scenario"].values) == {"ssp126"}
    np.testing.assert_array_equal(m["year"].values, file_years(small_climatebench, "ssp126"))


def test_shuffled_val_years_keep_their_scenario_and_year(dm_series, small_climatebench):
    """Val years are drawn at random from the training scenarios: each sample's labels still find its inputs."""
    x = dm_series.inputs_xarray("val")
    assert set(x["scenario"].values) <= set(TRAIN) and len(set(x["scenario"].values)) > 1
    for k in np.random.default_rng(0).choice(x.sizes["sample"], 10, replace=False):
        s, year = str(x["scenario"].values[k]), int(x["year"].values[k])
        row = dm_series.features(s)[int(np.flatnonzero(file_years(small_climatebench, s) == year)[0])]
        assert torch.equal(torch.as_tensor(x.values[k]), row)
    train = dm_series.inputs_xarray("train")
    pairs = set(zip(train["scenario"].values, train["year"].values)) | set(zip(x["scenario"].values, x["year"].values))
    assert len(pairs) == train.sizes["sample"] + x.sizes["sample"]  # every training year exactly once


def test_unknown_split(dm_series):
    with pytest.raises(ConfigError, match="split must be one of"):
        dm_series.inputs_xarray("validation")


def test_attribution_is_labelled_and_saves_to_netcdf(dm_maps, tmp_path):
    torch.manual_seed(0)
    model = TemperatureEmulator(dm_maps.spec, hidden_sizes=[16])
    x = dm_maps.inputs_xarray("test")
    grid = dm_maps.target_dataset("ssp245")
    target = region_mean("tas", lat=(30, 60), lon=(350, 40), grid=grid, names=["tas"])
    a = attribute(model, x, "integrated_gradients", target=target, baseline="climatology", n_steps=8)
    assert a.dims == x.dims
    for c in ("feature", "feature_units", "feature_long_name", "scenario", "year"):
        np.testing.assert_array_equal(a[c].values, x[c].values)
    path = write_cf(xr.Dataset({"attribution": a, "emissions": x}), tmp_path / "attribution.nc")
    back = xr.load_dataset(path)
    assert back["attribution"].dims == ("sample", "feature")
    assert list(back["feature"].values) == list(x["feature"].values)
    assert list(back["scenario"].values) == list(x["scenario"].values)
    np.testing.assert_array_equal(back["year"].values, x["year"].values)
    np.testing.assert_array_equal(back["attribution"].values, a.values)


def test_attribute_task_writes_labelled_netcdf_and_a_feature_figure(dm_series, tmp_path):
    """What `climateml attribute` runs on a temperature model: coordinates in the file, a figure of all samples."""
    torch.manual_seed(0)
    model = TemperatureEmulator(dm_series.spec, hidden_sizes=[16])
    path = attribute_task(model, dm_series, "integrated_gradients", {"kind": "global_mean", "index": "tas"},
                          split="test", n_samples=None, out_dir=tmp_path, baseline="climatology", n_figures=1,
                          n_steps=8)
    ds = xr.load_dataset(path)
    assert ds["attribution_integrated_gradients"].dims == ("sample", "feature")
    assert list(ds["feature"].values) == ["CO2", "CH4"] and set(ds["scenario"].values) == {"ssp245", "ssp370"}
    assert ds.sizes["sample"] == len(dm_series.dataset("test"))
    figures = tmp_path / "figures"
    assert (figures / "attribution_integrated_gradients_test_0.png").stat().st_size > 10_000
    assert (figures / "attribution_integrated_gradients_test_features.png").stat().st_size > 10_000


def test_feature_figure_without_scenario_or_year(tmp_path):
    """Without scenario or year: one panel along the sample dim, each feature's line and their sum, beside
    bars of each feature's mean |attribution|."""
    a = xr.DataArray(np.random.default_rng(0).normal(size=(12, 3)), dims=("sample", "feature"),
                     coords={"feature": ["CO2", "CH4", "SO2"]}, attrs={"method": "saliency"})
    fig = plot_feature_attribution(a)
    bars, panel = fig.axes
    np.testing.assert_allclose([b.get_height() for b in bars.patches], np.abs(a.values).mean(0))
    assert [t.get_text() for t in bars.get_xticklabels()] == ["CO2", "CH4", "SO2"]
    lines = {line.get_label(): line for line in panel.get_lines() if not line.get_label().startswith("_")}
    assert list(lines) == ["sum", "CO2", "CH4", "SO2"] and panel.get_xlabel() == "sample"
    np.testing.assert_array_equal(lines["sum"].get_xdata(), np.arange(12))
    np.testing.assert_allclose(lines["sum"].get_ydata(), a.values.sum(1))
    for j, name in enumerate(["CO2", "CH4", "SO2"]):
        np.testing.assert_allclose(lines[name].get_ydata(), a.values[:, j])
    assert plt.imread(save(fig, tmp_path / "f.png")).ndim == 3
    with pytest.raises(ValueError, match=r"\(sample, feature\)"):
        plot_feature_attribution(a.expand_dims(lat=[0.0], lon=[0.0], axis=(2, 3)))
