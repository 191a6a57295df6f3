"""A fourth task from the public base classes alone (README "Add a task"): next-frame regression of a gridded field
written as NetCDF, scored against persistence; fit, evaluation, predict and attribute through the `climateml` command
(the classes below are found by their class_path, `test_toy_task.<name>`: tests/ is on sys.path under pytest)."""

import json

import numpy as np
import torch
import torchmetrics
import xarray as xr
from torch import nn

from climateml.cli import main
from climateml.data.adapter import FieldLayout
from climateml.data.base import ClimateDataModule, DataSpec, TensorDictDataset
from climateml.data.normalize import Moments
from climateml.evaluation.base import Evaluation
from climateml.models.base import ClimateTask


class NextFrameData(ClimateDataModule):
    """x: the frame of ``variable`` at one time, y: the next frame; the first 60 % of the pairs train, 20 % validate."""

    def __init__(self, path: str = "", variable: str = "z", batch_size: int = 8):
        super().__init__(batch_size=batch_size)
        self.path, self.variable = path, variable

    def build(self) -> None:
        with xr.open_dataset(self.path) as ds:
            ds = ds.load()
        self._layout = FieldLayout.from_dataset(ds, [self.variable])
        frames, n = self._layout.to_tensor(ds), ds.sizes["time"] - 1
        cut = {"train": (0, int(0.6 * n)), "val": (int(0.6 * n), int(0.8 * n)), "test": (int(0.8 * n), n)}
        self.times = {k: (ds["time"].values[a:b], ds["time"].values[a + 1:b + 1]) for k, (a, b) in cut.items()}
        for k, (a, b) in cut.items():
            setattr(self, f"{k}_dataset", TensorDictDataset(x=frames[a:b], y=frames[a + 1:b + 1]))
        mean, std = Moments(1).add(self.train_dataset.tensors["x"], channel_axis=1).mean_std()
        self.statistics = {"x_mean": mean, "x_std": std}

    @property
    def spec(self) -> DataSpec:
        self.setup()
        shape = tuple(self.train_dataset.tensors["x"].shape[1:])
        return DataSpec([self.variable], [self.variable], shape, shape, dict(self.statistics))

    @property
    def layout(self) -> FieldLayout:
        self.setup()
        return self._layout

    def to_xarray(self, values, split: str) -> dict[str, xr.Dataset]:
        return self.batch_to_xarray(values, split, np.arange(len(values)))

    def batch_to_xarray(self, values, split: str, indices, batch=None) -> dict[str, xr.Dataset]:
        split = self.sample_split(split)  # the samples `indices` of the split (one batch), on the targets' times
        return {split: self.layout.to_xarray(values, self.times[split][1][np.asarray(indices)])}

    def batch_truth(self, batch, split: str, indices) -> dict[str, xr.Dataset]:
        return self.batch_to_xarray(batch["y"], split, indices)

    def truth(self, split: str) -> dict[str, xr.Dataset]:
        return self.to_xarray(self.dataset(self.sample_split(split)).tensors["y"], split)

    def inputs_xarray(self, split: str) -> xr.DataArray:
        return self.layout.to_dataarray(self.dataset(split).tensors["x"], self.times[self.sample_split(split)][0])


class NextFrame(ClimateTask):
    """Persistence plus a convolutional correction that starts at zero: the untrained model is the baseline."""

    def __init__(self, spec=None, width: int = 8, **task_options):
        super().__init__(spec, **task_options)
        self.width = width

    def configure_models(self) -> None:
        c = self.spec.input_shape[0]
        self.net = nn.Sequential(nn.Conv2d(c, self.width, 3, padding=1), nn.Tanh(), nn.Conv2d(self.width, c, 3, padding=1))
        for p in self.net[-1].parameters():  # the correction starts at zero
            nn.init.zeros_(p)

    def configure_metrics(self, stage: str) -> dict:
        return {"rmse": torchmetrics.MeanSquaredError(squared=False)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(self.standardize(x)) * self.x_std.view(-1, 1, 1)

    def shared_step(self, batch: dict, stage: str) -> torch.Tensor:
        pred = self(batch["x"])
        loss = nn.functional.mse_loss(self.standardize(pred), self.standardize(batch["y"]))
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, batch_size=len(pred))
        self.metrics(stage)["rmse"].update(pred, batch["y"])
        return loss


