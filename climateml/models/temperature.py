"""TemperatureEmulator: a feed-forward network from yearly emissions to climate response maps."""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
import torchmetrics
from torch import nn

from climateml.models.mlp import mlp

SCHEDULERS = ("none", "plateau", "cosine", "step", "onecycle")


class WeightedRMSE(torchmetrics.Metric):
    """Area-weighted RMSE over all samples of an epoch: sqrt(sum_n sum_c w_c e_nc^2 / N)."""

    def __init__(self):
        super().__init__()
        self.add_state("sq", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, squared_error: torch.Tensor, weights: torch.Tensor) -> None:
        """Adds sum_c weights_c * squared_error_nc per sample n; with area weights summing to 1 this is the weighted MSE."""
        self.sq += (squared_error @ weights).sum().double()
        self.n += squared_error.shape[0]

    def compute(self) -> torch.Tensor:
        return torch.sqrt(self.sq / self.n)


class TemperatureEmulator(L.LightningModule):
    """MLP emulator: physical inputs in, physical outputs out; standardisation lives in buffers.

    Trained with MSE on standardised targets; logs ``{stage}_loss`` and the area-weighted RMSE in
    physical units, ``{stage}_rmse_{target}``. The data module's sizes, target names, training
    statistics and grid weights reach the model through LightningCLI links and ``setup``; all of
    them are saved in the checkpoint, so a reloaded model predicts in physical units on its own.

    Args:
        lr_scheduler: "none", "plateau" (ReduceLROnPlateau on val_loss), "cosine", "step" or
            "onecycle"; ``lr_scheduler_options`` are passed to the torch scheduler.
    """

    def __init__(
        self,
        n_inputs: int = 2,
        n_outputs: int = 96 * 144,
        target_names: list[str] = ["tas"],
        hidden_sizes: list[int] = [64, 64],
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam",
        lr_scheduler: Literal["none", "plateau", "cosine", "step", "onecycle"] = "none",
        lr_scheduler_options: dict = {},
    ):
        super().__init__()
        if lr_scheduler not in SCHEDULERS:
            raise ValueError(f"lr_scheduler must be one of {SCHEDULERS}, got {lr_scheduler!r}")
        if n_outputs % len(target_names):
            raise ValueError(f"n_outputs={n_outputs} is not a multiple of the {len(target_names)} targets")
        self.save_hyperparameters()
        self.net = mlp(n_inputs, n_outputs, hidden_sizes, activation, dropout, batch_norm)
        cells = n_outputs // len(target_names)
        self.register_buffer("x_mean", torch.zeros(n_inputs))
        self.register_buffer("x_std", torch.ones(n_inputs))
        self.register_buffer("y_mean", torch.zeros(n_outputs))
        self.register_buffer("y_std", torch.ones(n_outputs))
        self.register_buffer("cell_weights", torch.full((cells,), 1.0 / cells))
        self.rmse = nn.ModuleDict({f"{stage}_{t}": WeightedRMSE() for stage in ("train", "val", "test") for t in target_names})

    def setup(self, stage: str) -> None:
        """Take training statistics and grid weights from the data module (fit only: reloads keep theirs)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage != "fit" or dm is None or not hasattr(dm, "normalization"):
            return
        dm.setup(stage)
        self.set_normalization(dm.normalization, dm.area_weights)

    def set_normalization(self, norm, cell_weights: torch.Tensor | None = None) -> None:
        for name in ("x_mean", "x_std", "y_mean", "y_std"):
            getattr(self, name).copy_(getattr(norm, name))
        if cell_weights is not None:
            self.cell_weights.copy_(cell_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Physical inputs (batch, n_inputs) -> physical outputs (batch, n_outputs)."""
        return self.net((x - self.x_mean) / self.x_std) * self.y_std + self.y_mean

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        residual = self.net((x - self.x_mean) / self.x_std) - (y - self.y_mean) / self.y_std
        loss = residual.pow(2).mean()
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=stage != "test", batch_size=len(x))
        n_t = len(self.hparams.target_names)
        squared = residual.detach().pow(2).view(len(x), n_t, -1)
        # sum_c w_c (r_c s_c)^2 = sum_c r_c^2 (w_c s_c^2): physical units via the weights, not another pass over the batch
        weights = self.cell_weights * self.y_std.view(n_t, -1) ** 2
        for i, t in enumerate(self.hparams.target_names):
            metric = self.rmse[f"{stage}_{t}"]
            metric.update(squared[:, i], weights[i])
            self.log(f"{stage}_rmse_{t}", metric, on_step=False, on_epoch=True, prog_bar=stage == "val")
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(batch[0])

    def configure_optimizers(self):
        hp = self.hparams
        optimizers = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
                      "rmsprop": torch.optim.RMSprop}
        opt = optimizers[hp.optimizer](self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        kw = dict(hp.lr_scheduler_options)
        if hp.lr_scheduler == "none":
            return opt
        if hp.lr_scheduler == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", **{"factor": 0.5, "patience": 5, **kw})
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss"}}
        if hp.lr_scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, **{"T_max": self.trainer.max_epochs, **kw})
        elif hp.lr_scheduler == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, **{"step_size": 10, "gamma": 0.5, **kw})
        else:
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, **{"max_lr": hp.lr * 10, "total_steps": int(self.trainer.estimated_stepping_batches), **kw})
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
