"""climateml.attribution: maps on the input's coordinates for four model layouts, targets checked against hand
computations, batching, diagnostics on hand-made relevance, SpRAy, plots, the Lightning callback, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

from climateml.attribution import (
    METHODS, ablate, attribute, class_score, climatology, cue_ablation, global_mean, nowcast_rain, optimise_input,
    permutation_importance, r2_skill, region_mean, relevance_mass_accuracy, relevance_rank_accuracy, spray,
)
from climateml.attribution.targets import OutputIndex, RegionMean, TargetModule, as_target
from climateml.errors import ConfigError, DataError
from climateml.grid import box_mask, lat_weights

torch.set_num_threads(1)

LAT = np.linspace(-60.0, 60.0, 8)
LON = np.arange(0.0, 360.0, 30.0)
N = 6


# ----------------------------------------------------------------------------------------------------------
# the four small models and their inputs
# ----------------------------------------------------------------------------------------------------------

def features_input(n=N) -> xr.DataArray:
    rng = np.random.default_rng(0)
    return xr.DataArray(rng.standard_normal((n, 5)).astype("f4"), dims=("sample", "feature"),
                        coords={"sample": np.arange(n), "feature": ["CO2", "CH4", "SO2", "BC", "N2O"]})


def field_input(n=N, channels=("tas", "psl", "pr")) -> xr.DataArray:
    rng = np.random.default_rng(1)
    return xr.DataArray(rng.standard_normal((n, len(channels), len(LAT), len(LON))).astype("f4"),
                        dims=("sample", "channel", "lat", "lon"),
                        coords={"sample": np.arange(n), "channel": list(channels), "lat": LAT, "lon": LON})


def radar_input(n=N, t=4, ny=10, nx=12) -> xr.DataArray:
    rng = np.random.default_rng(2)
    y = np.arange(ny) * 2.0 - ny
    x = np.arange(nx) * 2.0 - nx
    return xr.DataArray(rng.gamma(1.0, 1.0, (n, t, ny, nx)).astype("f4"), dims=("sample", "time", "y", "x"),
                        coords={"sample": np.arange(n), "time": np.arange(-t + 1, 1) * 5, "y": ("y", y, {"units": "km"}),
                                "x": ("x", x, {"units": "km"})})


class FieldCNN(nn.Module):
    """(channel, lat, lon) -> one value."""

    def __init__(self, c=3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, stride=2),
                                      nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 4 * 6, 1))

    def forward(self, x):
        return self.head(self.features(x))


def seg_net(c=3, classes=3) -> nn.Module:
    """(channel, lat, lon) -> (class, lat, lon) logits."""
    return nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, classes, 1))


def nowcast_net(t=4, leads=3) -> nn.Module:
    """(time, y, x) -> (lead_time, y, x) rain."""
    return nn.Sequential(nn.Conv2d(t, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, leads, 3, padding=1))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))


def _cases():
    torch.manual_seed(0)
    return {
        "mlp": (mlp(), features_input(), 1),
        "cnn": (FieldCNN(), field_input(), None),
        "segmentation": (seg_net(), field_input(), class_score(1, region={"lat": (0, 60), "lon": (0, 90)})),
        "nowcast": (nowcast_net(), radar_input(), nowcast_rain(2, region={"y": (-4, 4), "x": (-4, 4)})),
    }


CASES = _cases()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("method", METHODS)
def test_every_method_returns_the_inputs_dims_and_coords(case, method):
    model, x, target = CASES[case]
    if method == "grad_cam" and case == "mlp":
        with pytest.raises(ConfigError, match="grad_cam needs a convolutional layer"):
            attribute(model, x, method, target=target)
        return
    opts = {"n_steps": 8} if method == "integrated_gradients" else {"n_samples": 4} if method == "gradient_shap" else \
        {"nt_samples": 4} if method == "smoothgrad" else {}
    a = attribute(model, x, method, target=target, **opts)
    assert isinstance(a, xr.DataArray)
    assert a.dims == x.dims and a.shape == x.shape
    for d in x.coords:
        np.testing.assert_array_equal(a[d].values, x[d].values)
    assert a.name == f"attribution_{method}"
    assert a.attrs["method"] == method and a.attrs["target"]
    assert np.isfinite(a.values).all() and np.abs(a.values).sum() > 0
    assert model.training  # restored (the models were built in training mode)


def test_grad_cam_explains_the_last_conv_layer_before_the_output_head():
    for case, layer in (("cnn", "features.2"), ("segmentation", "0"), ("nowcast", "0")):
        model, x, target = CASES[case]
        a = attribute(model, x, "grad_cam", target=target)
        assert a.attrs["option_layer"] == layer
        # one map per sample, the same in every channel, on the input grid
        np.testing.assert_allclose(a.isel({x.dims[1]: 0}).values, a.isel({x.dims[1]: -1}).values)
    model, x, target = CASES["segmentation"]
    assert attribute(model, x, "grad_cam", target=target, layer="2").attrs["option_layer"] == "2"


def test_netcdf_roundtrip(tmp_path):
    from climateml.writers import write_cf

    model, x, target = CASES["segmentation"]
    a = attribute(model, x, "integrated_gradients", target=target, baseline="climatology", n_steps=8)
    path = write_cf(a.to_dataset(), tmp_path / "a.nc")
    back = xr.load_dataset(path)[a.name]
    np.testing.assert_allclose(back.values, a.values)
    assert back.attrs["method"] == "integrated_gradients" and "sum of class" not in back.attrs["target"]
    assert "over lat 0..60, lon 0..90" in back.attrs["target"]


# ----------------------------------------------------------------------------------------------------------
# targets against hand computations (linear models, so gradients are known exactly)
# ----------------------------------------------------------------------------------------------------------

class Identity(nn.Module):
    def forward(self, x):
        return x


def test_region_mean_is_the_cos_lat_weighted_box_mean():
    x = field_input(channels=("tas",)).isel(channel=0, drop=True)  # (sample, lat, lon): output map == input
    box = {"lat": (-20, 60), "lon": (300, 60)}  # wraps across Greenwich
    g = attribute(Identity(), x, "saliency", target=region_mean(lat=box["lat"], lon=box["lon"]), abs=False)
    m = box_mask(x, **box).values
    w = lat_weights(LAT)[:, None] * m
    expected = w / w.sum()
    np.testing.assert_allclose(g.values, np.broadcast_to(expected, g.shape), atol=1e-7)
    # the target module's value is the weighted mean itself
    tm = TargetModule(Identity(), as_target(region_mean(**box)).bind((8, 12), x, N, "sample").reducer)
    val = tm(torch.as_tensor(x.values)).numpy()
    np.testing.assert_allclose(val, (x.values * expected).sum((1, 2)), rtol=1e-5)


def test_global_mean_of_a_flat_multi_variable_output_by_name():
    """A temperature-emulator-like output: (n_targets * nlat * nlon) flat; target 'pr' global mean."""
    grid = xr.Dataset(coords={"lat": LAT, "lon": LON})
    lin = nn.Linear(5, 2 * 8 * 12)
    x = features_input()
    tgt = global_mean("pr", grid=grid, names=["tas", "pr"])
    g = attribute(lin, x, "saliency", target=tgt, abs=False)
    w = np.broadcast_to(lat_weights(LAT)[:, None], (8, 12))
    w = (w / w.sum()).ravel()
    expected = lin.weight.detach().numpy()[8 * 12:].T @ w
    np.testing.assert_allclose(g.values, np.broadcast_to(expected, g.shape), rtol=1e-5, atol=1e-7)


def test_class_score_over_a_mask_per_sample():
    x = field_input()
    conv = nn.Conv2d(3, 2, 1, bias=False)
    rng = np.random.default_rng(3)
    masks = xr.DataArray(rng.random((N, 8, 12)) > 0.7, dims=("sample", "lat", "lon"),
                         coords={"sample": x.sample, "lat": LAT, "lon": LON})
    g = attribute(conv, x, "saliency", target=class_score(1, region=masks), abs=False)
    w = conv.weight.detach().numpy()[1, :, 0, 0]  # (channel,)
    expected = w[None, :, None, None] * masks.values[:, None].astype("f4")
    np.testing.assert_allclose(g.values, expected, rtol=1e-6)


def test_nowcast_rain_at_one_lead_time_over_a_y_x_box():
    x = radar_input()
    conv = nn.Conv2d(4, 3, 1, bias=False)
    g = attribute(conv, x, "saliency", target=nowcast_rain(2, region={"y": (-4, 4), "x": (-4, 4)}), abs=False)
    inside = ((x.y >= -4) & (x.y <= 4)) & ((x.x >= -4) & (x.x <= 4))
    w = conv.weight.detach().numpy()[2, :, 0, 0]
    expected = w[None, :, None, None] * (inside.values / inside.values.sum())[None, None]
    np.testing.assert_allclose(g.values, np.broadcast_to(expected, g.shape), rtol=1e-5, atol=1e-8)


def test_output_index_and_config_targets():
    model, x, _ = CASES["mlp"]
    a1 = attribute(model, x, "input_x_gradient", target=2)
    a2 = attribute(model, x, "input_x_gradient", target={"kind": "index", "index": 2})
    a3 = attribute(model, x, "input_x_gradient", target=lambda out: out[:, 2])
    np.testing.assert_allclose(a1.values, a2.values)
    np.testing.assert_allclose(a1.values, a3.values)
    t = as_target({"kind": "region_mean", "index": 0, "lat": [0, 30], "lon": [0, 60]})
    assert isinstance(t, RegionMean) and t.region == {"lat": (0, 30), "lon": (0, 60)}
    assert isinstance(as_target(None), OutputIndex)


@pytest.mark.parametrize("method", ["integrated_gradients", "deeplift"])
def test_completeness_of_region_targets(method):
    """IG and DeepLift sum to target(x) - target(baseline) for a regional mean of a map output."""
    torch.manual_seed(0)
    model, x = seg_net(), field_input()
    tgt = class_score(2, region={"lat": (-30, 30)}, reduce="mean")
    base = climatology(x).isel(sample=0, drop=True)
    a = attribute(model, x, method, target=tgt, baseline=base, **({"n_steps": 64} if method != "deeplift" else {}))
    bound = tgt.bind((3, 8, 12), x, N, "sample")
    tm = TargetModule(model, bound.reducer).eval()
    with torch.no_grad():
        fx = tm(torch.as_tensor(x.values)).numpy()
        fb = tm(torch.as_tensor(np.broadcast_to(base.values, x.shape).copy())).numpy()
    np.testing.assert_allclose(a.sum(("channel", "lat", "lon")).values, fx - fb, rtol=2e-3, atol=2e-4)


def test_lrp_of_a_region_target_conserves_relevance_like_input_x_gradient():
    """ReLU nets without functional steps: LRP-epsilon equals input x gradient (Ancona et al. 2018), also through
    the region reduction (a frozen Linear)."""
    torch.manual_seed(0)
    model, x = seg_net(), field_input()
    tgt = class_score(0, region={"lat": (0, 60)})
    a = attribute(model, x, "lrp", target=tgt)
    b = attribute(model, x, "input_x_gradient", target=tgt)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-3, atol=1e-5)
    assert not any(hasattr(m, "rule") for m in model.modules())  # cleaned up after the call
    cnn = FieldCNN()  # nn.Flatten passes relevance through unchanged
    np.testing.assert_allclose(attribute(cnn, x, "lrp").values, attribute(cnn, x, "input_x_gradient").values,
                               rtol=1e-3, atol=1e-6)


def test_lrp_over_several_chunks_and_seeded_gradient_shap_and_one_sample_baseline():
    """LRP keeps its rules from chunk to chunk; gradient SHAP is reproducible for a seed; a one-sample baseline
    (e.g. a climatology field with a sample dim of 1) is broadcast over every sample."""
    torch.manual_seed(0)
    cnn, x = FieldCNN(), field_input(n=12)
    chunked = attribute(cnn, x, "lrp", internal_batch_size=4)
    np.testing.assert_allclose(chunked.values, attribute(cnn, x, "lrp", internal_batch_size=64).values,
                               rtol=1e-4, atol=1e-6)
    a = attribute(cnn, x, "gradient_shap", seed=3)
    np.testing.assert_array_equal(a.values, attribute(cnn, x, "gradient_shap", seed=3).values)
    assert not np.array_equal(a.values, attribute(cnn, x, "gradient_shap", seed=4).values)
    one = x.mean("sample").expand_dims(sample=[0])
    np.testing.assert_allclose(attribute(cnn, x, "integrated_gradients", baseline=one).values,
                               attribute(cnn, x, "integrated_gradients", baseline=x.mean("sample")).values, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# batching
# ----------------------------------------------------------------------------------------------------------

class CountingModel(nn.Module):
    """Records the rows of every forward pass."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.rows = inner, []

    def forward(self, x):
        self.rows.append(x.shape[0])
        return self.inner(x)


