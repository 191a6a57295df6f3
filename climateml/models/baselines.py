"""Reference models that every learned model is compared against."""

from __future__ import annotations

import torch
from torch import nn


class LinearRegression(nn.Module):
    """Ordinary least squares from standardised inputs (plus intercept) to every output; physical units."""

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
