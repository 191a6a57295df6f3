"""The two demonstrations with known answers, at a small size: the Mamalakis et al. (2022) fidelity benchmark
and the Clever-Hans twins (a confounded data set and its clean twin)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr

from climateml.attribution.confounded import CUE_REGION, generate_confounded, run_clever_hans, write_confounded
from climateml.attribution.fidelity import make_fidelity_data, pattern_correlation, piecewise_linear, run_fidelity

torch.set_num_threads(1)


def test_fidelity_ground_truth_is_additive_and_zero_at_the_reference():
    ds = make_fidelity_data(50, shape=(4, 5), seed=1)
    np.testing.assert_allclose(ds["contribution"].sum(("lat", "lon")).values, ds["y"].values, rtol=1e-5)
    bp, sl = ds["breakpoints"].values, ds["slopes"].values
    np.testing.assert_array_equal(piecewise_linear(np.zeros((1, 20)), bp, sl), 0.0)
    # piecewise linear: slope k between breakpoints k-1 and k
    v = np.full((1, 20), bp[:, 0] - 0.1)
    w = np.full((1, 20), bp[:, 0] - 0.2)
    np.testing.assert_allclose((piecewise_linear(v, bp, sl) - piecewise_linear(w, bp, sl)) / 0.1, sl[None, :, 0], rtol=1e-6)


def test_fidelity_benchmark_small(tmp_path):
    res = run_fidelity(n_train=12000, n_test=100, shape=(6, 8), epochs=8,
                       methods=("saliency", "input_x_gradient", "integrated_gradients", "occlusion"), out_dir=tmp_path)
    m = res["methods"]
    assert res["r2_test"] > 0.9
    assert m["integrated_gradients"]["correlation"] >= 0.8
    assert m["input_x_gradient"]["correlation"] >= 0.8
    assert m["saliency"]["correlation"] < 0.5  # plain gradient is far lower
    assert json.loads((tmp_path / "fidelity.json").read_text())["methods"] == m  # floats survive JSON exactly
    assert (tmp_path / "figures" / "fidelity_correlation.png").stat().st_size > 10_000
    assert (tmp_path / "figures" / "fidelity_maps.png").stat().st_size > 10_000
    # the reported correlations, recomputed from the written maps with numpy's Pearson correlation per sample
    ds = xr.load_dataset(tmp_path / "fidelity_maps.nc")
    truth = ds["contribution"].values
    assert truth.shape == (100, 6, 8)
    for name, scores in m.items():
        a = ds[f"attribution_{name}"].transpose(*ds["contribution"].dims).values
        ref = np.array([np.corrcoef(a[i].ravel(), truth[i].ravel())[0, 1] for i in range(len(a))])
        np.testing.assert_allclose(pattern_correlation(a, truth), ref, rtol=1e-9, atol=1e-12, err_msg=name)
        assert scores["correlation"] == pytest.approx(np.nanmean(ref), abs=1e-6), name
        assert scores["correlation_std"] == pytest.approx(np.nanstd(ref), abs=1e-6), name
    # a constant map has no correlation
    const = np.stack([np.ones_like(truth[0]), truth[1]])
    corr = pattern_correlation(const, truth[:2])
    assert np.isnan(corr[0]) and corr[1] == pytest.approx(1.0)


def test_confounded_twins_differ_only_in_the_cue(tmp_path):
    data = generate_confounded(n_train=200, n_val=50, n_test=50, nlat=12, nlon=16)
    conf, clean = data["confounded"], data["clean"]
    for s in ("train", "val", "test"):
        xr.testing.assert_equal(conf[s][["tas", "psl", "heat_index"]], clean[s][["tas", "psl", "heat_index"]])
        outside = ~((conf[s].lat >= CUE_REGION["lat"][0]) & (conf[s].lat <= CUE_REGION["lat"][1]))
        xr.testing.assert_equal(conf[s]["station_density"].where(outside), clean[s]["station_density"].where(outside))

    def cue_corr(ds):
        patch = ds["station_density"].sel(lat=slice(*CUE_REGION["lat"]), lon=slice(*CUE_REGION["lon"])).mean(("lat", "lon"))
        return float(np.corrcoef(patch, ds["heat_index"])[0, 1])

    assert cue_corr(conf["train"]) > 0.9 and cue_corr(conf["val"]) > 0.9
    assert abs(cue_corr(conf["test"])) < 0.35 and abs(cue_corr(clean["train"])) < 0.3
    paths = write_confounded(tmp_path, n_train=20, n_val=5, n_test=5, nlat=6, nlon=8)
    assert len(paths) == 6 and xr.open_dataset(paths[0])["tas"].attrs["units"] == "K"


def test_clever_hans_small(tmp_path):
    res = run_clever_hans(tmp_path, n_train=1000, n_val=300, n_test=300, epochs=12, n_attribution=100,
                          scored_methods=("saliency",))  # and the diagnosed method, integrated gradients
    conf, clean = res["confounded"], res["clean"]
    assert set(res) == {"confounded", "clean"}
    for r in (conf, clean):
        assert {"relevance_mass_cue", "skill", "skill_cue_ablated", "spray_n_clusters"} <= set(r)
    assert conf["relevance_mass_cue"] >= 3 * clean["relevance_mass_cue"]
    assert conf["skill"] - conf["skill_cue_ablated"] > 0.5          # ablating the cue ruins the confounded model
    assert abs(clean["skill"] - clean["skill_cue_ablated"]) < max(0.05, 2 * clean["skill_std"])  # within noise
    assert conf["skill_test"] < clean["skill_test"]                 # and it fails where the cue is random
    for r in (conf, clean):  # the default baseline's maps are faithful to the model and pass the sanity check
        ig = r["method_scores"]["integrated_gradients"]
        assert set(r["method_scores"]) == {"saliency", "integrated_gradients"}
        assert ig["faithfulness_correlation"] > 0.8 and ig["sanity_check"] == "passes"
        assert ig["region_perturbation_auc"] > ig["region_perturbation_auc_random_order"]
    assert (tmp_path / "figures" / "method_scores_confounded.png").stat().st_size > 10_000
    assert (tmp_path / "figures" / "sanity_confounded.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "clever_hans.json").read_text())
    assert saved["confounded"]["relevance_mass_cue"] == pytest.approx(conf["relevance_mass_cue"])
    assert (tmp_path / "figures" / "attribution_confounded.png").stat().st_size > 10_000
    assert xr.open_dataset(tmp_path / "attribution_confounded.nc")["attribution_station_density"].dims == ("sample", "lat", "lon")


def test_commands_synth_and_demo(tmp_path, capsys):
    """`climateml synth confounded` and `climateml demo clever-hans`, through the command's entry point."""
    from climateml.cli import main

    assert main(["synth", "confounded", "--out", str(tmp_path / "data"), "--n-train", "600", "--n-val", "150",
                 "--n-test", "150"]) == 0
    with xr.open_dataset(tmp_path / "data" / "confounded" / "train.nc") as train:
        assert {"tas", "psl", "station_density", "heat_index"} <= set(train.data_vars)
        assert train["heat_index"].size == 600
    assert main(["demo", "clever-hans", "--out", str(tmp_path / "demo"), "--data", str(tmp_path / "data"),
                 "--epochs", "8", "--n-attribution", "60", "--no-figures", "--threads", "1",
                 "--score-methods", "integrated_gradients"]) == 0
    assert main(["demo", "something-else"]) == 2
    res = json.loads((tmp_path / "demo" / "clever_hans.json").read_text())
    assert res["confounded"]["relevance_mass_cue"] > res["clean"]["relevance_mass_cue"]
    out = capsys.readouterr().out
    assert "confounded / clean" in out and "confounded: scores of integrated_gradients: faithfulness_correlation" in out