@pytest.mark.parametrize("method,opts,evals", [
    ("integrated_gradients", {"n_steps": 10}, 10), ("smoothgrad", {"nt_samples": 10}, 10),
    ("gradient_shap", {"n_samples": 10}, 10), ("occlusion", {"window": {"lat": 4, "lon": 4, "channel": 3}}, 6),
    ("deeplift", {}, 2),
])
def test_batched_with_a_memory_bound(method, opts, evals):
    torch.manual_seed(0)
    n = 12
    x = field_input(n)
    model = CountingModel(FieldCNN())
    a_big = attribute(model, x, method, internal_batch_size=10_000, **opts)
    passes_big = len(model.rows) - 1  # minus the one-sample trial pass
    assert max(model.rows[1:]) >= n * min(evals, 6)  # all samples (and several evaluations each) in one pass
    assert passes_big <= 3
    model.rows.clear()
    a_small = attribute(model, x, method, internal_batch_size=24, **opts)
    assert max(model.rows) <= 24
    if method in ("integrated_gradients", "occlusion", "deeplift"):
        np.testing.assert_allclose(a_small.values, a_big.values, rtol=1e-4, atol=1e-6)
    else:  # random draws: same distribution, close on average
        assert np.corrcoef(a_small.values.ravel(), a_big.values.ravel())[0, 1] > 0.5


