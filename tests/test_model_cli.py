"""The emulator, its training machinery, evaluation and the climateml command, on small generated data."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import xarray as xr

from climateml.cli import main
from climateml.data import ClimateBenchDataModule
from climateml.data.synthetic import Grid, generate_climatebench
from climateml.evaluation import predict
from climateml.evaluation.base import VERDICT_KEY, variables
from climateml.metrics import rmse
from climateml.models import LinearRegression, TemperatureEmulator
from climateml.models.temperature import WeightedRMSE

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "temperature.yaml")


@pytest.fixture(scope="module")
def cli_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cb_cli")
    generate_climatebench(out, grid=Grid(12, 18), progress=False)
    return out


def _fit(data_dir, max_epochs=3, seed=0, callbacks=None, **model_kw):
    L.seed_everything(seed, workers=True)
    dm = ClimateBenchDataModule(str(data_dir), seed=seed)
    model = TemperatureEmulator(dm.spec, **model_kw)
    trainer = L.Trainer(max_epochs=max_epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, deterministic=True, callbacks=callbacks)
    trainer.fit(model, dm)
    return model, dm, trainer


def _run_cli(args) -> int:
    return main(["fit", "--config", CONFIG, *args])


def test_weighted_rmse_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    w = torch.tensor([0.1, 0.2, 0.3, 0.1, 0.2, 0.1])
    metric = WeightedRMSE(["tas"])
    metric.update((((pred[:2] - target[:2]) ** 2) @ w)[:, None])  # one row per sample (validation, test)
    metric.update((((pred[2:] - target[2:]) ** 2) @ w).sum().view(1, 1), n=3)  # a batch summed into one row (train)
    expected = np.sqrt(np.mean([(w * (pred[i] - target[i]) ** 2).sum().item() for i in range(5)]))
    assert metric.compute()["rmse_tas"].item() == pytest.approx(expected, rel=1e-6)


def test_linear_regression_recovers_a_linear_map():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 3, generator=g) * torch.tensor([1.0, 100.0, 0.01]) + 5.0
    coef = torch.randn(3, 4, generator=g)
    y = x @ coef + 2.0
    model = LinearRegression.fit(x, y)
    assert torch.allclose(model(x), y, atol=1e-3)


def test_normalization_reaches_buffers_and_forward_is_in_physical_units(cli_data):
    model, dm, _ = _fit(cli_data, max_epochs=1)
    x, y = dm.train_dataset.tensors["x"], dm.train_dataset.tensors["y"]
    assert torch.allclose(model.x_mean, x.mean(0))
    assert torch.allclose(model.y_mean[0], y.mean(), rtol=1e-4)
    assert model.cell_weights.sum().item() == pytest.approx(1.0, rel=1e-5)
    with torch.no_grad():
        # pattern scaling (CO2 is the first input) plus the network's correction in units of the target's std
        manual = model.ps_intercept + x[:, :1] * model.ps_slope + model.net((x - model.x_mean) / model.x_std) * model.y_std
        assert torch.allclose(model(x), manual, atol=1e-5)


def test_training_reduces_error_and_is_reproducible(cli_data):
    # a plain MLP (base none) from its random start; the default emulator starts at pattern scaling instead
    untrained, dm, _ = _fit(cli_data, max_epochs=0, base="none")
    a, _, trainer = _fit(cli_data, max_epochs=15, base="none")
    b, _, _ = _fit(cli_data, max_epochs=15, base="none")
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    truth = dm.truth("test")["ssp245"]["tas"]
    assert rmse(predict(a, dm)["ssp245"]["tas"], truth) < 0.5 * rmse(predict(untrained, dm)["ssp245"]["tas"], truth)


def test_logged_val_rmse_is_the_area_weighted_rmse_over_the_whole_split(cli_data):
    """The epoch's val_rmse_tas equals sqrt(mean over samples of the cos-lat weighted squared error), in K."""
    model, dm, trainer = _fit(cli_data, max_epochs=2)
    trainer.validate(model, dm, verbose=False)
    x, y = dm.val_dataset.tensors["x"], dm.val_dataset.tensors["y"]
    with torch.no_grad():
        err2 = (model(x) - y).double() ** 2
    w = torch.as_tensor(np.cos(np.deg2rad(dm.truth("test")["ssp245"]["lat"].values)))[:, None].expand(12, 18)
    w = (w / w.sum()).reshape(-1)
    expected = torch.sqrt((err2 @ w).mean()).item()
    assert trainer.callback_metrics["val_rmse_tas"].item() == pytest.approx(expected, rel=1e-4)


