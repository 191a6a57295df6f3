"""Reference models that every learned model is compared against."""

from __future__ import annotations

import torch
from torch import nn

from climateml.data.normalize import fit_pattern_scaling


class LinearRegression(nn.Module):
    """Multiple linear regression on the inputs: ordinary least squares from every standardised input (plus an
    intercept) to every output, in physical units (``linear_baseline`` in metrics.json). Not pattern scaling:
    it fits every input at once, cell by cell, with no global-mean step (see :class:`PatternScaling`)."""

    def __init__(self, n_inputs: int, n_outputs: int):
        super().__init__()
        self.register_buffer("x_mean", torch.zeros(n_inputs))
        self.register_buffer("x_std", torch.ones(n_inputs))
        self.register_buffer("coef", torch.zeros(n_inputs + 1, n_outputs))

    @classmethod
    def fit(cls, x: torch.Tensor, y: torch.Tensor) -> "LinearRegression":
        model = cls(x.shape[1], y.shape[1])
        model.x_mean.copy_(x.mean(0))
        std = x.std(0, unbiased=False)
        model.x_std.copy_(torch.where(std > 0, std, torch.ones_like(std)))
        design = model._design(x).double()
        model.coef.copy_(torch.linalg.lstsq(design, y.double(), driver="gelsd").solution.float())
        return model

    def _design(self, x: torch.Tensor) -> torch.Tensor:
        xn = (x - self.x_mean) / self.x_std
        return torch.cat([torch.ones(len(x), 1, dtype=xn.dtype, device=xn.device), xn], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._design(x) @ self.coef


class PatternScaling(nn.Module):
    """Two-step linear pattern scaling, the field's linear baseline (``pattern_scaling`` in metrics.json).

    Step 1: the area-weighted global mean of each target is linear in cumulative CO2; step 2: every cell is
    linear in its variable's global mean; both fitted by least squares on the training years only (see
    :func:`climateml.data.normalize.fit_pattern_scaling`). It works for any target (``tas``,
    ``diurnal_temperature_range``, ``pr``, ``pr90``), each scaled with its own global mean.

    The method: Tebaldi & Arblaster (2014, Climatic Change, doi:10.1007/s10584-013-1032-9) for pattern
    scaling ("Pattern scaling: its strengths and limitations ..."); ClimateBench's linear pattern-scaling
    baseline (Watson-Parris et al. 2022, JAMES, doi:10.1029/2021MS002954); Lütjens et al. (2024, "Climate
    emulation: linear pattern scaling beats deep learning", on ClimateBench), who find it hard to beat for tas.

    The coefficients are buffers, so the module is saved and reloaded like any other; ``forward`` maps inputs
    (samples, n_inputs) in physical units to outputs (samples, n_outputs): ``intercept + slope * CO2``.
    """

    def __init__(self, n_inputs: int, n_outputs: int, n_targets: int = 1, co2_index: int = 0):
        super().__init__()
        if not 0 <= co2_index < n_inputs:
            raise ValueError(f"co2_index {co2_index} is not one of the {n_inputs} inputs")
        self.co2_index = int(co2_index)
        for name, size in (("global_intercept", n_targets), ("global_slope", n_targets), ("cell_intercept", n_outputs),
                           ("cell_slope", n_outputs), ("intercept", n_outputs), ("slope", n_outputs)):
            self.register_buffer(name, torch.zeros(size))

    @classmethod
    def fit(cls, x: torch.Tensor, y: torch.Tensor, cell_weights: torch.Tensor, n_targets: int = 1,
            co2_index: int = 0) -> "PatternScaling":
        """Fit on training x (samples, n_inputs; column ``co2_index`` is cumulative CO2) and y (samples,
        n_targets * cells), with the (cells,) area weights of one variable's grid (summing to 1)."""
        model = cls(x.shape[1], y.shape[1], n_targets, co2_index)
        for name, value in fit_pattern_scaling(x[:, co2_index], y, cell_weights, n_targets).items():
            getattr(model, name).copy_(value)
        return model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.intercept, x[:, self.co2_index:self.co2_index + 1], self.slope)