@pytest.mark.parametrize("method", ["integrated_gradients", "saliency", "deeplift"])
def test_same_numbers_as_captum_called_per_sample(method):
    """The batched call (one backward pass per chunk) gives Captum's own per-sample numbers."""
    import captum.attr as ca

    torch.manual_seed(0)
    model, x = FieldCNN().eval(), field_input()
    kw = {"n_steps": 16} if method == "integrated_gradients" else {}
    a = attribute(model, x, method, **kw)
    cls = {"integrated_gradients": ca.IntegratedGradients, "saliency": ca.Saliency, "deeplift": ca.DeepLift}[method]
    if method != "saliency":  # the default baseline of a model without training statistics: the samples' mean
        kw["baselines"] = torch.as_tensor(x.values.mean(0, keepdims=True))
    ref = np.concatenate([cls(model).attribute(torch.as_tensor(x.values[i:i + 1]).requires_grad_(), target=0, **kw)
                          .detach().numpy()
                          for i in range(N)])
    np.testing.assert_allclose(a.values, ref, rtol=1e-5, atol=1e-8)


def test_seeded_methods_are_reproducible():
    model, x, _ = CASES["cnn"]
    a = attribute(model, x, "smoothgrad", seed=3, nt_samples=4)
    b = attribute(model, x, "smoothgrad", seed=3, nt_samples=4)
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.array_equal(a.values, attribute(model, x, "smoothgrad", seed=4, nt_samples=4).values)