def test_attribute_command_on_the_temperature_task(small_climatebench, tmp_path):
    """`climateml attribute` as cli.py would run it: model and DataModule from the task's YAML, a regional target."""
    from pathlib import Path

    from climateml.cli import main

    config = Path(__file__).resolve().parents[1] / "configs" / "temperature.yaml"
    assert main(["attribute", "--config", str(config), "--method", "integrated_gradients", "--n_samples", "5",
                 "--target", "{kind: region_mean, index: tas, lat: [30, 60], lon: [-10, 40]}",
                 "--options", "{n_steps: 8}", "--out", str(tmp_path), "--n_figures", "1",
                 "--data.init_args.data_dir", str(small_climatebench), "--trainer.logger", "false"]) == 0
    ds = xr.load_dataset(tmp_path / "attribution_integrated_gradients_test.nc")
    assert ds["attribution_integrated_gradients"].dims == ("sample", "feature")
    assert list(ds["feature"].values) == ["CO2", "CH4"]
    assert list(ds["year"].values[:2]) == [2015, 2016] and set(ds["scenario"].values) == {"ssp245"}
    assert "lat 30..60, lon -10..40" in ds.attrs["target"]
    assert (tmp_path / "figures" / "attribution_integrated_gradients_test_0.png").stat().st_size > 10_000
    assert (tmp_path / "figures" / "attribution_integrated_gradients_test_features.png").stat().st_size > 10_000
