"""Radar nowcasting through its public interfaces: NowcastingDataModule on every archive layout, bad
input, workers, NowcastModel modes and losses, the evaluation's metrics.json, predict's NetCDF, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from climateml.callbacks import NetCDFPredictionWriter
from climateml.cli import main
from climateml.data.io import DataError
from climateml.data.nowcasting import NowcastingDataModule
from climateml.data.synthetic.radar import generate_radar
from climateml.errors import ConfigError
from climateml.evaluation.nowcasting import NowcastEvaluation
from climateml.models.nowcasting import NowcastModel, masked_loss
from radar_files import radar_frame

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "nowcasting.yaml")
START = "2024-06-01T00:00"
DAY = "2024-06-01"
PERIODS = {"train_period": [f"{DAY}T00:00", f"{DAY}T01:55"], "val_period": [f"{DAY}T02:00", f"{DAY}T02:40"],
           "test_period": [f"{DAY}T02:45", f"{DAY}T03:55"]}


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory) -> Path:
    """48 one-frame files (5 min, 32 x 32 km at 1 km, 4 h), frames 10 and 30 missing: the sample layout."""
    out = tmp_path_factory.mktemp("radar_frames")
    generate_radar(out, n_frames=48, ny=32, nx=32, missing=(10, 30), births_per_h_per_10000_km2=12.0, progress=False)
    return out


def _dm(paths, n_in=3, n_out=2, **kw) -> NowcastingDataModule:
    dm = NowcastingDataModule(str(paths) if not isinstance(paths, list) else paths, n_in=n_in, n_out=n_out,
                              **{**PERIODS, "batch_size": 4, **kw})
    dm.setup()
    return dm


def _rain_by_hand(frames_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(times, rain [mm/h]) read with xarray, file by file: the 5-min accumulations x 12."""
    files = sorted(frames_dir.glob("*.nc"))
    ds = [xr.open_dataset(f) for f in files]
    times = np.array([d["valid_time"].values for d in ds])
    return times, np.stack([d["precipitation_amount"].values * 12.0 for d in ds])


# ------------------------------------------------------------------------------------------ layouts
def test_one_file_per_frame_windows_values_and_missing_frames(frames_dir):
    dm = _dm(frames_dir)
    times, rain = _rain_by_hand(frames_dir)
    np.testing.assert_array_equal(dm.times, times)
    step = np.timedelta64(5, "m")
    for split, (start, end) in zip(("train", "val", "test"), PERIODS.values()):
        starts = dm.starts[split]
        assert starts.size > 0
        for s in starts:  # 5 consecutive frames, all inside the period: no missing frame, no straddling
            window = times[s:s + 5]
            assert (np.diff(window) == step).all()
            assert window[0] >= np.datetime64(start) and window[-1] <= np.datetime64(end)
    # frame 10 (00:50) is missing: no window holds both 00:45 and 00:55
    assert not any(times[s] <= np.datetime64(f"{DAY}T00:45") and times[s + 4] >= np.datetime64(f"{DAY}T00:55")
                   for s in dm.starts["train"])
    sample = dm.dataset("train")[3]
    s = dm.starts["train"][3]
    assert sample["x"].shape == (3, 32, 32) and sample["y"].shape == (2, 32, 32)
    np.testing.assert_allclose(sample["x"].numpy(), rain[s:s + 3], rtol=1e-6)
    np.testing.assert_allclose(sample["y"].numpy(), rain[s + 3:s + 5], rtol=1e-6)
    assert np.isnan(sample["x"][0, 0, 0].item()) and np.isfinite(sample["x"][0, 16, 16].item())  # beyond the radar's range
    assert dm.spec.input_shape == (3, 32, 32) and dm.spec.options["time_step_minutes"] == 5.0
    assert dm.grid["y"].values[0] > dm.grid["y"].values[-1]  # y descending, kept as read


def _single(path: Path, values: np.ndarray, attrs: dict, dims=("time", "y", "x"), freq="10min", name="rain",
            y=None, **extra) -> Path:
    times = pd.date_range(START, periods=values.shape[0], freq=freq)
    ny, nx = values.shape[1:]
    ydim, xdim = dims[1:]
    coords = {"time": times, ydim: np.arange(ny, dtype=float)[::-1] if y is None else y, xdim: np.arange(nx) * 2.0}
    ds = xr.Dataset({name: (dims, values, attrs), **extra}, coords=coords)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_zarr(path, mode="w") if path.suffix == ".zarr" else ds.to_netcdf(path)
    return path