def test_r2_skill_is_scikit_learns_variance_weighted_r2():
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(0)
    truth = rng.normal(size=(50, 3, 4)) * np.array([1.0, 5.0, 0.2])[:, None]
    pred = truth + rng.normal(scale=0.7, size=truth.shape)
    assert r2_skill(pred, truth) == pytest.approx(
        r2_score(truth.reshape(50, -1), pred.reshape(50, -1), multioutput="variance_weighted"), rel=1e-12)


def test_dataset_input_gives_a_dataset_back():
    x = field_input().to_dataset("channel")
    x["tas"].attrs["units"] = "K"
    a = attribute(FieldCNN(), x, "integrated_gradients", n_steps=8)
    assert isinstance(a, xr.Dataset) and list(a.data_vars) == ["tas", "psl", "pr"]
    assert a["tas"].dims == x["tas"].dims and a["tas"].attrs["method"] == "integrated_gradients"
    # the variable order follows the model's spec.inputs when it names them
    model = FieldCNN()
    model.spec = type("Spec", (), {"inputs": ["pr", "tas", "psl"], "input_shape": (3, 8, 12), "options": {}})()
    b = attribute(model, x, "saliency")
    ref = attribute(model, field_input().sel(channel=["pr", "tas", "psl"]), "saliency")
    np.testing.assert_allclose(b["pr"].values, ref.sel(channel="pr").values)


def test_attribute_task_draws_one_figure_per_sample_of_a_dataset_input(tmp_path):
    """climateml attribute's figures count the samples of a Dataset input, also when the Dataset lists another dim
    (here lat) before the sample dim."""
    from climateml.attribution.commands import attribute_task

    ds = xr.Dataset(coords={"lat": LAT, "lon": LON, "sample": [0]})
    ds["tas"] = field_input(1, channels=("tas",)).sel(channel="tas", drop=True)
    assert list(ds.dims)[0] == "lat"

    class DM:  # what attribute_task reads of a ClimateDataModule
        layout = type("Layout", (), {"coords": {}})()
        spec = type("Spec", (), {"outputs": []})()

        def setup(self, stage):
            pass

        def inputs_xarray(self, split):
            return ds

    attribute_task(FieldCNN(c=1), DM(), "saliency", n_samples=None, out_dir=tmp_path, n_figures=3, scores=False)
    assert [p.name for p in (tmp_path / "figures").iterdir()] == ["attribution_saliency_test_0.png"]


def test_field_layout_is_the_adapter_of_attribution_inputs():
    """FieldLayout stacks a Dataset (a variable stored (lon, lat) included) into the model's tensor order and puts
    numbers back on each variable's own dims; a DataArray is its own tensor. attribute() goes through it: the maps
    of the Dataset are the maps of the stacked DataArray."""
    from climateml.data.adapter import FieldLayout

    da = field_input()
    ds = da.to_dataset("channel")
    ds["psl"] = ds["psl"].transpose("sample", "lon", "lat")
    layout = FieldLayout.from_xarray(ds)
    assert layout.stacked and layout.variables == ["tas", "psl", "pr"] and layout.field_dims == ("lat", "lon")
    stacked = layout.stack(ds)
    assert stacked.dims == ("sample", "variable", "lat", "lon")
    np.testing.assert_array_equal(stacked.values, da.values)
    back = layout.unstack(stacked.values * 2, ds)
    assert back["psl"].dims == ("sample", "lon", "lat")
    np.testing.assert_array_equal(back["psl"].values, 2 * ds["psl"].values)
    single = FieldLayout.from_xarray(da)
    assert not single.stacked and single.stack(da) is da and single.unstack(da.values, da, "m").name == "m"
    model = FieldCNN()
    a, ref = attribute(model, ds, "saliency"), attribute(model, da, "saliency")
    np.testing.assert_array_equal(a["psl"].transpose("sample", "lat", "lon").values, ref.sel(channel="psl").values)


# ----------------------------------------------------------------------------------------------------------
# bad input: one clear line each
# ----------------------------------------------------------------------------------------------------------