class NextFrameEvaluation(Evaluation):
    """The model against persistence (the last frame), batch by batch; the base's area-weighted RMSE, MAE, bias."""

    def batch_baselines(self, datamodule, batch, indices) -> dict:
        return {"persistence": datamodule.batch_to_xarray(batch["x"], self.split, indices)}


CONFIG = """seed_everything: 0
data: {{class_path: test_toy_task.NextFrameData, init_args: {{path: {data}}}}}
model: {{class_path: test_toy_task.NextFrame, init_args: {{lr: 0.01}}}}
evaluation: {{class_path: test_toy_task.NextFrameEvaluation, init_args: {{make_figures: false}}}}
trainer: {{max_epochs: 25, accelerator: cpu, enable_progress_bar: false, enable_model_summary: false,
  logger: {{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {{save_dir: {runs}, name: toy}}}},
  callbacks: [{{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: {{monitor: val_loss, filename: best}}}},
              climateml.callbacks.RestoreBestWeights]}}
"""


def test_a_toy_fourth_task_fits_evaluates_predicts_and_attributes(tmp_path):
    rng = np.random.default_rng(0)
    lat, lon = np.linspace(-50, 50, 6), np.arange(0, 360, 30.0)
    wave = np.sin(np.deg2rad(lon))[None, :] * np.cos(np.deg2rad(lat))[:, None]
    z = np.stack([np.roll(wave, t, axis=1) for t in range(60)]) + 0.05 * rng.standard_normal((60, 6, 12))
    time = np.arange("2000-01-01", 60, dtype="datetime64[D]")
    xr.Dataset({"z": (("time", "lat", "lon"), z.astype("f4"), {"units": "m"})},
               coords={"time": time, "lat": lat, "lon": lon}).to_netcdf(tmp_path / "z.nc")
    config = tmp_path / "toy.yaml"
    config.write_text(CONFIG.format(data=tmp_path / "z.nc", runs=tmp_path / "runs"))

    assert main(["fit", "--config", str(config)]) == 0
    run = tmp_path / "runs" / "toy" / "version_0"
    scores = json.loads((run / "metrics.json").read_text())
    assert set(scores["z"]) == {"model", "persistence"} and {"rmse", "mae", "bias"} <= set(scores["z"]["model"])
    # the wave moves one cell a step: a 3 x 3 correction learns it, persistence cannot
    assert scores["z"]["model"]["rmse"] < 0.5 * scores["z"]["persistence"]["rmse"]
    assert scores["verdict"]["z"][0]["best"] == "model"

    best = str(run / "checkpoints" / "best.ckpt")
    assert main(["predict", "--config", str(config), "--ckpt_path", best]) == 0
    written = xr.load_dataset(tmp_path / "runs" / "toy" / "version_1" / "predictions" / "predictions_test.nc")
    assert np.array_equal(written["lat"], lat) and np.array_equal(written["lon"], lon)  # the input's grid
    first = int(0.8 * 59)  # the first test pair of the 59 (frame t, frame t + 1)
    np.testing.assert_array_equal(written["time"], time[first + 1:])  # on the test targets' times
    model = NextFrame.load_from_checkpoint(best)  # hyperparameters and statistics from the checkpoint alone
    with torch.no_grad():
        expected = model(torch.as_tensor(z[first:59, None], dtype=torch.float32))[:, 0].numpy()
    np.testing.assert_allclose(written["z"].transpose("time", "lat", "lon").values, expected, rtol=1e-4, atol=1e-4)

    out = tmp_path / "attribution"
    assert main(["attribute", "--config", str(config), "--ckpt_path", best, "--method", "saliency",
                 "--target", "{kind: region_mean, index: z, lat: [-30, 30]}", "--n_samples", "3", "--no_scores", "--n_figures", "0", "--out", str(out)]) == 0
    maps = xr.load_dataset(out / "attribution_saliency_test.nc")["attribution_saliency"]
    assert maps.dims == ("time", "channel", "lat", "lon") and maps.sizes["time"] == 3
    np.testing.assert_array_equal(maps["time"], time[first:first + 3])  # the inputs' own times
    assert float(np.abs(maps).sum()) > 0