def _field(n=30, ny=8, nx=10, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.gamma(0.5, 2.0, (n, ny, nx)) * (rng.random((n, ny, nx)) < 0.5)).astype(np.float32)


HALF_HOURLY = {"train_period": [f"{DAY}T00:00", f"{DAY}T02:55"], "val_period": [f"{DAY}T03:00", f"{DAY}T03:55"],
               "test_period": [f"{DAY}T04:00", f"{DAY}T04:50"]}


@pytest.mark.parametrize("layout", ["rate_yx", "rate_latlon", "accumulation_mm", "accumulation_start_time",
                                    "reflectivity", "zarr", "kg_m2_s"])
def test_single_file_layouts_give_rain_rate_in_mm_h(tmp_path, layout):
    rate = _field()
    dims, suffix, extra, kw = ("time", "y", "x"), ".nc", {}, {}
    if layout == "rate_yx":
        values, attrs = rate, {"units": "mm h-1"}
    elif layout == "rate_latlon":
        values, attrs, dims = rate, {"units": "mm/h"}, ("time", "latitude", "longitude")
    elif layout == "accumulation_mm":      # 10-min archive: mm per 10 min
        values, attrs = rate / 6.0, {"units": "mm", "standard_name": "precipitation_amount"}
    elif layout == "accumulation_start_time":  # 15-min accumulations every 10 min
        values, attrs = rate / 4.0, {"units": "kg m-2", "standard_name": "precipitation_amount"}
        times = pd.date_range(START, periods=30, freq="10min")
        extra = {"start_time": ("time", (times - pd.Timedelta("15min")).values)}
    elif layout == "reflectivity":        # Z = 300 R^1.4, as configured
        with np.errstate(divide="ignore"):
            values = np.where(rate > 0, 10 * np.log10(300.0 * rate.astype(np.float64) ** 1.4), -30.0).astype(np.float32)
        attrs, kw = {"units": "dBZ", "standard_name": "equivalent_reflectivity_factor"}, {"zr_a": 300.0, "zr_b": 1.4}
        rate = np.where(rate > 0, rate, (10 ** (-3.0) / 300.0) ** (1 / 1.4)).astype(np.float32)
    elif layout == "zarr":
        values, attrs, suffix = rate, {"units": "mm h-1"}, ".zarr"
    else:
        values, attrs = rate / 3600.0, {"units": "kg m-2 s-1", "standard_name": "rainfall_flux"}
    path = _single(tmp_path / f"archive{suffix}", values, attrs, dims=dims, **extra)
    dm = _dm(path, n_in=2, n_out=2, variable="rain", **{**HALF_HOURLY, **kw})
    assert list(dm.grid.dims) == (["lat", "lon"] if layout == "rate_latlon" else ["y", "x"])
    for split in ("train", "test"):
        ds = dm.dataset(split)
        for i in (0, len(ds) - 1):
            s = dm.starts[split][i]
            np.testing.assert_allclose(ds[i]["x"].numpy(), rate[s:s + 2], rtol=2e-5, atol=1e-6)
            np.testing.assert_allclose(ds[i]["y"].numpy(), rate[s + 2:s + 4], rtol=2e-5, atol=1e-6)
    assert dm.step == np.timedelta64(10, "m")


def test_glob_and_list_of_files(frames_dir):
    by_glob = _dm(str(frames_dir / "RAD_*.nc"))
    by_list = _dm(sorted(frames_dir.glob("*.nc")))
    np.testing.assert_array_equal(by_glob.starts["test"], by_list.starts["test"])
    np.testing.assert_array_equal(by_glob.dataset("test")[0]["y"], by_list.dataset("test")[0]["y"])


def test_transform_is_fitted_on_training_frames_only(tmp_path):
    rate = _field()
    rate[20:] *= 100.0   # a wild test period (from 03:20) must not move the statistics
    a = _dm(_single(tmp_path / "a.nc", rate, {"units": "mm h-1"}), n_in=2, n_out=2, variable="rain", **HALF_HOURLY)
    rate[20:] /= 100.0
    b = _dm(_single(tmp_path / "b.nc", rate, {"units": "mm h-1"}), n_in=2, n_out=2, variable="rain", **HALF_HOURLY)
    assert float(a.statistics["rain_mean"]) == float(b.statistics["rain_mean"])
    train = rate[:18]   # the training windows cover frames 00:00 .. 02:50
    g = np.log1p(train.astype(np.float64))
    assert float(a.statistics["rain_mean"]) == pytest.approx(g.mean(), rel=1e-6)
    assert float(a.statistics["rain_std"]) == pytest.approx(g.std(), rel=1e-6)


