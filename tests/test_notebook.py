"""The global temperature lab notebook runs end to end on small sample data and writes what it promises."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from notebook_runner import committed_code_cells, printed_table, run_notebook, tagged_text  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "01_global_temperature_lab.ipynb"
NLAT, NLON, EPOCHS, ENSEMBLE = 12, 18, 3, 2
SSP245_YEARS = np.arange(2015, 2101)  # 86 years


def test_committed_notebook_is_valid_and_has_no_outputs():
    code = committed_code_cells(NOTEBOOK)
    source = "\n".join(c.source for c in code)
    for name in ("CLIMATEML_LAB_DATA", "CLIMATEML_LAB_NLAT", "CLIMATEML_LAB_NLON", "CLIMATEML_LAB_EPOCHS",
                 "CLIMATEML_LAB_ENSEMBLE", "CLIMATEML_LAB_RUNS"):
        assert name in source, f"the settings cell does not read {name}"


def test_lab_notebook_runs_on_small_sample_data(tmp_path, monkeypatch):
    data, runs = tmp_path / "climatebench", tmp_path / "runs"
    nb = run_notebook(NOTEBOOK, {"CLIMATEML_LAB_DATA": data, "CLIMATEML_LAB_RUNS": runs, "CLIMATEML_LAB_NLAT": NLAT,
                                 "CLIMATEML_LAB_NLON": NLON, "CLIMATEML_LAB_EPOCHS": EPOCHS,
                                 "CLIMATEML_LAB_ENSEMBLE": ENSEMBLE, "MPLBACKEND": "Agg"}, tmp_path, monkeypatch)

    # the sample data was generated on the requested grid, in the ClimateBench layout
    with xr.open_dataset(data / "outputs_ssp245.nc") as raw:
        assert dict(raw["tas"].sizes) == {"member": 3, "time": 86, "lat": NLAT, "lon": NLON}

    # the scores table: the emulator, pattern scaling and the other baselines, every score, finite numbers
    scores = printed_table(tagged_text(nb, "metrics"), ["emulator [64, 64]", "pattern scaling", "multiple linear regression",
                                                 "random forest", "gaussian process"])
    assert list(scores) == ["rmse", "mae", "bias", "r2", "nrmse_spatial", "nrmse_global", "nrmse_total"]
    assert np.isfinite(scores.to_numpy()).all() and (scores["rmse"] > 0).all()
    assert (scores["mae"] <= scores["rmse"]).all()
    # ensemble and architecture tables: one row per member plus the mean; two architectures
    printed_table(tagged_text(nb, "ensemble"), [f"member {i}" for i in range(ENSEMBLE)] + ["ensemble mean"])
    archs = printed_table(tagged_text(nb, "architectures"), ["[64, 64]", "[128, 128], dropout 0.2"])
    assert list(archs["epochs"]) == [EPOCHS, EPOCHS] and (archs["best_val_loss"] > 0).all()
    assert archs.loc["[64, 64]", "parameters"] == (2 * 64 + 64) + (64 * 64 + 64) + (64 + 1) * NLAT * NLON

    # training honoured the epoch setting and logged learning curves for every network
    logs = sorted(p.relative_to(runs).parts[0] for p in runs.glob("*/version_*/metrics.csv"))
    assert logs == ["arch_128x128_dropout"] + [f"ensemble_member{i}" for i in range(ENSEMBLE)] + ["temperature"]
    assert len(list((runs / "temperature").glob("version_*/checkpoints/best-*.ckpt"))) == 1

    history = pd.read_csv(next((runs / "temperature").glob("version_*/metrics.csv")))
    assert history["epoch"].max() == EPOCHS - 1 and history["val_loss"].notna().sum() == EPOCHS

    # the NetCDF output: tas(time, lat, lon) for the 86 years of ssp245, with coordinates and units
    path = runs / "lab_predictions_ssp245.nc"
    assert path.exists()
    with xr.open_dataset(path) as out:
        for name in ("tas", "tas_linear_baseline", "tas_pattern_scaling", "tas_ensemble_mean", "tas_ensemble_std"):
            assert out[name].dims == ("time", "lat", "lon"), name
            assert out[name].attrs["units"] == "K"
            assert np.isfinite(out[name].values).all(), name
        np.testing.assert_array_equal(out["time"].values, SSP245_YEARS)
        assert out.sizes["lat"] == NLAT and out.sizes["lon"] == NLON
        assert out["lat"].attrs["units"] == "degrees_north" and out.attrs["scenario"] == "ssp245"
        assert float(out["tas_ensemble_std"].min()) >= 0.0 and float(out["tas_ensemble_std"].max()) > 0.0
        # the linear baseline, fitted on the same years, must reproduce ssp245's warming (about 1 K -> 3 K)
        w = np.cos(np.deg2rad(out["lat"]))
        warming = out["tas_linear_baseline"].weighted(w).mean(("lat", "lon"))
        assert 0.5 < float(warming.sel(time=2015)) < float(warming.sel(time=2100)) < 5.0