def test_bad_input_errors():
    model, x, _ = CASES["segmentation"]
    with pytest.raises(ConfigError, match=r"target region lat 70..80 contains no cell of the grid \(lat -60..60"):
        attribute(model, x, "saliency", target=class_score(1, region={"lat": (70, 80)}))
    with pytest.raises(ConfigError, match="grad_cam needs a convolutional layer"):
        attribute(mlp(), features_input(), "grad_cam", target=0)
    gelu = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GELU(), nn.Conv2d(4, 3, 1))
    with pytest.raises(ConfigError, match=r"lrp: Captum has no rule for layer '1' \(GELU\)"):
        attribute(gelu, x, "lrp", target=class_score(0))
    with pytest.raises(DataError, match=r"cannot run on an input of shape \(2, 8, 12\) per sample"):
        attribute(model, x.isel(channel=[0, 1]), "saliency", target=class_score(0))
    with pytest.raises(ConfigError, match="attribution method must be one of"):
        attribute(model, x, "shapley", target=class_score(0))
    with pytest.raises(ConfigError, match=r"integrated_gradients has no option\(s\) \['nsteps'\]"):
        attribute(model, x, "integrated_gradients", target=class_score(0), nsteps=3)
    with pytest.raises(ConfigError, match="pass the target an index="):
        attribute(model, x, "saliency", target=global_mean())
    with pytest.raises(ConfigError, match="outputs"):
        attribute(model, x, "saliency")  # a map output needs a target
    spec_model = FieldCNN()
    spec_model.spec = type("Spec", (), {"inputs": ["tas", "psl", "pr"], "input_shape": (3, 8, 12),
                                        "options": {"coords": {"lat": LAT.tolist(), "lon": LON.tolist()}}})()
    with pytest.raises(DataError, match=r"'channel' coordinate \['psl', 'tas', 'pr'\] does not match"):
        attribute(spec_model, x.sel(channel=["psl", "tas", "pr"]), "saliency")
    with pytest.raises(DataError, match="expects \\(3, 8, 12\\)"):
        attribute(spec_model, field_input(channels=("tas", "psl")), "saliency")
    shifted = x.assign_coords(lon=x.lon + 1.0)
    with pytest.raises(DataError, match="'lon' coordinate"):
        attribute(spec_model, shifted, "saliency")
    with pytest.raises(DataError, match="baseline dims"):
        attribute(FieldCNN(), x, "integrated_gradients", baseline=x.isel(channel=0))


# ----------------------------------------------------------------------------------------------------------
# diagnostics on hand-made relevance
# ----------------------------------------------------------------------------------------------------------

def _relevance() -> xr.DataArray:
    vals = np.zeros((2, 2, 3, 4))
    vals[0, 1, 0, 0] = 3.0   # in the region
    vals[0, 0, 2, 3] = 1.0   # outside
    vals[0, 0, 1, 1] = -2.0  # negative: ignored
    vals[1, 0, 0, 1] = 2.0   # outside only
    return xr.DataArray(vals, dims=("sample", "channel", "lat", "lon"),
                        coords={"sample": [0, 1], "channel": ["tas", "cue"], "lat": [10.0, 20.0, 30.0],
                                "lon": [0.0, 10.0, 20.0, 30.0]})


def test_relevance_mass_and_rank_accuracy_by_hand():
    r = _relevance()
    region = {"channel": "cue", "lat": (5, 25), "lon": (0, 5)}  # 2 cells: (cue, 10, 0) and (cue, 20, 0)
    mass = relevance_mass_accuracy(r, region)
    np.testing.assert_allclose(mass.values, [3.0 / 4.0, 0.0])
    assert mass.attrs["mean"] == pytest.approx(0.375)
    rank = relevance_rank_accuracy(r, region)  # K = 2: top-2 of sample 0 are (cue,10,0)=3 and (tas,30,30)=1
    np.testing.assert_allclose(rank.values, [0.5, 0.0])
    # a sample with no positive relevance has no defined mass
    assert np.isnan(relevance_mass_accuracy(-r.clip(min=0), region).values).all()
    # orient: a map of a negative anomaly counts its evidence
    np.testing.assert_allclose(relevance_mass_accuracy(-r, region, orient=True).values[0], 3.0 / 4.0)


class ChannelModel(nn.Module):
    """Predicts the mean of channel 1 (the only channel it uses)."""

    def forward(self, x):
        return x[:, 1].mean((1, 2)).unsqueeze(1)


def test_cue_ablation_and_permutation_importance():
    x = field_input(200)
    y = x.isel(channel=1).mean(("lat", "lon")).values
    model = ChannelModel()
    used = cue_ablation(model, x, y, r2_skill, {"channel": "psl"}, fill="climatology")
    # a climatology fill makes the prediction the constant mean of y: R^2 exactly 0
    assert used["skill"] == pytest.approx(1.0) and used["skill_ablated"] == pytest.approx(0.0, abs=1e-9)
    unused = cue_ablation(model, x, y, r2_skill, {"channel": "tas"}, fill="shuffle", repeats=2)
    assert unused["change"] == pytest.approx(0.0, abs=1e-9)
    for fill in ("zeros", "noise", 5.0):
        ab = ablate(x, {"channel": "psl", "lat": (0, 60)}, fill)
        assert (ab.sel(channel="tas") == x.sel(channel="tas")).all()
        assert not (ab.sel(channel="psl").isel(lat=6) == x.sel(channel="psl").isel(lat=6)).all()  # 42.9N: in
        assert (ab.sel(channel="psl").isel(lat=0) == x.sel(channel="psl").isel(lat=0)).all()  # 60S: out
    imp = permutation_importance(model, x, y, r2_skill, n_repeats=2, patch={"lat": 4, "lon": 6})
    # shuffled, the prediction is an independent copy of y: E[(a - b)^2] = 2 var(y), so R^2 = -1 and the loss is 2
    assert float(imp["importance"].sel(channel="psl")) == pytest.approx(2.0, abs=0.15)
    assert imp["importance"].sel(channel="tas") == 0
    assert imp["importance_map"].sel(channel="psl").min() > 0 and float(imp["importance_map"].sel(channel="pr").max()) == 0