def test_random_crops_and_augmentation(frames_dir):
    dm = _dm(frames_dir, crop=[16, 12])
    full = _dm(frames_dir)
    torch.manual_seed(0)
    crop = dm.dataset("train")[5]
    whole = full.dataset("train")[5]
    assert crop["x"].shape == (3, 16, 12) and crop["y"].shape == (2, 16, 12)
    x, w = np.nan_to_num(crop["x"].numpy(), nan=-1), np.nan_to_num(whole["x"].numpy(), nan=-1)
    found = [(t, l) for t in range(17) for l in range(21) if np.array_equal(w[:, t:t + 16, l:l + 12], x)]
    assert found, "the crop is a window of the full frames"
    assert dm.dataset("val")[0]["x"].shape == (3, 32, 32)   # crops for training only
    aug = _dm(frames_dir, augment=True)
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        a = np.nan_to_num(aug.dataset("train")[5]["x"].numpy(), nan=-1)
        options = {"id": w, "ud": w[:, ::-1], "lr": w[:, :, ::-1], "rot": w[:, ::-1, ::-1]}
        options.update({f"T{k}": v.transpose(0, 2, 1) for k, v in list(options.items())})
        match = [k for k, v in options.items() if np.array_equal(a, v)]
        assert match
        seen.add(match[0])
    assert len(seen) >= 4
    np.testing.assert_array_equal(aug.dataset("test")[0]["x"], full.dataset("test")[0]["x"])  # not for scoring


def test_windows_never_straddle_periods_and_periods_must_not_overlap(frames_dir):
    dm = _dm(frames_dir)
    used = {split: set((dm.starts[split][:, None] + np.arange(5)).ravel().tolist()) for split in dm.starts}
    assert not used["train"] & used["val"] and not used["val"] & used["test"] and not used["train"] & used["test"]
    with pytest.raises(ConfigError, match="overlap"):
        NowcastingDataModule(str(frames_dir), train_period=[f"{DAY}T00:00", f"{DAY}T02:00"],
                             val_period=[f"{DAY}T02:00", f"{DAY}T02:40"], test_period=PERIODS["test_period"])


def test_reading_a_window_keeps_one_window_in_memory(frames_dir):
    """The reader is an index, not data: a pickled DataModule dataset is small, reads open files lazily."""
    import pickle

    dm = _dm(frames_dir)
    dm.dataset("train")[0]
    blob = pickle.dumps(dm.dataset("train"))
    assert len(blob) < 60_000  # 46 frames of 32 x 32 float32 would be 188 kB
    again = pickle.loads(blob)
    torch.testing.assert_close(again[2]["y"], dm.dataset("train")[2]["y"], equal_nan=True)


# ------------------------------------------------------------------------------------------ bad input
def _frame(path: Path, valid: str, **kw) -> Path:
    """A 3 x 4 frame (see radar_files.radar_frame)."""
    return radar_frame(path, valid, **{"x": np.arange(4.0), "ny": 3, **kw})


def _frames(folder: Path, n: int = 24) -> list[Path]:
    times = pd.date_range(START, periods=n, freq="5min")
    return [_frame(folder / f"f{i:03d}.nc", str(t)) for i, t in enumerate(times)]


SHORT = {"train_period": [f"{DAY}T00:00", f"{DAY}T00:55"], "val_period": [f"{DAY}T01:00", f"{DAY}T01:25"],
         "test_period": [f"{DAY}T01:30", f"{DAY}T01:55"]}


