"""TemperatureEmulator: a feed-forward network from yearly emissions to climate response maps."""

from __future__ import annotations

import torch
import torchmetrics
from torch import nn

from climateml.errors import ConfigError, check_fraction, check_positive
from climateml.models.base import ClimateTask
from climateml.models.blocks import mlp


class WeightedRMSE(torchmetrics.Metric):
    """Area-weighted RMSE over all samples of an epoch: sqrt(sum_n sum_c w_c e_nc^2 / N).

    Accumulated over the whole epoch (not a mean of batch RMSEs) and summed across processes under DDP.
    """

    full_state_update = False

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


class TemperatureEmulator(ClimateTask):
    """MLP emulator: physical inputs in, physical outputs out; standardisation lives in buffers.

    Trained with MSE on standardised targets; logs ``{stage}_loss`` and the area-weighted RMSE in
    physical units, ``{stage}_rmse_{target}``. Sizes, target names, training statistics (x_mean,
    x_std, y_mean, y_std) and grid weights (cell_weights) come from the data spec and are saved in the
    checkpoint, so a reloaded model predicts in physical units on its own.

    Args:
        hidden_sizes: widths of the hidden layers (each > 0).
        activation: relu, gelu, tanh, silu, elu or leaky_relu.
        dropout: dropout probability in [0, 1).
        batch_norm: BatchNorm1d after each hidden layer.
        **task_options: optimiser, learning rate and schedule (see :class:`ClimateTask`).
    """

    def __init__(self, spec=None, hidden_sizes: list[int] = [64, 64], activation: str = "relu",
                 dropout: float = 0.0, batch_norm: bool = False, **task_options):
        if any(int(h) <= 0 for h in hidden_sizes):
            raise ConfigError(f"model.hidden_sizes must all be > 0, got {list(hidden_sizes)}")
        check_fraction("model.dropout", dropout)
        self._arch = dict(hidden_sizes=list(hidden_sizes), activation=activation, dropout=dropout, batch_norm=batch_norm)
        super().__init__(spec, **task_options)

    @property
    def target_names(self) -> list[str]:
        return list(self.spec.outputs)

    def configure_models(self) -> None:
        n_in, n_out = self.spec.input_shape[0], self.spec.output_shape[0]
        if n_out % len(self.spec.outputs):
            raise ConfigError(f"{n_out} outputs are not a multiple of the {len(self.spec.outputs)} targets")
        self.net = mlp(n_in, n_out, **self._arch)

    def configure_metrics(self) -> None:
        self.rmse = nn.ModuleDict({f"{stage}_{t}": WeightedRMSE() for stage in ("train", "val", "test")
                                   for t in self.spec.outputs})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Physical inputs (batch, n_inputs) -> physical outputs (batch, n_outputs)."""
        return self.net((x - self.x_mean) / self.x_std) * self.y_std + self.y_mean

    def shared_step(self, batch: dict, stage: str) -> torch.Tensor:
        x, y = batch["x"], batch["y"]
        residual = self.net((x - self.x_mean) / self.x_std) - (y - self.y_mean) / self.y_std
        loss = residual.pow(2).mean()
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=stage != "test", batch_size=len(x))
        n_t = len(self.spec.outputs)
        squared = residual.detach().pow(2).view(len(x), n_t, -1)
        # sum_c w_c (r_c s_c)^2 = sum_c r_c^2 (w_c s_c^2): physical units via the weights, not another pass over the batch
        weights = self.cell_weights * self.y_std.view(n_t, -1) ** 2
        for i, t in enumerate(self.spec.outputs):
            metric = self.rmse[f"{stage}_{t}"]
            metric.update(squared[:, i], weights[i])
            self.log(f"{stage}_rmse_{t}", metric, on_step=False, on_epoch=True, prog_bar=stage == "val")
        return loss