def test_backwards_optimisation_raises_the_target_smoothly():
    torch.manual_seed(0)
    model = seg_net()
    start = climatology(field_input(20))
    tgt = class_score(1, region={"lat": (0, 60), "lon": (0, 90)}, probability=True, reduce="mean")
    rough = optimise_input(model, start, tgt, steps=60, l2=0.01, smoothness=0.0)
    smooth = optimise_input(model, start, tgt, steps=60, l2=0.01, smoothness=50.0)
    assert rough.attrs["target_at_end"][0] > rough.attrs["target_at_start"][0]
    assert rough.dims == start.dims
    d_rough = np.abs(np.diff((rough - start).values, axis=-1)).mean()
    d_smooth = np.abs(np.diff((smooth - start).values, axis=-1)).mean()
    assert d_smooth < 0.5 * d_rough


def test_spray_finds_three_strategies():
    rng = np.random.default_rng(0)
    patterns = np.zeros((3, 8, 12))
    patterns[0, :3, :4] = 1
    patterns[1, 5:, 8:] = 1
    patterns[2, 3:5, 4:8] = 1
    labels = np.repeat([0, 1, 2], [30, 20, 10])
    maps = patterns[labels] * rng.uniform(0.5, 2, (60, 1, 1)) + 0.05 * rng.standard_normal((60, 8, 12))
    da = xr.DataArray(maps, dims=("sample", "lat", "lon"), coords={"sample": np.arange(60), "lat": LAT, "lon": LON})
    res = spray(da, pool=2, n_neighbors=5)
    assert res.n_clusters == 3
    assert list(res.counts.values) == [30, 20, 10]
    for c, truth in zip(range(3), (0, 1, 2)):
        assert (res.labels.values[labels == truth] == c).all()
    assert res.cluster_means.dims == ("cluster", "lat", "lon")


# ----------------------------------------------------------------------------------------------------------
# plots and the Lightning callback
# ----------------------------------------------------------------------------------------------------------

def _mesh_of(ax):
    """The one QuadMesh (a map's cells) drawn on ``ax``."""
    from matplotlib.collections import QuadMesh

    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    return mesh


def test_plots_show_the_maps_inputs_and_bars(tmp_path):
    """What each figure shows: per channel, the input map above its attribution map, both on the field's own
    grid with its extent, one symmetric colour range centred on zero for the attribution, the region boxes
    outlined; feature attributions as one bar per feature, red up and blue down. Saved as PNG files."""
    import matplotlib.pyplot as plt

    from climateml.attribution import plots

    # a segmentation class score on (channel, lat, lon): 2 rows (input, attribution) x 3 channels
    model, x, target = CASES["segmentation"]
    a = attribute(model, x, "integrated_gradients", target=target, n_steps=8)
    box = {"lat": (0, 60), "lon": (0, 90)}
    fig = plots.plot_attribution(a, x, sample=0, boxes=[box])
    maps = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in maps] == ["input tas", "input psl", "input pr"] + [
        f"attribution {c} (contours: input)" for c in ("tas", "psl", "pr")]
    lim = plots.symmetric_limit(a.isel(sample=0).values)
    for c, channel in enumerate(("tas", "psl", "pr")):
        top, bottom = _mesh_of(maps[c]), _mesh_of(maps[3 + c])
        np.testing.assert_array_equal(np.ma.getdata(top.get_array()).reshape(8, 12), x.isel(sample=0)[c].values)
        np.testing.assert_array_equal(np.ma.getdata(bottom.get_array()).reshape(8, 12), a.isel(sample=0)[c].values)
        assert bottom.get_clim() == pytest.approx((-lim, lim)) and bottom.get_cmap().name == "RdBu_r"
        for ax in (maps[c], maps[3 + c]):  # the grid's cells: 30 degrees of longitude, 120/7 of latitude
            assert ax.get_xlim() == pytest.approx((-15.0, 345.0))
            assert ax.get_ylim() == pytest.approx((-60.0 - 60.0 / 7, 60.0 + 60.0 / 7))
            outlines = [line.get_xydata() for line in ax.get_lines() if line.get_linestyle() == "--"]
            assert len(outlines) == 1 and {tuple(p) for p in outlines[0]} == {(0, 0), (90, 0), (90, 60), (0, 60)}
    assert (a.isel(sample=0).values > 0).any() and (a.isel(sample=0).values < 0).any()  # both colours in use
    plots.save(fig, tmp_path / "seg.png")
    plt.close(fig)

    # a nowcast on (time, y, x) km: 4 past frames, the second sample; axes in km, equal aspect
    model, x, target = CASES["nowcast"]
    a = attribute(model, x, "grad_cam", target=target)
    fig = plots.plot_attribution(a, x, sample=1)
    maps = [ax for ax in fig.axes if ax.get_title()]
    assert len(maps) == 2 * 4 and maps[4].get_title().startswith("attribution time -15")
    for t in range(4):
        np.testing.assert_array_equal(np.ma.getdata(_mesh_of(maps[4 + t]).get_array()).reshape(10, 12),
                                      a.isel(sample=1, time=t).values)
        np.testing.assert_array_equal(np.ma.getdata(_mesh_of(maps[t]).get_array()).reshape(10, 12),
                                      x.isel(sample=1, time=t).values)
        ax = maps[4 + t]
        assert ax.get_xlabel() == "x (km)" and ax.get_ylabel() == "y (km)" and ax.get_aspect() == 1.0
        assert ax.get_xlim() == pytest.approx((-13.0, 11.0)) and ax.get_ylim() == pytest.approx((-11.0, 9.0))
    plots.save(fig, tmp_path / "nowcast.png")
    plt.close(fig)

    # features: one bar per feature of sample 0, its height the attribution, red if it raises the target
    model, x, target = CASES["mlp"]
    a = attribute(model, x, "deeplift", target=target)
    fig = plots.plot_attribution(a, x)
    (ax,) = fig.axes
    bars = ax.patches
    np.testing.assert_allclose([b.get_height() for b in bars], a.isel(sample=0).values, rtol=1e-6)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["CO2", "CH4", "SO2", "BC", "N2O"]
    from matplotlib.colors import to_hex

    assert [to_hex(b.get_facecolor()) for b in bars] == ["#b2182b" if v >= 0 else "#2166ac"
                                                          for v in a.isel(sample=0).values]
    plots.save(fig, tmp_path / "mlp.png")
    plt.close(fig)
    for name in ("seg", "nowcast", "mlp"):
        assert plt.imread(tmp_path / f"{name}.png").shape[2] in (3, 4)  # a PNG image that reads back