@pytest.mark.parametrize("case, bad, message", [
    ("unsorted", "f005.nc", "earlier than the previous frame"),
    ("duplicated", "f005.nc", "is duplicated"),
    ("short_period", "f020.nc", "none of them starting"),
    ("dims", "f007.nc", "has dims ('time', 'level', 'y', 'x')"),
    ("variable", "f007.nc", "variable 'precipitation_amount' is missing"),
    ("grid", "f007.nc", "grid differs"),
])
def test_bad_archives_raise_one_clear_error_naming_the_file(tmp_path, case, bad, message):
    folder = tmp_path / "radar"
    paths = _frames(folder)
    periods = dict(SHORT)
    if case == "unsorted":   # f005 holds a time before f004's
        _frame(paths[5], "2024-06-01T00:12")
    elif case == "duplicated":
        _frame(paths[5], "2024-06-01T00:20")
    elif case == "short_period":   # test period 01:30 .. 01:55 with 01:45 missing: 3 + 2 frames do not fit
        paths[21].unlink()
        periods["test_period"] = [f"{DAY}T01:40", f"{DAY}T01:55"]
    elif case == "dims":
        _frame(paths[7], "2024-06-01T00:35", extra_dim=True)
    elif case == "variable":
        _frame(paths[7], "2024-06-01T00:35", var="rainfall")
    else:
        _frame(paths[7], "2024-06-01T00:35", x=np.arange(4.0) * 2)
    with pytest.raises(DataError) as err:
        NowcastingDataModule(str(folder), n_in=3, n_out=2, **periods).setup()
    text = str(err.value)
    assert bad in text and message in text and "\n" not in text, text


def test_nan_is_masked_from_the_loss():
    pred = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    target = torch.tensor([[1.5, 2.0], [3.0, float("nan")]])
    loss, n = masked_loss(pred, target, "mse")
    assert int(n) == 3 and float(loss) == pytest.approx(0.25 / 3)
    pred.requires_grad_(True)
    masked_loss(pred, target, "logcosh")[0].backward()
    assert pred.grad[1, 1] == 0 and torch.isfinite(pred.grad).all()


