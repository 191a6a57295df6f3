"""Attribution on physical fields: the training-climatology baseline, the randomisation sanity check and the
faithfulness / robustness scores, against hand-computed numbers and scipy's Spearman correlation.

A small CNN is trained once per module on a small confounded data set (plain torch, about a second).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
import xarray as xr

from climateml.attribution import attribute
from climateml.attribution.confounded import INPUTS, generate_confounded, train_cnn
from climateml.attribution.baselines import SAMPLE_CLIMATOLOGY, TRAINING_CLIMATOLOGY, unphysical_zero_channels
from climateml.attribution.faithfulness import (
    attribution_scores, faithfulness_correlation, max_sensitivity, randomisation_check, region_perturbation, sparseness,
    spearman,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained_cnn():
    """(model, validation inputs) of a SmallCNN trained on a small confounded data set."""
    data = generate_confounded(n_train=400, n_val=40, n_test=10, nlat=12, nlon=16, seed=0)["clean"]
    model = train_cnn(data["train"], epochs=6, seed=0)
    return model, data["val"][list(INPUTS)].isel(sample=slice(0, 6))


def linear_f(w):
    """A target function f(values, rows) = values . w (rows unused)."""
    return lambda values, rows: np.asarray(values, float).reshape(len(values), -1) @ np.asarray(w, float)


# ----------------------------------------------------------------------------------------------------------
# the scores on tiny arrays, by hand
# ----------------------------------------------------------------------------------------------------------

def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, (3, 40)).astype(float)  # many ties
    b = a + rng.normal(0, 2, a.shape)
    got = spearman(a, b)
    for i in range(3):
        assert got[i] == pytest.approx(scipy.stats.spearmanr(a[i], b[i]).statistic, abs=1e-12)
    assert np.isnan(spearman(np.ones((1, 5)), b[:1, :5]))[0]


def test_sparseness_is_the_gini_index_of_the_absolute_values():
    # sorted |a| = 1, 2, 3, 4: sum_k (2k - 5) a_k = -3 - 2 + 3 + 12 = 10; d sum a = 40
    got = sparseness(np.array([[-4.0, 3.0, -2.0, 1.0], [0, 0, 0, 5.0], [2.0, 2, 2, 2]]))
    np.testing.assert_allclose(got, [0.25, 0.75, 0.0])
    assert np.isnan(sparseness(np.zeros((1, 3))))[0]


def test_faithfulness_correlation_by_hand():
    x = np.array([[1.0, 2.0, 3.0, 4.0]])
    regions = np.arange(4)
    subsets = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]], bool)
    # f = sum: the drops are the removed values 1, 2, 7; the map's sums over the subsets are 1, 0, 0
    # Pearson of (1, 0, 0) and (1, 2, 7) = -21 / sqrt(6 * 186)
    got = faithfulness_correlation(linear_f([1, 1, 1, 1]), x, np.array([[1.0, 0, 0, 0]]), 0.0, regions, subsets=subsets)
    assert got[0] == pytest.approx(-21 / np.sqrt(6 * 186))
    # integrated gradients of a linear model from the same reference, w * (x - b), is perfectly faithful
    w, b = np.array([2.0, -1.0, 0.5, 3.0]), np.array([0.5, 0.5, 1.0, 1.0])
    exact = (w * (x - b))
    assert faithfulness_correlation(linear_f(w), x, exact, b, regions, n_draws=20, subset_fraction=0.5)[0] == \
        pytest.approx(1.0)
    assert faithfulness_correlation(linear_f(w), x, -exact, b, regions, n_draws=20, subset_fraction=0.5)[0] == \
        pytest.approx(-1.0)


def test_region_perturbation_by_hand():
    x = np.array([[1.0, 2.0, 3.0, 4.0]])
    # relevance ranks cell 1 first, then 2, 3, 0: f = sum falls 10 -> 8 -> 5 -> 1 -> 0, drops 0, 2, 5, 9, 10
    res = region_perturbation(linear_f([1, 1, 1, 1]), x, np.array([[0.1, 0.4, 0.3, 0.2]]), 0.0, np.arange(4), n_steps=4)
    np.testing.assert_allclose(res.removed, [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(res.curve[0], [10, 8, 5, 1, 0])
    assert res.auc[0] == pytest.approx(0.25 * (1 + 3.5 + 7 + 9.5))  # trapezoids: 5.25
    best = region_perturbation(linear_f([1, 1, 1, 1]), x, x, 0.0, np.arange(4), n_steps=4)  # drops 0, 4, 7, 9, 10
    assert best.auc[0] == pytest.approx(6.25) and best.auc[0] >= best.auc_random[0]
    # the reference field, not zeros, fills removed regions; two cells per region
    res = region_perturbation(linear_f([1, 1, 1, 1]), x, x, np.full(4, 1.0), np.array([0, 0, 1, 1]), n_steps=2)
    np.testing.assert_allclose(res.curve[0], [10, 5, 4])  # cells 3, 4 -> 1, 1 first (1+2+1+1), then 1, 2 -> 1, 1


def test_max_sensitivity_by_hand():
    x = np.array([[3.0, 4.0]])  # ||x|| = 5
    deltas = np.array([[0.1, 0.0], [0.0, 0.3]])
    identity = max_sensitivity(lambda v: v, x, x, perturbations=deltas)  # the map is the input: max ||delta|| / ||x||
    assert identity[0] == pytest.approx(0.3 / 5)
    assert max_sensitivity(lambda v: np.ones_like(v), x, np.ones_like(x), perturbations=deltas)[0] == 0.0
    # random draws stay inside the box of half-width radius * scale
    assert max_sensitivity(lambda v: v, x, x, radius=0.1, scale=np.array([1.0, 2.0]), n_draws=50)[0] <= \
        np.hypot(0.1, 0.2) / 5 + 1e-9


# ----------------------------------------------------------------------------------------------------------
# the default baseline and the zeros warning
# ----------------------------------------------------------------------------------------------------------

def test_default_baseline_is_the_training_climatology(trained_cnn):
    model, x = trained_cnn
    a = attribute(model, x, "integrated_gradients", n_steps=16)
    assert a.attrs["baseline"] == TRAINING_CLIMATOLOGY
    # the same maps as with the model's training mean per channel given as a field
    mean = model.x_mean.reshape(-1).numpy()
    field = xr.Dataset({v: xr.full_like(x[v].isel(sample=0, drop=True), float(m)) for v, m in zip(INPUTS, mean)})
    explicit = attribute(model, x, "integrated_gradients", baseline=field, n_steps=16)
    for v in INPUTS:
        np.testing.assert_allclose(a[v].values, explicit[v].values, rtol=1e-5, atol=1e-7)
    assert attribute(model, x, "integrated_gradients", baseline="climatology", n_steps=4).attrs["baseline"] == \
        TRAINING_CLIMATOLOGY
    # a model that carries no training mean: the mean over the input's samples
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 12 * 16, 1))
    b = attribute(plain, x, "integrated_gradients", n_steps=4)
    assert b.attrs["baseline"] == SAMPLE_CLIMATOLOGY.format(n=6)
    # completeness: the maps sum to f(x) - f(sample mean)
    xs = np.stack([x[v].values for v in INPUTS], 1).astype(np.float32)
    with torch.no_grad():
        fx = plain(torch.as_tensor(xs)).numpy().ravel()
        fb = plain(torch.as_tensor(xs.mean(0, keepdims=True))).numpy().ravel()
    total = sum(b[v].values.reshape(6, -1).sum(1) for v in INPUTS)
    np.testing.assert_allclose(total, fx - fb, rtol=1e-3, atol=1e-4)


def test_zeros_baseline_on_an_unphysical_zero_warns_in_one_line():
    rng = np.random.default_rng(0)
    fields = np.stack([rng.normal(101_000, 1000, (3, 6, 8)), rng.normal(30, 5, (3, 6, 8))], 1).astype(np.float32)
    x = xr.DataArray(fields, dims=("time", "channel", "lat", "lon"), coords={"channel": ["PSL", "TMQ"]})
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 48, 1))
    with pytest.warns(UserWarning) as record:
        attribute(model, x, "integrated_gradients", baseline="zeros", n_steps=4)
    messages = [str(w.message) for w in record if "baseline 'zeros'" in str(w.message)]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert "PSL (pressure" in messages[0] and "TMQ" not in messages[0] and "training climatology" in messages[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for the default
        attribute(model, x, "integrated_gradients", n_steps=4)
    # units and standard names decide for Dataset variables; an anomaly in K has a physical zero
    ds = xr.Dataset({"t_anom": (("s", "lat"), np.ones((2, 3)), {"units": "K", "long_name": "temperature anomaly"}),
                     "air": (("s", "lat"), np.ones((2, 3)) * 280, {"units": "K"}),
                     "height": (("s", "lat"), np.ones((2, 3)), {"standard_name": "geopotential_height", "units": "m"}),
                     "pr": (("s", "lat"), np.ones((2, 3)), {"units": "kg m-2 s-1"})})
    assert [(n, k) for n, k, _ in unphysical_zero_channels(ds)] == [("air", "temperature"),
                                                                                   ("height", "geopotential")]


# ----------------------------------------------------------------------------------------------------------
# the sanity check and the scores on a trained CNN
# ----------------------------------------------------------------------------------------------------------

def test_randomisation_check_passes_a_gradient_method_and_fails_the_input_itself(trained_cnn):
    model, x = trained_cnn
    before = [p.detach().clone() for p in model.parameters()]
    grad = randomisation_check(model, x, "integrated_gradients", n_steps=16)
    assert grad.layers == ["net.5", "net.2", "net.0"]  # from the output layer down
    assert grad.n_randomised == [1, 2, 3] and len(grad.spearman) == 3
    assert grad.passed and abs(grad.final) < 0.5
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the model itself is untouched
    # an "edge detector": the explanation is the input itself, whatever the model
    edge = randomisation_check(model, x, "input", explain=lambda m, inputs: inputs)
    assert not edge.passed and edge.final == pytest.approx(1.0) and "FAILS" in edge.summary()


def test_attribution_scores_on_a_trained_cnn(trained_cnn):
    model, x = trained_cnn
    opts = {"n_samples": 3, "n_draws": 16, "n_sensitivity_draws": 2, "n_curve_steps": 8}
    ig = attribution_scores(model, x, "integrated_gradients", score_options=opts, n_steps=16)
    assert set(ig) == {"faithfulness_correlation", "region_perturbation_auc", "max_sensitivity", "sparseness",
                       "randomisation_spearman", "details"}
    json.dumps(ig)  # plain types only
    d = ig["details"]
    assert d["perturbation_reference"] == TRAINING_CLIMATOLOGY and d["n_samples"] == 3
    assert 0.3 < ig["faithfulness_correlation"] <= 1.0     # IG is faithful to a small CNN
    assert ig["region_perturbation_auc"] > d["region_perturbation_auc_random_order"]
    assert 0.0 <= ig["max_sensitivity"] < 1.0 and 0.0 < ig["sparseness"] < 1.0
    assert abs(ig["randomisation_spearman"]) < 0.5
    # the MoRF curve starts at the model's target on the unperturbed input
    f0 = model(torch.as_tensor(np.stack([x[v].values[:3] for v in INPUTS], 1))).detach().numpy().mean()
    assert d["region_perturbation_curve"]["target"][0] == pytest.approx(float(f0), rel=1e-4)


# ----------------------------------------------------------------------------------------------------------
# a segmentation model trained on the sample data: integrated gradients find the cyclones
# ----------------------------------------------------------------------------------------------------------

SEG_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "segmentation.yaml")
SEG_DATA = dict(channels=["TMQ", "U850", "V850", "PSL"], crop=[], val_fraction=0.15, test_fraction=0.2)


@pytest.fixture(scope="module")
def tc_segmentation(tmp_path_factory):
    """(data folder, DataModule, trained model, checkpoint) on 12 dates of the sample data on a 64 x 96 grid:
    a depth-2, width-8 U-Net, 15 epochs (about 10 s on one core)."""
    import lightning as L

    from climateml.data.climatenet import SegmentationDataModule
    from climateml.data.synthetic.climatenet import generate_climatenet
    from climateml.models.segmentation import SegmentationModel

    out = tmp_path_factory.mktemp("climatenet_tc")
    generate_climatenet(out / "data", n_dates=12, nlat=64, nlon=96, seed=0, progress=False)
    L.seed_everything(0)
    dm = SegmentationDataModule(str(out / "data"), batch_size=4, **SEG_DATA)
    dm.setup()
    model = SegmentationModel(dm.spec, depth=2, width=8, lr=3e-3)
    trainer = L.Trainer(max_epochs=15, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    trainer.save_checkpoint(out / "model.ckpt")
    return out / "data", dm, model, out / "model.ckpt"


def test_integrated_gradients_of_the_tc_class_sit_on_the_cyclones(tc_segmentation):
    """Default baseline (training climatology): positive relevance inside the labelled TC cells of held-out dates
    is at least 5 x their share of the grid (pooled over the dates and the four channels)."""
    from climateml.attribution import class_score

    _, dm, model, _ = tc_segmentation
    for split in ("val", "test"):
        x = dm.inputs_xarray(split)
        tc = dm.truth(split)[split]["LABELS"].values == 1
        a = attribute(model, x, "integrated_gradients", target=class_score(1), n_steps=16)
        assert a.attrs["baseline"] == TRAINING_CLIMATOLOGY
        positive = np.clip(a.values, 0, None).sum(1)  # (time, lat, lon)
        ratio = (positive * tc).sum() / positive.sum() / tc.mean()
        assert 0 < tc.mean() < 0.05 and ratio >= 5.0, (split, ratio)


def test_attribute_command_with_sanity_and_scores(tc_segmentation, tmp_path, capsys):
    """The issue's run: `climateml attribute ... --sanity` with the default baseline writes a NetCDF whose baseline
    is the training climatology, no channel holds most of |attribution|, and the scores pass the sanity check."""
    from climateml.cli import main

    data, _, _, ckpt = tc_segmentation
    args = ["attribute", "--config", SEG_CONFIG, "--ckpt_path", str(ckpt), "--method", "integrated_gradients",
            "--target", "{kind: class_score, cls: 1}", "--n_figures", "1", "--options", "{n_steps: 8}",
            "--data.init_args.data_dir", str(data), "--model.init_args.depth", "2", "--model.init_args.width", "8",
            *[a for k, v in SEG_DATA.items() for a in (f"--data.init_args.{k}", json.dumps(v))],
            "--trainer.logger", "false"]
    assert main([*args, "--sanity", "--out", str(tmp_path),
                 "--score_options", "{n_samples: 2, n_draws: 16, n_sensitivity_draws: 2}"]) == 0
    out = capsys.readouterr().out
    ds = xr.load_dataset(tmp_path / "attribution_integrated_gradients_test.nc")
    assert ds.attrs["baseline"] == TRAINING_CLIMATOLOGY and ds.attrs["sanity_check"] == "passes"
    a = np.abs(ds["attribution_integrated_gradients"].values)
    shares = a.sum((0, 2, 3)) / a.sum()
    assert shares.max() <= 0.8, shares
    scores = json.loads((tmp_path / "scores_integrated_gradients_test.json").read_text())
    assert scores["randomisation_spearman"] < 0.5 and scores["faithfulness_correlation"] > 0
    assert scores["details"]["sanity"]["n_randomised"][-1] == len(scores["details"]["sanity"]["layers_top_down"])
    np.testing.assert_allclose(list(scores["details"]["abs_share_per_channel"].values()), shares, rtol=1e-5)
    assert "sanity check passed" in out and "share of |attribution| per channel: TMQ" in out
    for name in ("sanity_integrated_gradients_test.png", "scores_test.png", "attribution_integrated_gradients_test_0.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 10_000
    # a zeros baseline on PSL warns once, in one line, on stderr
    assert main([*args, "--baseline", "zeros", "--score_options", "{n_samples: 1, n_sensitivity_draws: 1}",
                 "--n_figures", "0", "--out", str(tmp_path / "zeros")]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "baseline 'zeros'" in line]
    assert len(err) == 1 and err[0].startswith("warning: ") and "PSL (pressure" in err[0]