def test_lightning_callback_writes_maps_and_logs_relevance_mass(tmp_path):
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from climateml.attribution.callbacks import AttributionSnapshot

    class Task(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = FieldCNN()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            x, y = batch
            return (self(x).squeeze(1) - y).pow(2).mean()

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_loss", (self(x).squeeze(1) - y).pow(2).mean())

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), 1e-2)

    x = field_input(32)
    y = torch.as_tensor(x.sel(channel="psl", lat=slice(0, 60)).mean(("lat", "lon")).values)
    loader = DataLoader(TensorDataset(torch.as_tensor(x.values), y), batch_size=16)
    cb = AttributionSnapshot(method="integrated_gradients", every_n_epochs=2, n_samples=5, samples=x,
                             regions={"signal": {"channel": "psl", "lat": [0, 60]}}, method_options={"n_steps": 8},
                             output_dir=str(tmp_path / "attr"))
    trainer = L.Trainer(max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[cb], accelerator="cpu")
    trainer.fit(Task(), loader, loader)
    assert [h["epoch"] for h in cb.history] == [1, 3]
    ds = xr.load_dataset(cb.paths[-1])
    assert ds["attribution_integrated_gradients"].dims == ("sample", "channel", "lat", "lon")
    assert ds.sizes["sample"] == 5 and "input" in ds
    assert "attribution/relevance_mass_signal" in trainer.callback_metrics
    assert 0 <= cb.history[-1]["relevance_mass_signal"] <= 1
    # the logged mass is the one of the maps in the written file, recomputed from them
    mass = relevance_mass_accuracy(ds["attribution_integrated_gradients"], {"channel": "psl", "lat": [0, 60]})
    assert mass.sizes["sample"] == 5 and np.isfinite(mass.values).all()
    expect = float(np.nanmean(mass.values))
    assert cb.history[-1]["relevance_mass_signal"] == pytest.approx(expect, rel=1e-5, abs=1e-6)
    assert trainer.callback_metrics["attribution/relevance_mass_signal"].item() == pytest.approx(expect, rel=1e-5,
                                                                                                 abs=1e-6)
    assert ds.attrs["relevance_mass_signal"] == pytest.approx(expect, rel=1e-5, abs=1e-6)


def test_lightning_callback_reads_the_datamodule_samples_once(tmp_path):
    from types import SimpleNamespace

    from climateml.attribution.callbacks import AttributionSnapshot

    class Logged(FieldCNN):
        def log(self, *args, **kwargs):
            pass

    x, reads = field_input(8), []

    class DataModule:
        def inputs_xarray(self, split):
            reads.append(split)
            return x

    cb = AttributionSnapshot(method="saliency", every_n_epochs=1, n_samples=3, output_dir=str(tmp_path / "attr"),
                             regions={"psl": {"channel": "psl"}})
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, datamodule=DataModule(), log_dir=None,
                              default_root_dir=str(tmp_path), current_epoch=0)
    for epoch in range(3):
        trainer.current_epoch = epoch
        cb.on_validation_epoch_end(trainer, Logged())
    assert reads == ["val"]
    assert [h["epoch"] for h in cb.history] == [0, 1, 2] and len(cb.paths) == 3
    assert xr.load_dataset(cb.paths[-1]).sizes["sample"] == 3


# ----------------------------------------------------------------------------------------------------------
# our own task models: the temperature emulator (flat map output, DataSpec) and a ClimateDataModule
# ----------------------------------------------------------------------------------------------------------