# ------------------------------------------------------------------------------------------ model, scores, CLI
def _train(dm, steps=6, **model_kw) -> NowcastModel:
    L.seed_everything(0)
    model = NowcastModel(dm.spec, width=4, depth=2, **model_kw)
    trainer = L.Trainer(max_steps=steps, limit_val_batches=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    return model


@pytest.mark.parametrize("mode, extra", [("direct", {}), ("recursive", {"base": "none"}),
                                         ("direct", {"space_to_depth": 2, "csi_weight": 1.0, "rain_weight": 3.0,
                                                     "base": "none"}),
                                         ("direct", {"coarsen": 2, "smoothing_scales": [1.0, 2.0], "loss": "mae",
                                                     "loss_scale": "rain", "csi_weight": 1.0})])
def test_modes_train_and_predict_mm_h(frames_dir, mode, extra):
    dm = _dm(frames_dir)
    model = _train(dm, mode=mode, **extra)
    batch = next(iter(dm.test_dataloader()))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        out = model.eval()(batch["x"])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # inference changes no state
    assert out.shape == batch["y"].shape and torch.isfinite(out).all() and (out >= 0).all()
    z, z_base, base = model.predict_parts(batch["x"])
    given = model.to_rain(z)
    if base is not None:
        given = torch.where(model.correction_gate.view(1, -1, 1, 1) > 0, given, model.to_rain(base, transformed=False))
    torch.testing.assert_close(given, out, rtol=1e-5, atol=1e-6)
    assert (out <= float(dm.statistics["rain_cap"])).all()
    assert float(model.rain_std) == pytest.approx(float(dm.statistics["rain_std"]))
    loss = model.compute_loss(z, batch["y"])
    loss.backward()
    assert torch.isfinite(loss) and model.net.head.weight.grad.abs().sum() > 0


def test_evaluation_metrics_shape_and_prediction_file(frames_dir, tmp_path):
    dm = _dm(frames_dir)
    model = _train(dm)
    evaluation = NowcastEvaluation(fss_scales_km=[1, 4])
    result = evaluation.run([model], dm, tmp_path, accelerator="cpu")
    assert set(result) == {"rain_rate"} and set(result["rain_rate"]) == {"model", "persistence", "optical_flow"}
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    # the verdict on each headline score: CSI at 1 mm/h (higher is better) and MAE (lower is better)
    assert [(v["score"], v["better"]) for v in on_disk["verdict"]["rain_rate"]] == [("csi_1.0", "higher"), ("mae", "lower")]
    assert on_disk["verdict"]["rain_rate"][1]["best"] == min(result["rain_rate"], key=lambda e: result["rain_rate"][e]["mae"])
    for name, scores in on_disk["rain_rate"].items():
        for key in ("mae", "rmse", "csi_0.5", "csi_1.0", "csi_5.0", "csi_10.0", "pod_1.0", "far_1.0", "fss_4km"):
            assert key in scores, (name, key)
        assert list(scores["by_lead_time"]) == ["5min", "10min"]
        by_lead = [scores["by_lead_time"][k]["mae"] for k in ("5min", "10min")]
        assert scores["mae"] == pytest.approx(np.mean(by_lead))
    preds = xr.open_dataset(tmp_path / "test_predictions_test.nc")
    truth = dm.truth("test")["test"]["rain_rate"]
    assert preds["rain_rate"].dims == ("model", "time", "lead_time", "y", "x")
    persistence = preds["rain_rate"].sel(model="persistence")
    last = dm.past_frames("test")[:, -1]
    np.testing.assert_allclose(persistence.isel(lead_time=1).values, last, rtol=1e-6)
    mae = float(np.abs(preds["rain_rate"].sel(model="model") - truth).mean())
    assert mae == pytest.approx(on_disk["rain_rate"]["model"]["mae"], rel=1e-4)  # NaN masked from the scores
    # categorical scores by hand with numpy: events rain >= threshold, NaN cells left out, per lead time over all
    # issue times and cells, then the mean over lead times (NaN where no event was forecast or seen)
    def close(value):
        return pytest.approx(np.mean(value), rel=1e-6, nan_ok=True)

    for name in ("model", "persistence"):
        p, o = preds["rain_rate"].sel(model=name).values, truth.transpose(*preds["rain_rate"].dims[1:]).values
        valid = np.isfinite(p) & np.isfinite(o)
        assert np.isfinite(on_disk["rain_rate"][name]["csi_1.0"])
        for t in (1.0, 5.0):
            hits = ((p >= t) & (o >= t) & valid).sum(axis=(0, 2, 3))
            misses = ((p < t) & (o >= t) & valid).sum(axis=(0, 2, 3))
            false_alarms = ((p >= t) & (o < t) & valid).sum(axis=(0, 2, 3))
            scores = on_disk["rain_rate"][name]
            assert scores[f"csi_{t}"] == close(hits / (hits + misses + false_alarms))
            if t == 1.0:
                assert scores["pod_1.0"] == close(hits / (hits + misses))
                assert scores["far_1.0"] == close(false_alarms / (hits + false_alarms))
    for name in ("sequence_test", "skill_by_lead_time_test", "metrics"):
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 10_000


def test_predict_writes_nowcasts_on_the_input_grid(frames_dir, tmp_path):
    dm = _dm(frames_dir)
    model = _train(dm)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[NetCDFPredictionWriter(str(tmp_path))])
    trainer.predict(model, datamodule=dm, return_predictions=False)
    ds = xr.open_dataset(tmp_path / "predictions_test.nc")
    da = ds["rain_rate"]
    assert da.dims == ("time", "lead_time", "y", "x") and da.attrs["units"] == "mm h-1"
    src = xr.open_dataset(sorted(frames_dir.glob("*.nc"))[0])
    np.testing.assert_array_equal(ds["y"], src["y"])
    np.testing.assert_array_equal(ds["x"], src["x"])
    assert ds["y"].attrs["units"] == "km"
    assert list(ds["lead_time"].values) == [np.timedelta64(5, "m"), np.timedelta64(10, "m")]
    np.testing.assert_array_equal(ds["time"].values, dm.issue_times("test"))
    unseen = np.isnan(dm.past_frames("test")[:, -1:])  # beyond the radar's range at issue time: NaN
    np.testing.assert_array_equal(np.isnan(da.values), np.broadcast_to(unseen, da.shape))
    assert (da.values[~np.isnan(da.values)] >= 0).all()
    with torch.no_grad():
        first = model.eval()(dm.dataset("test")[0]["x"][None])[0].numpy()
    np.testing.assert_allclose(da.isel(time=0).values, np.where(unseen[0], np.nan, first), rtol=1e-5, atol=1e-6)


