"""The Clever-Hans attribution notebook runs end to end on small data, and its numbers tell the two models apart."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("captum")
from notebook_runner import committed_code_cells, printed_table, run_notebook, tagged_text  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "02_clever_hans_attribution.ipynb"
SAMPLES, EPOCHS, N_ATTRIBUTION, FIDELITY_SAMPLES = 600, 8, 100, 8000
METHODS = ["saliency", "input_x_gradient", "smoothgrad", "integrated_gradients", "deeplift", "gradient_shap",
           "occlusion", "grad_cam"]
TAGS = ("skill", "coords", "relevance_mass", "relevance_ig", "ablation", "importance", "spray", "fidelity", "scores",
        "netcdf")
SETTINGS = ("CLIMATEML_CH_SAMPLES", "CLIMATEML_CH_EPOCHS", "CLIMATEML_CH_ATTRIBUTION", "CLIMATEML_CH_FIDELITY_SAMPLES",
            "CLIMATEML_CH_OUT", "CLIMATEML_CH_THREADS")


def test_committed_notebook_is_valid_and_has_no_outputs():
    code = committed_code_cells(NOTEBOOK)
    source = "\n".join(c.source for c in code)
    for name in SETTINGS:
        assert name in source, f"the settings cell does not read {name}"
    for tag in TAGS:
        assert sum(tag in c.metadata.get("tags", []) for c in code) == 1, f"expected one code cell tagged {tag!r}"
    # the notebook calls the package, it does not re-implement it
    for call in ("generate_confounded(", "train_cnn(", "attribute(", "relevance_mass_accuracy(", "cue_ablation(",
                 "permutation_importance(", "spray(", "optimise_input(", "run_fidelity(", "write_cf("):
        assert call in source, f"the notebook does not call {call[:-1]}"


def test_clever_hans_notebook_runs_on_small_data(tmp_path, monkeypatch):
    out = tmp_path / "out"
    settings = {"CLIMATEML_CH_SAMPLES": SAMPLES, "CLIMATEML_CH_EPOCHS": EPOCHS,
                "CLIMATEML_CH_ATTRIBUTION": N_ATTRIBUTION, "CLIMATEML_CH_FIDELITY_SAMPLES": FIDELITY_SAMPLES,
                "CLIMATEML_CH_OUT": out, "CLIMATEML_CH_THREADS": 1, "MPLBACKEND": "Agg"}
    nb = run_notebook(NOTEBOOK, settings, tmp_path, monkeypatch)

    # the confounded model beats the clean one on validation data (the cue is there) and fails on test data
    skill = printed_table(tagged_text(nb, "skill"))
    assert list(skill.index) == ["confounded", "clean"] and list(skill) == ["r2_train", "r2_val", "r2_test"]
    assert skill.loc["confounded", "r2_val"] > 0.85 and skill.loc["confounded", "r2_val"] > skill.loc["clean", "r2_val"]
    assert skill.loc["clean", "r2_test"] > 0.4
    assert skill.loc["confounded", "r2_test"] < skill.loc["clean", "r2_test"] - 0.5

    # attribution maps keep the input's variables, dims and coordinates
    coords = tagged_text(nb, "coords")
    assert "same variables, dims and coordinates as the input: True" in coords
    assert f"sizes: {{'sample': {N_ATTRIBUTION}, 'lat': 16, 'lon': 24}}" in coords

    # relevance mass on the cue: the confounded model's is several times the clean model's for every method
    # that attributes per variable (Grad-CAM draws one map for all variables, so it cannot single out the cue)
    mass = printed_table(tagged_text(nb, "relevance_mass"))
    assert list(mass.index) == METHODS and list(mass) == ["confounded", "clean", "ratio"]
    assert mass.loc["integrated_gradients", "confounded"] >= 2.5 * mass.loc["integrated_gradients", "clean"]
    for method in ("input_x_gradient", "deeplift", "gradient_shap", "occlusion", "saliency"):
        assert mass.loc[method, "confounded"] >= 2 * mass.loc[method, "clean"], method
    np.testing.assert_allclose(mass["ratio"], mass["confounded"] / mass["clean"], rtol=0.02)
    detail = printed_table(tagged_text(nb, "relevance_ig"))
    assert list(detail) == ["mass_cue", "mass_cue_oriented", "rank_cue", "mass_signal_region"]
    assert detail.loc["confounded", "mass_cue"] == pytest.approx(mass.loc["integrated_gradients", "confounded"],
                                                                abs=1e-3)
    for col in ("mass_cue", "mass_cue_oriented", "rank_cue"):
        assert detail.loc["confounded", col] > 2 * detail.loc["clean", col], col
    assert detail.loc["clean", "mass_signal_region"] > 2 * detail.loc["confounded", "mass_signal_region"]

    # ablating the cue ruins the confounded model's skill; the clean model's stays within noise
    abl = printed_table(tagged_text(nb, "ablation"))
    assert list(abl) == ["skill", "skill_cue_climatology", "skill_cue_shuffled", "shuffle_std", "skill_drop"]
    np.testing.assert_allclose(abl["skill"], skill["r2_val"], atol=2e-3)
    assert abl.loc["confounded", "skill_drop"] > 0.5
    assert abs(abl.loc["clean", "skill_drop"]) < 0.05
    assert abl.loc["confounded", "skill_drop"] > abl.loc["clean", "skill_drop"] + 0.4
    assert abl.loc["confounded", "skill_cue_shuffled"] < abl.loc["confounded", "skill"] - 0.5
    assert abs(abl.loc["clean", "skill_cue_shuffled"] - abl.loc["clean", "skill"]) < 0.05

    # permutation importance: station density for the confounded model, temperature for the clean one
    imp = printed_table(tagged_text(nb, "importance"))
    assert list(imp.index) == ["tas", "psl", "station_density"] and list(imp) == ["confounded", "clean"]
    assert imp.loc["station_density", "confounded"] > 0.5 and abs(imp.loc["station_density", "clean"]) < 0.05
    assert imp["confounded"].idxmax() == "station_density" and imp["clean"].idxmax() == "tas"

    # SpRAy: every explained sample in exactly one cluster
    found = re.findall(r"^(\w+): (\d+) clusters, members \[([\d, ]+)\]", tagged_text(nb, "spray"), re.M)
    assert [twin for twin, _, _ in found] == ["confounded", "clean"]
    for twin, n, members in found:
        counts = [int(v) for v in members.split(",")]
        assert len(counts) == int(n) >= 1 and sum(counts) == N_ATTRIBUTION, twin

    # fidelity: integrated gradients and input x gradient follow the ground truth, the plain gradient does not
    fid = printed_table(tagged_text(nb, "fidelity"))
    assert {"saliency", "input_x_gradient", "integrated_gradients", "smoothgrad"} <= set(fid.index)
    assert fid.loc["integrated_gradients", "correlation"] >= 0.75
    assert fid.loc["input_x_gradient", "correlation"] >= 0.75
    assert fid.loc["saliency", "correlation"] < 0.5
    assert fid.loc["integrated_gradients", "correlation"] - fid.loc["saliency", "correlation"] > 0.4
    saved = json.loads((out / "fidelity" / "fidelity.json").read_text())
    assert saved["methods"]["integrated_gradients"]["correlation"] == pytest.approx(
        fid.loc["integrated_gradients", "correlation"], abs=1e-3)
    assert (out / "fidelity" / "figures" / "fidelity_correlation.png").stat().st_size > 10_000

    # faithfulness scores and the sanity check on the confounded model: path methods are faithful, gradient
    # methods pass the randomisation check, the input itself fails it
    text = tagged_text(nb, "scores")
    scores = printed_table(text.split("sanity check (")[0])
    assert list(scores.index) == ["saliency", "input_x_gradient", "integrated_gradients", "deeplift", "gradient_shap",
                                  "occlusion"]
    for method in ("integrated_gradients", "deeplift", "occlusion"):
        assert scores.loc[method, "faithfulness_correlation"] > 0.5, method
        assert scores.loc[method, "region_perturbation_auc"] > scores.loc[method, "region_perturbation_auc_random_order"]
    for method in ("saliency", "input_x_gradient", "integrated_gradients"):
        assert scores.loc[method, "sanity_check"] == "passes" and abs(scores.loc[method, "randomisation_spearman"]) < 0.5
    assert "the input itself FAILS" in text

    # the NetCDF file: maps, inputs and clusters of both models on the data's own grid
    assert "read back identical: True" in tagged_text(nb, "netcdf")
    with xr.open_dataset(out / "clever_hans_attribution.nc") as ds:
        for v in ("tas", "psl", "station_density"):
            assert ds[f"attribution_{v}"].dims == ("model", "sample", "lat", "lon"), v
            assert np.isfinite(ds[f"attribution_{v}"].values).all(), v
        assert list(ds["model"].values) == ["confounded", "clean"] and ds.sizes["sample"] == N_ATTRIBUTION
        np.testing.assert_allclose(ds["lat"].values, np.linspace(35.0, 72.5, 16))
        np.testing.assert_allclose(ds["lon"].values, np.linspace(-15.0, 42.5, 24))
        assert ds["lat"].attrs["units"] == "degrees_north"
        assert ds.attrs["method"] == "integrated_gradients"
        assert ds["spray_cluster"].dims == ("model", "sample")
        assert ds["station_density"].attrs["units"] == "stations per 1e4 km2"
        # the stored maps give the notebook's relevance mass (integrated gradients, positive relevance)
        pos = ds["attribution_station_density"].clip(min=0)
        total = sum(ds[f"attribution_{v}"].clip(min=0).sum(("lat", "lon")) for v in ("tas", "psl", "station_density"))
        cue = pos.where((ds.lat >= 60) & (ds.lat <= 70) & (ds.lon >= 22.5) & (ds.lon <= 37.5)).sum(("lat", "lon"))
        share = (cue / total).mean("sample")
        assert float(share.sel(model="confounded")) == pytest.approx(detail.loc["confounded", "mass_cue"], abs=2e-3)
        assert float(share.sel(model="clean")) == pytest.approx(detail.loc["clean", "mass_cue"], abs=2e-3)