def _emulator():
    from climateml.data.base import DataSpec
    from climateml.models import TemperatureEmulator

    nlat, nlon, names = 8, 12, ["CO2", "CH4", "SO2", "BC"]
    stats = {"x_mean": torch.zeros(4), "x_std": torch.ones(4), "y_mean": torch.zeros(nlat * nlon),
             "y_std": torch.ones(nlat * nlon), "cell_weights": torch.ones(nlat * nlon) / (nlat * nlon)}
    spec = DataSpec(names, ["tas"], (4,), (nlat * nlon,), stats, {"field_dims": ["lat", "lon"]})
    torch.manual_seed(0)
    return TemperatureEmulator(spec, hidden_sizes=[16], base="none"), names  # a hand-made spec: no pattern scaling


def test_temperature_emulator_regional_tas():
    model, names = _emulator()
    x = xr.DataArray(np.random.default_rng(0).random((10, 4)).astype("f4"), dims=("time", "input"),
                     coords={"time": np.arange(2015, 2025), "input": names})
    grid = xr.Dataset(coords={"lat": LAT, "lon": LON})
    tgt = region_mean("tas", lat=(30, 60), lon=(350, 40), grid=grid, names=["tas"])
    a = attribute(model, x, "integrated_gradients", target=tgt, n_steps=32)
    assert a.dims == ("time", "input") and list(a.input.values) == names
    assert "area-weighted mean of output[tas] over lat 30..60, lon 350..40" == a.attrs["target"]
    # completeness against the model's own regional mean in K
    with torch.no_grad():
        y = model(torch.as_tensor(x.values)).numpy().reshape(10, 8, 12)
        y0 = model(torch.zeros(1, 4)).numpy().reshape(1, 8, 12)
    w = lat_weights(LAT)[:, None] * box_mask(grid, lat=(30, 60), lon=(350, 40)).values
    w = w / w.sum()
    np.testing.assert_allclose(a.sum("input").values, ((y - y0) * w).sum((1, 2)), rtol=2e-2, atol=1e-3)  # 32 steps
    with pytest.raises(DataError, match=r"'input' coordinate \['CH4', 'CO2', 'SO2', 'BC'\] does not match"):
        attribute(model, x.sel(input=["CH4", "CO2", "SO2", "BC"]), "saliency", target=tgt)


def test_callback_takes_samples_from_a_climate_datamodule(tmp_path):
    import lightning as L

    from climateml.attribution.callbacks import AttributionSnapshot
    from climateml.data.base import BaseDataModule, TensorDictDataset

    model, names = _emulator()

    class DM(BaseDataModule):  # loaders only
        def build(self):
            g = torch.Generator().manual_seed(0)
            x, y = torch.rand(40, 4, generator=g), torch.rand(40, 96, generator=g)
            self.train_dataset = self.val_dataset = self.test_dataset = self.predict_dataset = TensorDictDataset(x=x, y=y)

        def inputs_xarray(self, split):  # the split's x tensors, named by the model's inputs
            x = self.dataset(split).tensors["x"].numpy()
            return xr.DataArray(x, dims=("sample", "dim_1"), coords={"sample": np.arange(len(x)), "dim_1": names},
                                name="input")

    grid = xr.Dataset(coords={"lat": LAT, "lon": LON})
    cb = AttributionSnapshot(method="saliency", every_n_epochs=1, n_samples=3, output_dir=str(tmp_path),
                             target=global_mean(0, grid=grid), regions={"co2": {"dim_1": "CO2"}},
                             method_options={"abs": False})
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[cb], accelerator="cpu", num_sanity_val_steps=0)
    trainer.fit(model, datamodule=DM(batch_size=8))
    ds = xr.load_dataset(cb.paths[0])
    assert list(ds["dim_1"].values) == names and ds.sizes["sample"] == 3
    assert 0 <= cb.history[0]["relevance_mass_co2"] <= 1
    mass = relevance_mass_accuracy(ds["attribution_saliency"], {"dim_1": "CO2"})
    assert mass.sizes["sample"] == 3 and np.isfinite(mass.values).any()
    expect = float(np.nanmean(mass.values))
    assert cb.history[0]["relevance_mass_co2"] == pytest.approx(expect, rel=1e-5, abs=1e-6)
    assert trainer.callback_metrics["attribution/relevance_mass_co2"].item() == pytest.approx(expect, rel=1e-5,
                                                                                              abs=1e-6)


def test_class_score_from_a_mapping_takes_cls_or_index():
    """The README's `--target '{kind: class_score, cls: 1, region: {lat: [5, 35]}}'`; `index` (the other kinds' word
    for the output) names the class too, and gives the same maps. Neither, or both, is one clear error."""
    torch.manual_seed(0)
    model, x = seg_net(), field_input()
    by_cls = attribute(model, x, "saliency", target={"kind": "class_score", "cls": 1, "region": {"lat": [5, 35]}})
    by_index = attribute(model, x, "saliency", target={"kind": "class_score", "index": 1, "region": {"lat": [5, 35]}})
    other = attribute(model, x, "saliency", target={"kind": "class_score", "cls": 2, "region": {"lat": [5, 35]}})
    np.testing.assert_array_equal(by_cls.values, by_index.values)
    assert not np.allclose(by_cls.values, other.values)
    for bad in ({"kind": "class_score"}, {"kind": "class_score", "cls": 1, "index": 2}):
        with pytest.raises(ConfigError, match="class_score needs the class as cls"):
            as_target(bad)
