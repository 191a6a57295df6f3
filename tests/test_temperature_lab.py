"""Temperature lab, second pass (issue 9): training ends at convergence on any data size, maps with degree axes
and coastlines over a real land mask, the EOF baselines, a lean training step, and one clear line for bad input.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import xarray as xr  # noqa: E402

from climateml import plotting  # noqa: E402
from climateml.cli import main  # noqa: E402
from climateml.config import build_trainer, instantiate, load_config  # noqa: E402
from climateml.data import ClimateBenchDataModule, DataError  # noqa: E402
from climateml.data.synthetic import Grid, generate_climatebench  # noqa: E402
from climateml.data.synthetic.climatebench import land_mask  # noqa: E402
from climateml.errors import ConfigError  # noqa: E402
from climateml.evaluation import TemperatureEvaluation  # noqa: E402
from climateml.metrics import rmse  # noqa: E402
from climateml.models import TemperatureEmulator  # noqa: E402
from climateml.models.base import ClimateTask  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "temperature.yaml"


@pytest.fixture
def one_thread():
    """Tiny networks run fastest on one thread (and a busy machine's cores are not oversubscribed)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cos_mean(a: np.ndarray, lat: np.ndarray) -> float:
    w = np.cos(np.deg2rad(lat))[:, None] * np.ones_like(a)
    return float((a * w).sum() / w.sum())


# ================================================================ 1. training ends at convergence

@pytest.fixture(scope="module")
def short_series(tmp_path_factory) -> Path:
    """A short real-world-sized record: one 1 x 1 grid (global mean), 86 training years, CO2 + CH4."""
    out = tmp_path_factory.mktemp("cb_1x1")
    generate_climatebench(out, scenarios=["ssp370", "ssp245"], grid=Grid(1, 1), progress=False)
    return out


def _fit_default(data_dir: Path, tmp: Path, model_overrides: dict | None = None, **trainer_overrides):
    """The default config (configs/temperature.yaml) on ``data_dir``: returns (final val_loss, trainer)."""
    config = load_config(CONFIG)
    L.seed_everything(config["seed_everything"], workers=True)
    dm = instantiate(config["data"], data_dir=str(data_dir), train_scenarios=["ssp370"], test_scenarios=["ssp245"],
                     synthesize_if_missing=False)
    model = TemperatureEmulator(dm.spec, **{**config["model"]["init_args"], **(model_overrides or {})})
    trainer = build_trainer(config, logger_save_dir=str(tmp), enable_progress_bar=False, enable_model_summary=False,
                            **trainer_overrides)
    trainer.fit(model, dm)
    final = trainer.validate(model, dm, verbose=False)[0]["val_loss"]  # the weights the run ends with
    return final, trainer


def test_default_config_ends_by_early_stopping_on_a_short_series(short_series, tmp_path, one_thread):
    config = load_config(CONFIG)
    cap_steps, cap_epochs = config["trainer"]["max_steps"], config["trainer"]["max_epochs"]
    # the training schedule for a network that learns everything (base none): the default emulator starts at
    # pattern scaling and may stop as soon as early stopping's patience runs out when no correction helps
    plain = {"base": "none", "correction_modes": 0}
    final, trainer = _fit_default(short_series, tmp_path / "a", plain)
    assert len(trainer.datamodule.dataset("train")) + len(trainer.datamodule.dataset("val")) == 86
    stopper = trainer.early_stopping_callback
    assert stopper.stopped_epoch > 0, "early stopping must be what ends the run"
    assert trainer.global_step < cap_steps and trainer.current_epoch < cap_epochs
    # best weights restored: the final validation loss is the best one seen
    assert final == pytest.approx(float(trainer.checkpoint_callback.best_model_score), rel=1e-5)
    # far more optimiser steps than the 100 that 50 epochs of 2 batches gave (the case)
    assert trainer.global_step >= 300

    # a run allowed 10x the steps (and epochs) ends at the same place: the caps never bind
    final_10x, trainer_10x = _fit_default(short_series, tmp_path / "b", plain, max_steps=10 * cap_steps,
                                          max_epochs=10 * cap_epochs)
    assert trainer_10x.early_stopping_callback.stopped_epoch > 0
    assert final <= 1.10 * final_10x

    # and better than the old default, which its epoch cap stopped (50 epochs of 2 steps, validation per epoch)
    final_old, trainer_old = _fit_default(short_series, tmp_path / "c", plain, max_epochs=50, max_steps=-1,
                                          check_val_every_n_epoch=1, val_check_interval=1.0)
    assert trainer_old.early_stopping_callback.stopped_epoch == 0 and trainer_old.global_step == 100
    assert final < final_old, (final, final_old)


def test_plateau_schedule_works_with_validation_every_n_steps(short_series, tmp_path, one_thread):
    """Validation every 10 steps spans several 2-step epochs: the plateau schedule must neither fail before the
    first validation nor count one validation several times."""
    config = load_config(CONFIG)
    L.seed_everything(0)
    dm = instantiate(config["data"], data_dir=str(short_series), train_scenarios=["ssp370"],
                     test_scenarios=["ssp245"], synthesize_if_missing=False)
    model = TemperatureEmulator(dm.spec, lr_scheduler="plateau",
                                lr_scheduler_options={"patience": 0, "factor": 0.5, "threshold": 10.0})
    trainer = build_trainer(config, logger=False, callbacks=[], enable_checkpointing=False, max_steps=40,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    with pytest.warns(RuntimeWarning, match="not available but strict is set to `False`"):
        trainer.fit(model, dm)
    # 4 validations (steps 10, 20, 30, 40), each counted once as "no improvement" (threshold 10): 3 halvings
    # take effect before the last one; the fourth halves the rate once more at the end
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 / 2 ** 4)


# ---- the plateau schedule's counters travel in the checkpoint: a resumed run carries on with the interrupted
# run's counts instead of restarting them at 0
RESUME_PLATEAU = {"lr_scheduler": "plateau", "lr_scheduler_options": {"patience": 0, "factor": 0.5, "threshold": 10.0}}


class SaveAtStep(L.Callback):
    """Saves a checkpoint at the end of optimiser step ``step`` (mid-epoch, as ResumeCheckpoint does) and notes
    the module's plateau counters at that moment."""

    def __init__(self, step: int, path: Path):
        self.step, self.path, self.counters = step, path, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            self.counters = (pl_module._validations, pl_module._plateau_steps)


def _setup_plateau(data_dir: Path, callbacks: list, val_every: int = 5, max_steps: int = 20, schedule=None):
    """A tiny plateau-scheduled emulator on ``data_dir`` (batches of 8: 9 optimiser steps per epoch of 69 years)."""
    config = load_config(CONFIG)
    L.seed_everything(0)
    dm = instantiate(config["data"], data_dir=str(data_dir), train_scenarios=["ssp370"], test_scenarios=["ssp245"],
                     synthesize_if_missing=False, batch_size=8)
    model = TemperatureEmulator(dm.spec, hidden_sizes=[8], **(schedule or RESUME_PLATEAU))
    trainer = build_trainer(config, logger=False, callbacks=callbacks, enable_checkpointing=False,
                            max_steps=max_steps, val_check_interval=val_every, check_val_every_n_epoch=None,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    return dm, model, trainer


def test_resumed_run_restores_the_plateau_counters(short_series, tmp_path, one_thread):
    """Epochs of p steps, validation every 5 steps, a checkpoint one step after the first validation (mid-epoch, as
    ResumeCheckpoint writes it), so it holds a validation the schedule has not yet stepped for. A fresh module
    resumed from it through ``trainer.fit(ckpt_path=...)`` starts with the saved counters and ends with those of
    the uninterrupted run (restarted at 0 they would lag it by the validations before the checkpoint)."""
    dm, _, _ = _setup_plateau(short_series, [])
    dm.setup("fit")
    assert len(dm.train_dataloader()) > 6, "the checkpoint must fall inside the first epoch, before its last step"
    val_every, max_steps = 5, 20

    save = SaveAtStep(val_every + 1, tmp_path / "mid.ckpt")
    dm, model, trainer = _setup_plateau(short_series, [save], val_every, max_steps)
    trainer.fit(model, dm)
    assert save.counters == (1, 0), "the checkpoint must hold a validation the schedule has not stepped for yet"
    full_counters = (model._validations, model._plateau_steps)
    assert full_counters[0] == max_steps // val_every
    full_lr = trainer.optimizers[0].param_groups[0]["lr"]

    checkpoint = torch.load(save.path, map_location="cpu", weights_only=True)
    assert checkpoint[ClimateTask.PLATEAU_COUNTERS_KEY] == {"validations": 1, "plateau_steps": 0}
    assert set(checkpoint[ClimateTask.MONITORED_KEY]) == {"val_loss"}

    restored = {}

    class Spy(L.Callback):
        def on_train_start(self, trainer, pl_module):
            restored["counters"] = (pl_module._validations, pl_module._plateau_steps)

    dm, resumed, trainer = _setup_plateau(short_series, [Spy()], val_every, max_steps)
    trainer.fit(resumed, dm, ckpt_path=str(save.path))
    assert trainer.global_step == max_steps
    assert restored["counters"] == save.counters
    assert (resumed._validations, resumed._plateau_steps) == full_counters
    # the schedule itself: the resumed run steps for the validation saved in the checkpoint, as the full run did
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(full_lr)
    assert full_lr < model.hparams.lr, "the schedule must have reduced the rate for the test to mean anything"


def test_resumed_run_keeps_an_epoch_schedule_on_course(short_series, tmp_path, one_thread):
    """A step schedule (halve the rate every epoch), a checkpoint mid-way through the first epoch: Lightning
    updates non-plateau schedules itself at the end of a resumed epoch, so the module, which catches up the
    plateau update Lightning skips there, must not step them a second time."""
    schedule = {"lr_scheduler": "step", "lr_scheduler_options": {"step_size": 1, "gamma": 0.5}}
    save = SaveAtStep(4, tmp_path / "mid.ckpt")
    dm, model, trainer = _setup_plateau(short_series, [save], 5, 20, schedule)
    trainer.fit(model, dm)
    full_lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert full_lr == pytest.approx(model.hparams.lr * 0.25)  # two epoch ends within 20 steps of 9 per epoch
    dm, resumed, trainer = _setup_plateau(short_series, [], 5, 20, schedule)
    trainer.fit(resumed, dm, ckpt_path=str(save.path))
    assert trainer.global_step == 20
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(full_lr)


def test_plateau_counters_round_trip_and_old_checkpoints_start_at_zero(short_series):
    config = load_config(CONFIG)
    dm = instantiate(config["data"], data_dir=str(short_series), train_scenarios=["ssp370"], test_scenarios=["ssp245"],
                     synthesize_if_missing=False)
    saved = TemperatureEmulator(dm.spec, hidden_sizes=[8], **RESUME_PLATEAU)
    saved._validations, saved._plateau_steps = 7, 5
    checkpoint: dict = {}
    saved.on_save_checkpoint(checkpoint)

    fresh = TemperatureEmulator(dm.spec, hidden_sizes=[8], **RESUME_PLATEAU)
    fresh.on_load_checkpoint(checkpoint)
    assert (fresh._validations, fresh._plateau_steps) == (7, 5)

    fresh.on_load_checkpoint({})  # written before the counters were saved
    assert (fresh._validations, fresh._plateau_steps) == (0, 0)


# ================================================================ 2. maps a scientist would publish

def _tick_labels(ax, draw: bool = True) -> tuple[list[str], list[str]]:
    if draw:
        ax.figure.canvas.draw()
    return [t.get_text() for t in ax.get_xticklabels()], [t.get_text() for t in ax.get_yticklabels()]


@pytest.mark.parametrize("nlat, nlon", [(96, 144), (12, 18), (1, 1)])
def test_plot_field_has_degree_axes_and_coastlines(nlat, nlon):
    grid = Grid(nlat, nlon)
    field = xr.DataArray(np.random.default_rng(0).normal(size=(nlat, nlon)), dims=("lat", "lon"),
                         coords={"lat": grid.lat, "lon": grid.lon}, name="tas")
    fig, ax = plt.subplots()
    mesh = plotting.plot_field(ax, field, vmin=-2, vmax=2, title="t")
    xl, yl = _tick_labels(ax)
    assert any(t.endswith("°E") for t in xl) and any(t.endswith("°W") for t in xl), xl
    assert any(t.endswith("°N") for t in yl) and any(t.endswith("°S") for t in yl), yl
    assert ax.get_ylim() == pytest.approx((-90.0, 90.0))
    x0, x1 = ax.get_xlim()
    assert x1 - x0 == pytest.approx(360.0)
    # the coastline is drawn (a contour of the land mask), and the field's cells cover the whole globe
    assert len(ax.collections) >= 2 and mesh in ax.collections
    plt.close(fig)


def _mesh_cells(mesh) -> dict[tuple[float, float], float]:
    """{(lat, lon % 360) of each drawn cell's centre: its value}, from the QuadMesh's corners and array."""
    corners = mesh.get_coordinates()  # (nlat + 1, nlon + 1, 2): x = lon, y = lat
    centres = (corners[:-1, :-1] + corners[1:, :-1] + corners[:-1, 1:] + corners[1:, 1:]) / 4.0
    values = np.ma.getdata(mesh.get_array()).reshape(centres.shape[:2])
    return {(round(float(c[1]), 6), round(float(c[0]) % 360.0, 6) % 360.0): float(v)
            for c, v in zip(centres.reshape(-1, 2), values.reshape(-1))}


def test_plot_field_reads_both_longitude_conventions():
    grid = Grid(12, 18)
    values = np.arange(12 * 18, dtype=float).reshape(12, 18)
    east = xr.DataArray(values, dims=("lat", "lon"), coords={"lat": grid.lat, "lon": grid.lon})
    west = east.assign_coords(lon=(east["lon"] + 180.0) % 360.0 - 180.0).sortby("lon").sortby("lat", ascending=False)
    fig, (a, b) = plt.subplots(2)
    ma, mb = plotting.plot_field(a, east), plotting.plot_field(b, west)
    # the same cells, shifted by 180 degrees in their own convention
    assert np.ma.getdata(ma.get_array()).sum() == np.ma.getdata(mb.get_array()).sum()
    # cell by cell: every cell is drawn where its coordinates say, so (lat, lon % 360) -> value agrees
    cells_a, cells_b = _mesh_cells(ma), _mesh_cells(mb)
    assert len(cells_a) == len(cells_b) == 12 * 18
    assert cells_a == cells_b
    # and each cell holds the value stored at the grid point nearest its centre (polar cells end at +-90)
    for (la, lo), v in cells_a.items():
        i, j = np.abs(grid.lat - la).argmin(), np.abs((grid.lon - lo + 180.0) % 360.0 - 180.0).argmin()
        assert v == values[i, j], (la, lo)
    assert a.get_xlim()[1] - a.get_xlim()[0] == pytest.approx(b.get_xlim()[1] - b.get_xlim()[0])
    assert b.get_xlim()[0] < 0 < a.get_xlim()[1] - 180
    plt.close(fig)


def test_map_figures_have_degree_axes(tmp_path):
    grid = Grid(12, 18)
    rng = np.random.default_rng(1)
    truth = xr.DataArray(rng.normal(size=(3, 12, 18)), dims=("time", "lat", "lon"),
                         coords={"time": [2030, 2050, 2100], "lat": grid.lat, "lon": grid.lon}, name="tas")
    fig = plotting.plot_maps(truth, {"model": truth + 0.1})
    assert len(fig.axes) == 3 * 3 + 3  # 9 maps and a colour bar under each column
    fig.canvas.draw()
    for ax in fig.axes[:9]:
        xl, yl = _tick_labels(ax, draw=False)
        assert any("°" in t for t in xl) and any("°" in t for t in yl)
    plt.close(fig)
    members = xr.concat([truth, truth * 1.1], "member")
    fig = plotting.plot_ensemble_spread(members)
    fig.canvas.draw()
    assert all(any("°" in t for t in _tick_labels(ax, draw=False)[0]) for ax in fig.axes[:3])
    plt.close(fig)


def test_sample_data_land_is_the_real_earth():
    g96 = Grid(96, 144)
    land = land_mask(g96)
    assert land.shape == (96, 144) and 0.0 <= land.min() and land.max() <= 1.0
    assert cos_mean(land, g96.lat) == pytest.approx(0.29, abs=0.02)  # 29 % of the Earth's surface
    at = lambda la, lo: land[np.abs(g96.lat - la).argmin(), np.abs(g96.lon - lo).argmin()]  # noqa: E731
    assert at(23.0, 15.0) == pytest.approx(1.0) and at(-80.0, 90.0) == pytest.approx(1.0)  # Sahara, East Antarctica
    assert at(0.0, 200.0) == 0.0 and at(55.0, 330.0) == 0.0  # mid-Pacific, North Atlantic
    assert at(40.0, 255.0) == pytest.approx(1.0) and at(40.0, 190.0) == 0.0  # Colorado; the Pacific at 40N
    small = land_mask(Grid(12, 18))
    assert cos_mean(small, Grid(12, 18).lat) == pytest.approx(0.29, abs=0.03)
    assert land_mask(Grid(1, 1)).item() == pytest.approx(0.29, abs=0.02)  # the single cell is the whole Earth


def test_sample_data_warms_land_more_and_emits_aerosols_over_land(tmp_path):
    grid = Grid(24, 36)
    generate_climatebench(tmp_path, scenarios=["ssp585", "ssp245"], grid=grid, progress=False)
    land = land_mask(grid) > 0.5
    tas = xr.open_dataset(tmp_path / "outputs_ssp585.nc")["tas"].sel(time=slice(2081, 2100)).mean(("member", "time"))
    tropics = np.abs(grid.lat)[:, None] * np.ones((1, 36)) < 50  # away from the Arctic and Antarctica
    assert tas.values[land & tropics].mean() > 1.2 * tas.values[~land & tropics].mean()
    so2 = xr.open_dataset(tmp_path / "inputs_ssp245.nc")["SO2"].sel(time=2015).values
    assert so2[land].mean() > 5 * so2[~land].mean()  # emitted over land, a little over the sea (shipping)


# ================================================================ 3. ClimateBench's other baselines

def test_baselines_and_their_options_come_from_the_config():
    config = load_config(CONFIG)
    init = config["evaluation"]["init_args"]
    assert init["baselines"] == ["pattern_scaling", "linear", "random_forest", "gaussian_process"]
    assert init["baseline_options"]["random_forest"]["n_eofs"] >= 1
    with pytest.raises(ConfigError, match="svm"):
        TemperatureEvaluation(baselines=["linear", "svm"])
    with pytest.raises(ConfigError, match="n_eofs"):
        TemperatureEvaluation(baseline_options={"random_forest": {"n_eofs": 0}})
    with pytest.raises(ConfigError, match="n_trees"):
        TemperatureEvaluation(baseline_options={"random_forest": {"n_trees": 10}})
    with pytest.raises(ConfigError, match=r"rf_options: unknown \['trees'\]"):
        TemperatureEvaluation(baseline_options={"random_forest": {"rf_options": {"trees": 10}}})
    with pytest.raises(ConfigError, match="takes gp_options, not rf_options"):
        TemperatureEvaluation(baseline_options={"gaussian_process": {"rf_options": {"n_estimators": 10}}})
    TemperatureEvaluation(baseline_options={"gaussian_process": {"gp_options": {"kernel": "rbf", "alpha": 1e-8}}})


def test_eof_baselines_predict_maps_beside_linear(small_climatebench):
    dm = ClimateBenchDataModule(str(small_climatebench))
    evaluation = TemperatureEvaluation(baseline_options={"random_forest": {"n_eofs": 3, "rf_options": {"n_estimators": 20}},
                                                         "gaussian_process": {"n_eofs": 3}})
    preds = evaluation.baselines(dm)
    assert list(preds) == ["pattern_scaling", "linear_baseline", "random_forest", "gaussian_process"]
    truth = dm.truth("test")["ssp245"]["tas"]
    scores = {k: evaluation.score_variable(v["ssp245"]["tas"], truth, "tas") for k, v in preds.items()}
    # the floor a baseline must beat: predicting every year as the truth's own time-mean map
    w = np.cos(np.deg2rad(truth["lat"].values))[None, :, None] * np.ones(truth.shape)
    t = truth.transpose("time", "lat", "lon").values
    time_mean_rmse = float(np.sqrt((w * (t.mean(0, keepdims=True) - t) ** 2).sum() / w.sum()))
    assert time_mean_rmse > 0.3, time_mean_rmse  # 0.48 K on this data: the scenario warms
    for name, p in preds.items():
        assert p["ssp245"]["tas"].dims == ("time", "lat", "lon") and p["ssp245"]["tas"].shape == truth.shape
        assert scores[name]["rmse"] < 1.0, name
        assert scores[name]["rmse"] < time_mean_rmse, (name, scores[name]["rmse"], time_mean_rmse)
    assert evaluation.fit_baseline("random_forest", dm).n_eofs == 3


def test_eof_baselines_on_a_single_cell(short_series):
    """A 1 x 1 target has one EOF only: the config asks for 5, the baseline takes what there is."""
    dm = ClimateBenchDataModule(str(short_series), train_scenarios=["ssp370"], test_scenarios=["ssp245"])
    evaluation = TemperatureEvaluation()
    for name in ("random_forest", "gaussian_process"):
        model = evaluation.fit_baseline(name, dm)
        assert model.n_eofs == 1
        pred = model(dm.dataset("test").tensors["x"])
        assert pred.shape == (86, 1) and torch.isfinite(pred).all()


# ================================================================ 4. lean training step, same metrics

def test_training_metrics_are_the_epochs_area_weighted_scores(small_climatebench, one_thread):
    """With lr = 0 the weights do not move, so the epoch's logged train_loss / train_rmse_tas must be the
    scores of the fixed network over the whole training split (all batches, weighted by samples)."""
    L.seed_everything(0)
    dm = ClimateBenchDataModule(str(small_climatebench), batch_size=64)
    model = TemperatureEmulator(dm.spec, optimizer="sgd", lr=1e-12)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(model, dm)
    x, y = dm.train_dataset.tensors["x"], dm.train_dataset.tensors["y"]
    with torch.no_grad():
        err2 = (model(x) - y).double() ** 2
        std_err2 = err2 / model.y_std.double() ** 2
    lat = dm.truth("test")["ssp245"]["lat"].values
    w = torch.as_tensor(np.cos(np.deg2rad(lat)))[:, None].expand(8, 12).reshape(-1)
    expected_rmse = torch.sqrt((err2 @ (w / w.sum())).mean()).item()
    assert trainer.callback_metrics["train_rmse_tas"].item() == pytest.approx(expected_rmse, rel=1e-4)
    assert trainer.callback_metrics["train_loss"].item() == pytest.approx(std_err2.mean().item(), rel=1e-4)


def test_training_metrics_stay_exact_under_mixed_precision(small_climatebench, one_thread):
    """Under bf16 autocast the epoch sums must not be computed in bf16: the logged train_loss is the
    sample-weighted mean of the losses the steps returned, and a target with a tiny variance (pr, ~1e-10
    (kg m-2 s-1)^2) still gets its RMSE."""

    class StepLosses(L.Callback):
        total, samples = 0.0, 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.total += float(loss) * len(batch["x"])
            self.samples += len(batch["x"])

    L.seed_everything(0)
    dm = ClimateBenchDataModule(str(small_climatebench), batch_size=7, target=["tas", "pr"])
    model = TemperatureEmulator(dm.spec, hidden_sizes=[8], optimizer="sgd", lr=1e-12)
    steps = StepLosses()
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        precision="bf16-mixed", callbacks=[steps])
    trainer.fit(model, dm)
    logged = trainer.callback_metrics
    assert logged["train_loss"].item() == pytest.approx(steps.total / steps.samples, rel=1e-5)
    x, y = dm.train_dataset.tensors["x"], dm.train_dataset.tensors["y"]
    with torch.no_grad():
        err2 = ((model(x) - y).double() ** 2).view(len(x), 2, -1)[:, 1]  # pr, in fp32 outside autocast
    lat = dm.truth("test")["ssp245"]["lat"].values
    w = torch.as_tensor(np.cos(np.deg2rad(lat)))[:, None].expand(8, 12).reshape(-1)
    expected_pr = torch.sqrt((err2 @ (w / w.sum())).mean()).item()
    assert logged["train_rmse_pr"].item() == pytest.approx(expected_pr, rel=0.03)  # bf16 forward, fp32 sums


# ================================================================ 5. bad input: one clear line

def _fit_error(cli_error, args) -> tuple[int, list[str]]:
    """``climateml fit --config configs/temperature.yaml <args>``: (exit status, stderr lines) (conftest.cli_error)."""
    return cli_error(["fit", "--config", str(CONFIG), *args])


@pytest.mark.parametrize("args, message", [
    (["--model.init_args.lr", "-1"], "model.lr must be > 0, got -1.0"),
    (["--model.lr", "0"], "model.lr must be > 0, got 0.0"),
    (["--data.init_args.batch_size", "0"], "data.batch_size must be > 0, got 0"),
    (["--model.init_args.hidden_sizes", "[64, 0]"], "model.hidden_sizes must be whole numbers > 0, got [64, 0]"),
    (["--model.init_args.activation", "sigmoidish"], "model.activation must be one of"),
    (["--model.init_args.dropout", "1.5"], "model.dropout must be in [0, 1), got 1.5"),
    (["--model.init_args.weight_decay", "-0.1"], "model.weight_decay must be >= 0"),
    (["--data.init_args.val_fraction", "1.2"], "data.val_fraction must be in [0, 1), got 1.2"),
    (["--data.init_args.n_eofs", "0"], "data.n_eofs must be > 0, got 0"),
    (["--evaluation.init_args.baselines", "[linear, svm]"], "evaluation.baselines: unknown ['svm']"),
])
def test_cli_bad_values_are_one_line(small_climatebench, tmp_path, cli_error, args, message):
    rc, lines = _fit_error(cli_error, ["--data.data_dir", str(small_climatebench),
                                       "--trainer.logger.init_args.save_dir", str(tmp_path), *args])
    assert rc == 2
    assert len(lines) == 1 and lines[0].startswith("climateml: error: ") and message in lines[0], lines


@pytest.mark.parametrize("change, message", [
    ({"patience": 0}, "EarlyStopping patience must be a whole number >= 1 (validations without improvement), got 0"),
    ({"min_delta": -0.01}, "EarlyStopping min_delta must be >= 0, got -0.01"),
])
def test_bad_early_stopping_settings_are_one_line(small_climatebench, tmp_path, change, message):
    config = load_config(CONFIG)
    for cb in config["trainer"]["callbacks"]:
        if cb["class_path"].endswith("EarlyStopping"):
            cb["init_args"].update(change)
    dm = ClimateBenchDataModule(str(small_climatebench))
    trainer = build_trainer(config, logger_save_dir=str(tmp_path), enable_progress_bar=False, max_steps=2)
    with pytest.raises(ConfigError) as err:
        trainer.fit(TemperatureEmulator(dm.spec), dm)
    assert str(err.value) == f"trainer.callbacks: {message}"


def test_cli_wrong_type_names_option_and_value(small_climatebench, tmp_path, cli_error):
    rc, lines = _fit_error(cli_error, ["--data.data_dir", str(small_climatebench), "--model.init_args.lr", "abc"])
    assert rc == 2
    text = "\n".join(lines)
    assert "lr" in text and "abc" in text and "Traceback" not in text


def test_empty_file_is_one_line(cb_copy, tmp_path, cli_error):
    path = cb_copy / "outputs_ssp245.nc"
    path.write_bytes(b"")
    with pytest.raises(DataError) as err:
        ClimateBenchDataModule(str(cb_copy)).setup()
    assert str(err.value) == f"{path}: the file is empty (0 bytes); regenerate or download it again"
    rc, lines = _fit_error(cli_error, ["--data.data_dir", str(cb_copy), "--trainer.logger.init_args.save_dir",
                                       str(tmp_path)])
    assert rc == 2 and lines == [f"climateml: error: {err.value}"]


def _to_other_conventions(path: Path, lon_name: str, lat_name: str) -> None:
    """Rewrite a file on -180..180 longitudes with latitudes north to south, as many CMIP-derived files are."""
    with xr.open_dataset(path) as ds:
        ds = ds.load()
    ds = ds.assign_coords({lon_name: (ds[lon_name] + 180.0) % 360.0 - 180.0}).sortby(lon_name)
    ds = ds.sortby(lat_name, ascending=False)
    path.unlink()
    ds.to_netcdf(path)


def test_scenario_on_other_longitude_convention_reads_onto_one_grid(cb_copy, small_climatebench, tmp_path):
    _to_other_conventions(cb_copy / "outputs_ssp126.nc", "lon", "lat")
    _to_other_conventions(cb_copy / "inputs_ssp126.nc", "longitude", "latitude")
    with xr.open_dataset(cb_copy / "outputs_ssp126.nc") as raw:  # the quirk is really on disk
        assert float(raw["lon"].min()) < 0 and float(raw["lat"][0]) > float(raw["lat"][-1])
    kw = dict(inputs=["CO2", "CH4", "SO2"], map_reduction="eof", n_eofs=2)
    dm, ref = ClimateBenchDataModule(str(cb_copy), **kw), ClimateBenchDataModule(str(small_climatebench), **kw)
    dm.setup(), ref.setup()
    for split in ("train", "val", "test"):
        for k in ("x", "y"):
            torch.testing.assert_close(dm.dataset(split).tensors[k], ref.dataset(split).tensors[k])
    out = dm.to_xarray(dm.dataset("test").tensors["y"], "test")["ssp245"]
    np.testing.assert_array_equal(out["lon"].values, ref.truth("test")["ssp245"]["lon"].values)
    # end to end through the command line: the run completes and scores like the reference
    rc = main(["fit", "--config", str(CONFIG), "--data.data_dir", str(cb_copy), "--trainer.max_epochs", "2",
               "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false",
               "--evaluation.init_args.baselines", "[linear]", "--evaluation.init_args.make_figures", "false",
               "--data.val_scenarios", "[ssp126]"])
    assert rc == 0
    metrics = json.loads(next((tmp_path / "runs").rglob("metrics.json")).read_text())
    assert np.isfinite(metrics["tas"]["model"]["rmse"])
    # the predictions written back lie on the reference grid, in its longitude order, and score what metrics.json says
    with xr.open_dataset(next((tmp_path / "runs").rglob("test_predictions_ssp245.nc"))) as written:
        pred = written["tas"].sel(model="model").load()
    with xr.open_dataset(small_climatebench / "outputs_ssp245.nc") as ref_out:
        truth = ref_out["tas"].mean("member").load()
    np.testing.assert_array_equal(pred["lon"].values, truth["lon"].values)
    np.testing.assert_array_equal(pred["lat"].values, truth["lat"].values)
    assert float(rmse(pred, truth)) == pytest.approx(metrics["tas"]["model"]["rmse"], rel=1e-4)
    w = np.cos(np.deg2rad(truth["lat"].values))[None, :, None] * np.ones(truth.shape)
    err2 = (pred.transpose("time", "lat", "lon").values - truth.transpose("time", "lat", "lon").values) ** 2
    assert float(np.sqrt((w * err2).sum() / w.sum())) == pytest.approx(metrics["tas"]["model"]["rmse"], rel=1e-4)


def test_grid_that_differs_names_the_coordinate(cb_copy, tmp_path):
    path = cb_copy / "outputs_ssp126.nc"
    with xr.open_dataset(path) as ds:
        ds = ds.load()
    path.unlink()
    ds.assign_coords(lon=ds["lon"] + 15.0).to_netcdf(path)  # half a cell east
    with pytest.raises(DataError) as err:
        ClimateBenchDataModule(str(cb_copy)).setup()
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "lon values differ: lon[0] = 15 vs 0" in msg
    assert "ranges 15..345 vs 0..330" in msg


def test_land_mask_is_decompressed_once_per_machine(tmp_path, monkeypatch):
    """The package's mask takes seconds to decompress: the subsampled mask is kept in the cache folder."""
    from climateml import geography

    monkeypatch.setenv("CLIMATEML_CACHE_DIR", str(tmp_path))
    land = np.random.default_rng(0).random((30, 60)) > 0.7
    monkeypatch.setattr(geography, "_read_subsampled", lambda path, stride: (land, 90.0, -6.0, -180.0, 6.0))
    first = geography._source_mask.__wrapped__(4)
    assert len(list(tmp_path.glob("land_mask_stride4_*.npz"))) == 1

    def must_not_decompress(path, stride):
        raise AssertionError("the cached mask must be used")

    monkeypatch.setattr(geography, "_read_subsampled", must_not_decompress)
    second = geography._source_mask.__wrapped__(4)
    np.testing.assert_array_equal(second[0], land)
    assert second[1:] == first[1:] == (90.0, -6.0, -180.0, 6.0)
