"""TemperatureEmulator: a feed-forward network from yearly emissions to climate response maps."""

from __future__ import annotations

import numpy as np
import torch
import torchmetrics
from torch import nn

from climateml.errors import ConfigError, check_choice, check_fraction
from climateml.models.base import ClimateTask
from climateml.models.blocks import ACTIVATIONS, mlp


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
    physical units, ``{stage}_rmse_{target}``, once per epoch (validation and test: over the whole
    split). Sizes, target names, training statistics (x_mean, x_std, y_mean, y_std) and grid weights
    (cell_weights) come from the data spec and are saved in the checkpoint, so a reloaded model
    predicts in physical units on its own.

    The training step is kept lean (issue 9): the target is standardised in one fused pass, the squared
    errors come from one fused ``mse_loss(reduction="none")`` pass, the loss is their sum / count, and the
    area-weighted RMSE reuses them in one matrix-vector product; the epoch's sums are accumulated in a small buffer and logged once at the end
    of the epoch (summed across processes), instead of going through ``self.log`` and a torchmetrics
    update at every step. The logged numbers are the same: the epoch's sample-weighted mean loss and
    the area-weighted RMSE over all its samples.

    Args:
        hidden_sizes: widths of the hidden layers (each > 0; empty: a linear model).
        activation: relu, gelu, tanh, silu, elu or leaky_relu.
        dropout: dropout probability in [0, 1).
        batch_norm: BatchNorm1d after each hidden layer.
        **task_options: optimiser, learning rate and schedule (see :class:`ClimateTask`).
    """

    def __init__(self, spec=None, hidden_sizes: list[int] = [64, 64], activation: str = "relu",
                 dropout: float = 0.0, batch_norm: bool = False, **task_options):
        hidden_sizes = list(hidden_sizes)
        if any(isinstance(h, bool) or int(h) != h or int(h) <= 0 for h in hidden_sizes):
            raise ConfigError(f"model.hidden_sizes must be whole numbers > 0, got {hidden_sizes}")
        check_choice("model.activation", activation, sorted(ACTIVATIONS))
        check_fraction("model.dropout", dropout)
        self._arch = dict(hidden_sizes=[int(h) for h in hidden_sizes], activation=activation, dropout=dropout,
                          batch_norm=batch_norm)
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
        n_t = len(self.spec.outputs)
        self.rmse = nn.ModuleDict({f"{stage}_{t}": WeightedRMSE() for stage in ("val", "test") for t in self.spec.outputs})
        # training epoch sums: [area-weighted squared error per target (K^2) ..., loss x samples, samples]
        self.register_buffer("train_sums", torch.zeros(n_t + 2, dtype=torch.float64), persistent=False)
        self._validations = 0  # validation runs so far (a plateau schedule steps once per run, see lr_scheduler_step)
        self._plateau_steps = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Physical inputs (batch, n_inputs) -> physical outputs (batch, n_outputs)."""
        return self.net((x - self.x_mean) / self.x_std) * self.y_std + self.y_mean

    def _standardised(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(network output, target), both standardised, (batch, n_outputs).

        The target is standardised in one fused pass, y * (1 / y_std) - y_mean / y_std: on a batch of 64 maps
        of 13,824 cells every extra full-size temporary costs about as much as a layer (allocation, page faults).
        """
        x, y = batch["x"], batch["y"]
        inv_std, shift = self._target_scaling()
        target = torch.addcmul(shift, y, inv_std)
        return self.net((x - self.x_mean) / self.x_std), target

    def _target_scaling(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(1 / y_std, -y_mean / y_std), kept while training (the statistics do not change then)."""
        cached = self.__dict__.get("_scaling")
        if cached is not None and self.training and cached[0].device == self.y_std.device:
            return cached
        inv_std = 1.0 / self.y_std
        scaling = (inv_std, -self.y_mean * inv_std)
        self.__dict__["_scaling"] = scaling if self.training else None
        return scaling

    def _epoch_matrix(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(n_outputs, n_targets + 1): column t holds target t's area weights times its variance (zero elsewhere),
        the last column 1 / n_outputs. The batch's column sums of squared standardised errors times this matrix
        give, in one small product, each target's area-weighted squared error in physical units (K^2; sum_c w_c
        (r_c s_c)^2 = sum_c r_c^2 (w_c s_c^2)) and the loss times the batch size."""
        cached = self.__dict__.get("_matrix")
        if cached is not None and cached.device == self.y_std.device and cached.dtype == dtype:
            return cached
        n_t = len(self.spec.outputs)
        weights = (self.cell_weights.to(dtype) * self.y_std.to(dtype).view(n_t, -1) ** 2)  # (n_t, cells)
        cells = weights.shape[1]
        matrix = torch.zeros(n_t * cells, n_t + 1, dtype=weights.dtype, device=weights.device)
        for t in range(n_t):
            matrix[t * cells:(t + 1) * cells, t] = weights[t]
        matrix[:, n_t] = 1.0 / (n_t * cells)
        self.__dict__["_matrix"] = matrix
        return matrix

    def _squared_residual(self, batch: dict) -> torch.Tensor:
        """(batch, n_outputs) squared error in standardised units."""
        out, target = self._standardised(batch)
        return nn.functional.mse_loss(out, target, reduction="none")

    def _weighted_sq(self, squared: torch.Tensor) -> torch.Tensor:
        """(batch, n_targets) area-weighted squared error in physical units, from the standardised one.

        sum_c w_c (r_c s_c)^2 = sum_c r_c^2 (w_c s_c^2): the target std is folded into the weights, so this
        is one matrix-vector product per target and no second pass to de-standardise the batch.
        """
        n_t = len(self.spec.outputs)
        weights = self.cell_weights * self.y_std.view(n_t, -1) ** 2
        squared = squared.view(len(squared), n_t, -1)
        if n_t == 1:
            return (squared[:, 0] @ weights[0]).unsqueeze(1)
        return torch.einsum("ntc,tc->nt", squared, weights)

    def on_fit_start(self) -> None:
        """Check the training settings a user types that Lightning takes silently (one clear line each)."""
        from lightning.pytorch.callbacks import EarlyStopping

        for cb in self.trainer.callbacks:
            if isinstance(cb, EarlyStopping):
                if isinstance(cb.patience, bool) or not isinstance(cb.patience, int) or cb.patience < 1:
                    raise ConfigError(f"trainer.callbacks: EarlyStopping patience must be a whole number >= 1 "
                                      f"(validations without improvement), got {cb.patience}")
                given = float(cb.min_delta) * (1.0 if cb.monitor_op == torch.gt else -1.0)  # Lightning flips it for "min"
                if not (np.isfinite(given) and given >= 0):
                    raise ConfigError(f"trainer.callbacks: EarlyStopping min_delta must be >= 0, got {given:g}")

    # ---- training: accumulate, log once per epoch ----
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out, target = self._standardised(batch)
        squared = nn.functional.mse_loss(out, target, reduction="none")  # (batch, n_outputs), one fused pass
        # the mean, as sum / count: the backward of a sum is a free broadcast, that of a mean a full-size division
        loss = squared.sum() * (1.0 / squared.numel())
        # the epoch's sums from the same squared errors: one pass and one small product, in full precision also
        # under mixed precision (autocast would run the product in bf16/fp16, where a small variance underflows)
        with torch.no_grad(), torch.autocast(squared.device.type, enabled=False):
            sq = squared.detach()
            if sq.dtype in (torch.float16, torch.bfloat16):
                sq = sq.float()
            self.train_sums[:-1] += sq.sum(0) @ self._epoch_matrix(sq.dtype)
            self.train_sums[-1] += len(squared)
        return loss

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        """A dict of tensors moves key by key (``Tensor.to`` is free when it is already there), instead of
        Lightning's generic traversal of any collection at every step."""
        if isinstance(batch, dict) and all(isinstance(v, torch.Tensor) for v in batch.values()):
            return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_train_epoch_start(self) -> None:
        self.train_sums.zero_()
        for key in ("_scaling", "_matrix"):  # statistics may have been loaded since: recompute once
            self.__dict__.pop(key, None)

    def on_train_epoch_end(self) -> None:
        sums = self.trainer.strategy.reduce(self.train_sums.clone(), reduce_op="sum")  # all processes under DDP
        n = sums[-1].clamp(min=1)
        self.log("train_loss", (sums[-2] / n).float(), prog_bar=True, sync_dist=False)  # already summed over processes
        for i, t in enumerate(self.spec.outputs):
            self.log(f"train_rmse_{t}", torch.sqrt(sums[i] / n).float(), sync_dist=False)
        super().on_train_epoch_end()

    # ---- validation and test: torchmetrics over the whole split ----
    def shared_step(self, batch: dict, stage: str) -> torch.Tensor:
        squared = self._squared_residual(batch)
        loss = squared.mean()
        n = len(squared)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=stage != "test", batch_size=n)
        weighted = self._weighted_sq(squared)
        for i, t in enumerate(self.spec.outputs):
            metric = self.rmse[f"{stage}_{t}"]
            # already weighted per sample: the metric's weight vector is a single 1
            metric.update(weighted[:, i:i + 1], torch.ones(1, dtype=weighted.dtype, device=weighted.device))
            self.log(f"{stage}_rmse_{t}", metric, on_step=False, on_epoch=True, prog_bar=stage == "val")
        return loss

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._validations += 1

    def configure_optimizers(self):
        config = super().configure_optimizers()
        scheduler = config.get("lr_scheduler", {}) if isinstance(config, dict) else {}
        if isinstance(scheduler.get("scheduler"), torch.optim.lr_scheduler.ReduceLROnPlateau):
            # with validation every N steps an epoch can end before the first validation: skip, do not fail
            scheduler["strict"] = False
        return config

    def lr_scheduler_step(self, scheduler, metric) -> None:
        """Step a plateau schedule once per validation run, however often Lightning asks.

        Lightning steps an epoch-interval ReduceLROnPlateau at every epoch end; when validation runs every
        N optimiser steps (``check_val_every_n_epoch: null``) a small data set has several epochs per
        validation, and the schedule would count the same validation loss as several non-improvements.
        """
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if self._plateau_steps >= self._validations:
                return
            self._plateau_steps = self._validations
        super().lr_scheduler_step(scheduler, metric)

    # the plateau counters travel in the checkpoint: a resumed run (the CLI resumes from one) carries on with the
    # interrupted run's counts, so a validation saved before the schedule had stepped for it is still stepped for
    # (the monitored value itself and the step Lightning skips after a resume: ClimateTask)
    PLATEAU_COUNTERS_KEY = "temperature_plateau_counters"

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[self.PLATEAU_COUNTERS_KEY] = {"validations": int(self._validations),
                                                 "plateau_steps": int(self._plateau_steps)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the plateau counters; a checkpoint written before they were saved starts them at 0."""
        super().on_load_checkpoint(checkpoint)
        counters = checkpoint.get(self.PLATEAU_COUNTERS_KEY) or {}
        self._validations = int(counters.get("validations", 0))
        self._plateau_steps = int(counters.get("plateau_steps", 0))