def test_cli_fit_generates_data_and_writes_metrics(tmp_path):
    data, runs = tmp_path / "radar", tmp_path / "runs"
    rc = main(["fit", "--config", CONFIG, "--data.paths", str(data),
               "--data.sample_options", '{"n_frames": 48, "ny": 24, "nx": 24, "missing": [10], "progress": false}',
               "--data.train_period", f'["{DAY}T00:00", "{DAY}T01:55"]',
               "--data.val_period", f'["{DAY}T02:00", "{DAY}T02:40"]',
               "--data.test_period", f'["{DAY}T02:45", "{DAY}T03:55"]',
               "--data.n_in", "3", "--data.n_out", "2", "--data.batch_size", "8",
               "--model.width", "4", "--model.depth", "1", "--trainer.max_epochs", "2",
               "--trainer.logger.init_args.save_dir", str(runs), "--trainer.enable_progress_bar", "false"])
    assert rc == 0
    assert len(list(data.glob("RAD_*.nc"))) == 47
    run = runs / "nowcasting" / "version_0"
    m = json.loads((run / "metrics.json").read_text())["rain_rate"]
    assert set(m) == {"model", "persistence", "optical_flow"} and "by_lead_time" in m["model"]
    assert (run / "figures" / "learning_curves.png").stat().st_size > 10_000


def test_cli_bad_archive_is_one_line(tmp_path, cli_error):
    folder = tmp_path / "radar"
    paths = _frames(folder)
    _frame(paths[3], "2024-06-01T00:15", var="rainfall")
    rc, lines = cli_error(["fit", "--config", CONFIG, "--data.paths", str(folder), "--data.synthesize_if_missing",
                           "false", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")])
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("climateml: error: ")
    assert "f003.nc" in lines[0] and "is missing" in lines[0]


def test_attribution_maps_of_a_nowcast_keep_the_archive_coordinates(frames_dir):
    """`inputs_xarray` feeds climateml.attribution: maps come back on (time, input_frame, y, x) with the archive's
    y (descending, km) and x, and a nowcast target at one lead time over a region."""
    from climateml.attribution import attribute
    from climateml.attribution.targets import nowcast_rain

    dm = _dm(frames_dir)
    model = _train(dm, steps=2)
    x = dm.inputs_xarray("test").isel(time=slice(0, 3))
    assert x.dims == ("time", "input_frame", "y", "x") and list(x["input_frame"].values) == dm.spec.inputs
    np.testing.assert_array_equal(x["time"].values, dm.issue_times("test")[:3])
    y = x["y"].values
    a = attribute(model, x, "input_x_gradient", target=nowcast_rain(1, region={"y": (y.min(), y.max())}))
    assert a.dims == x.dims and all(np.array_equal(a[d].values, x[d].values) for d in x.dims)
    assert np.isfinite(a.values).all() and a.attrs["method"] == "input_x_gradient"
    # the default baseline: the rain rate at the training mean of the transformed scale, 0 in the network's space
    from climateml.attribution.baselines import TRAINING_CLIMATOLOGY, training_climatology

    base = training_climatology(model, x.shape[1:])
    assert base.shape == (1, *x.shape[1:]) and (base >= 0).all()
    with torch.no_grad():
        np.testing.assert_allclose(model.to_network(torch.as_tensor(base)).numpy(), 0.0, atol=1e-4)
    ig = attribute(model, x, "integrated_gradients", target=nowcast_rain(1), n_steps=4)
    assert ig.attrs["baseline"] == TRAINING_CLIMATOLOGY


@pytest.mark.parametrize("n_lead", [1, 2, 6])
def test_sequence_figure_title_fits_and_rows_are_named_once(n_lead):
    """The sequence figure's title is wrapped to the figure's width, however few lead times (columns) it shows, and
    each row is named once, left of its first panel (the observed row at the "now" panel)."""
    import matplotlib.pyplot as plt

    from climateml.evaluation.nowcasting import plot_sequences

    rng = np.random.default_rng(0)
    lead = np.arange(1, n_lead + 1) * np.timedelta64(5, "m")
    observed = xr.DataArray(rng.gamma(0.5, 2, (n_lead, 8, 8)), dims=("lead_time", "y", "x"),
                            coords={"lead_time": lead, "y": np.arange(8.0), "x": np.arange(8.0),
                                    "time": np.datetime64("2024-06-01T06:30")})
    fig = plot_sequences(observed, {"model": observed * 0.9, "optical_flow": observed}, last_input=observed[0])
    try:
        fig.canvas.draw()
        title = fig._suptitle.get_window_extent()
        assert title.x0 >= 0 and title.x1 <= fig.bbox.x1, (title, fig.bbox)
        labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
        assert labels == ["observed", "model", "optical flow", "rain rate (mm/h)"]  # the last: the colour bar
    finally:
        plt.close(fig)