class _LRHistory(L.Callback):
    """The learning rate used at every optimiser step, with the epoch it belongs to."""

    def __init__(self):
        self.lrs: list[tuple[int, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append((trainer.current_epoch, trainer.optimizers[0].param_groups[0]["lr"]))


@pytest.mark.parametrize("schedule", ["plateau", "cosine", "step", "onecycle"])
def test_lr_schedules_follow_their_schedule(cli_data, schedule):
    options = {"plateau": {"patience": 0, "factor": 0.5, "threshold": 10.0}, "step": {"step_size": 1}}.get(schedule, {})
    history = _LRHistory()
    _fit(cli_data, max_epochs=3, lr_scheduler=schedule, lr_scheduler_options=options, callbacks=[history])
    per_epoch = {e: sorted({lr for ep, lr in history.lrs if ep == e}) for e in range(3)}
    if schedule == "onecycle":  # stepped every optimiser step: warms up to max_lr = 10 lr, then anneals
        lrs = [lr for _, lr in history.lrs]
        assert len(set(lrs)) == len(lrs), "one-cycle must change the learning rate at every step"
        assert lrs[0] == pytest.approx(1e-2 / 25) and max(lrs) == pytest.approx(1e-2, rel=0.05)
        assert lrs[-1] < lrs[len(lrs) // 2]
        return
    assert all(len(v) == 1 for v in per_epoch.values()), "epoch schedules keep one rate per epoch"
    rates = [per_epoch[e][0] for e in range(3)]
    assert rates[0] == pytest.approx(1e-3)
    if schedule in ("plateau", "step"):  # halved after every epoch (threshold 10 counts no epoch as an improvement)
        assert rates == pytest.approx([1e-3, 5e-4, 2.5e-4])
    else:  # cosine over max_epochs = 3
        assert rates == pytest.approx([1e-3 * (1 + np.cos(np.pi * e / 3)) / 2 for e in range(3)])


def test_checkpoint_reload_predicts_in_physical_units(cli_data, tmp_path):
    model, dm, trainer = _fit(cli_data, max_epochs=2)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    reloaded = TemperatureEmulator.load_from_checkpoint(path)
    a, b = predict(model, dm)["ssp245"], predict(reloaded, dm)["ssp245"]
    xr.testing.assert_allclose(a, b)
    assert float(abs(b["tas"]).max()) > 0.5 and b["tas"].attrs["units"] == "K"


def test_fit_writes_metrics_figures_verdict_and_beats_linear_baseline(tmp_path, capsys):
    data = tmp_path / "cb"
    generate_climatebench(data, grid=Grid(24, 36), progress=False)
    rc = _run_cli(["--data.data_dir", str(data), "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
                   "--trainer.enable_progress_bar", "false"])
    assert rc == 0
    run = tmp_path / "runs" / "temperature" / "version_0"
    m = json.loads((run / "metrics.json").read_text())
    entries = {"model", "pattern_scaling", "linear_baseline", "random_forest", "gaussian_process"}
    assert set(variables(m)) == {"tas"} and set(m["tas"]) == entries
    # the verdict names the best entry on nrmse_total and the margin, and the printed summary says it in words
    v = m[VERDICT_KEY]["tas"][0]
    ranked = sorted(entries, key=lambda e: m["tas"][e]["nrmse_total"])
    assert (v["score"], v["better"], v["best"], v["runner_up"]) == ("nrmse_total", "lower", ranked[0], ranked[1])
    assert v["margin"] == pytest.approx(m["tas"][ranked[1]]["nrmse_total"] - m["tas"][ranked[0]]["nrmse_total"])
    assert v["text"] in capsys.readouterr().out
    for scores in m["tas"].values():
        assert {"rmse", "mae", "bias", "r2", "nrmse_spatial", "nrmse_global", "nrmse_total"} <= set(scores)
        assert 0 < scores["rmse"] < 1.0 and np.isfinite(scores["nrmse_total"])
    assert m["tas"]["model"]["nrmse_total"] < m["tas"]["linear_baseline"]["nrmse_total"]
    # the EOF baselines are real competitors: better than linear pattern scaling on the non-linear sample data
    assert m["tas"]["gaussian_process"]["nrmse_total"] < m["tas"]["linear_baseline"]["nrmse_total"]
    for name in ["maps_tas_ssp245", "global_mean_tas_ssp245", "point_new_york_tas_ssp245", "learning_curves", "metrics"]:
        assert (run / "figures" / f"{name}.png").stat().st_size > 10_000, name
    assert len(list((run / "checkpoints").glob("best-*.ckpt"))) == 1
    preds = xr.open_dataset(run / "test_predictions_ssp245.nc")
    assert preds["tas"].dims == ("model", "time", "lat", "lon") and preds.sizes["time"] == 86
    assert list(preds["model"].values) == ["model", "pattern_scaling", "linear_baseline", "random_forest", "gaussian_process"]
    assert preds["lat"].attrs["units"] == "degrees_north" and preds["tas"].attrs["units"] == "K"
    truth = xr.open_dataset(data / "outputs_ssp245.nc")["tas"].mean("member")
    assert float(rmse(preds["tas"].sel(model="model"), truth)) == pytest.approx(m["tas"]["model"]["rmse"], rel=1e-4)
    # every prediction in the file, baselines included, is the one metrics.json scored
    names = [str(n) for n in preds["model"].values]
    assert set(names) == set(m["tas"])
    for name in names:
        assert float(rmse(preds["tas"].sel(model=name), truth)) == pytest.approx(m["tas"][name]["rmse"], rel=1e-4), name


def test_ensemble_and_predict_writes_cf_netcdf(cli_data, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    common = ["--data.data_dir", str(cli_data), "--trainer.logger.init_args.save_dir", str(runs),
              "--trainer.enable_progress_bar", "false"]
    assert _run_cli([*common, "--ensemble", "2", "--trainer.max_epochs", "3",
                     "--evaluation.init_args.baselines", "[linear]"]) == 0  # the EOF baselines: tested above
    run = runs / "temperature" / "version_0"
    model = json.loads((run / "metrics.json").read_text())["tas"]["model"]
    assert model["ensemble_size"] == 2 and model["ensemble_spread"] > 0
    ckpts = sorted(run.glob("member_*/checkpoints/best-*.ckpt"))
    assert len(ckpts) == 2
    assert (run / "figures" / "ensemble_spread_tas_ssp245.png").stat().st_size > 10_000
    preds = xr.open_dataset(run / "test_predictions_ssp245.nc")
    assert preds.sizes["member"] == 2
    assert not np.allclose(preds["tas_members"].isel(member=0), preds["tas_members"].isel(member=1))
    xr.testing.assert_allclose(preds["tas"].sel(model="model", drop=True), preds["tas_members"].mean("member"), rtol=1e-5)

    out = tmp_path / "pred"
    import lightning

    from climateml.callbacks import NetCDFPredictionWriter

    held, appended, predict, write = [], [], lightning.Trainer.predict, NetCDFPredictionWriter.write_on_batch_end

    def writes(self, trainer, *args):  # each batch reaches a part store as soon as it is predicted
        write(self, trainer, *args)
        appended.append(sorted(p.name for p in self._parts.folder.iterdir()))

    @functools.wraps(predict)  # the same signature: the command line's options come from it
    def predicts(self, *args, **kwargs):
        held.append(predict(self, *args, **kwargs))

    monkeypatch.setattr(lightning.Trainer, "predict", predicts)
    monkeypatch.setattr(NetCDFPredictionWriter, "write_on_batch_end", writes)
    rc = main(["predict", "--config", CONFIG, *common, "--ckpt_path", str(ckpts[0]), "--data.batch_size", "4",
               "--trainer.callbacks+=climateml.callbacks.NetCDFPredictionWriter",
               f"--trainer.callbacks.output_dir={out}"])
    assert rc == 0
    assert held == [None] and len(appended) > 1 and appended[0] == ["ssp245.rank0.zarr"]  # nothing held, per batch
    assert not (out / ".parts").exists()  # the parts became the file
    ds = xr.open_dataset(out / "predictions_ssp245.nc")
    truth = xr.open_dataset(cli_data / "outputs_ssp245.nc")
    assert ds["tas"].dims == ("time", "lat", "lon")
    np.testing.assert_array_equal(ds["lat"], truth["lat"])
    np.testing.assert_array_equal(ds["time"], truth["time"])
    assert ds.attrs["Conventions"].startswith("CF") and ds["lat"].attrs["units"] == "degrees_north"
    assert ds["tas"].attrs["units"] == "K"
    xr.testing.assert_allclose(ds["tas"], preds["tas_members"].isel(member=0, drop=True), rtol=1e-5)


def test_cli_reports_bad_data_as_one_clear_error(tmp_path, cli_error):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, lines = cli_error(["fit", "--config", CONFIG, "--data.data_dir", str(empty), "--data.synthesize_if_missing",
                           "false", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")])
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith("climateml: error:") and str(empty) in lines[0] and "historical" in lines[0]


def test_cli_rejects_bad_config_values(cli_data, tmp_path, cli_error):
    """A value outside an option's choices: the parser's error names the option, the value and the choices."""
    rc, lines = cli_error(["fit", "--config", CONFIG, "--data.data_dir", str(cli_data),
                           "--model.init_args.lr_scheduler", "sometimes"])
    assert rc == 2
    text = "\n".join(lines)
    assert "Traceback" not in text and any(line.startswith("error:") for line in lines), text
    option = next(i for i, line in enumerate(lines) if 'Parser key "lr_scheduler"' in line)
    assert "Got value: sometimes" in lines[option + 1]
    assert all(f"'{choice}'" in lines[option + 1] for choice in ("none", "plateau", "cosine", "step", "onecycle"))


def test_test_subcommand_reloads_a_checkpoint_with_eof_inputs(cli_data, tmp_path, capsys):
    common = ["--data.data_dir", str(cli_data), "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
              "--data.inputs", "[CO2, CH4, SO2, BC]", "--data.map_reduction", "eof", "--data.n_eofs", "3",
              "--trainer.enable_progress_bar", "false",
              "--evaluation.init_args.baselines", "[linear]", "--evaluation.init_args.make_figures", "false"]
    assert _run_cli([*common, "--trainer.max_epochs", "2"]) == 0
    ckpt = next((tmp_path / "runs" / "temperature" / "version_0" / "checkpoints").glob("best-*.ckpt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)  # loads without unpickling arbitrary objects
    assert state["ClimateBenchDataModule"]["reducer"]["eofs"]["SO2"].shape[0] == 3
    capsys.readouterr()
    assert main(["test", "--config", CONFIG, *common, "--ckpt_path", str(ckpt)]) == 0
    assert "test_rmse_tas" in capsys.readouterr().out


def test_ensemble_cannot_resume_from_one_checkpoint(cli_data, tmp_path, cli_error):
    rc, lines = cli_error(["fit", "--config", CONFIG, "--data.data_dir", str(cli_data), "--trainer.logger.init_args.save_dir",
                           str(tmp_path / "runs"), "--ensemble", "2", "--ckpt_path", str(tmp_path / "any.ckpt")])
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("climateml: error:") and "--ensemble" in lines[0], lines
