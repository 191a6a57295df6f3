"""Statistics fitted on training data only; the model stores them as buffers so checkpoints carry them."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Standardization:
    """Per-input mean/std, and one mean/std per target variable broadcast over its grid cells."""

    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor, y: torch.Tensor, n_targets: int) -> "Standardization":
        """Fit on training tensors x (samples, inputs) and y (samples, n_targets * cells)."""
        x_std = x.std(dim=0, unbiased=False)
        groups = y.reshape(y.shape[0], n_targets, -1)
        y_mean = groups.mean(dim=(0, 2))
        y_std = groups.std(dim=(0, 2), unbiased=False)
        cells = groups.shape[-1]
        return cls(
            x_mean=x.mean(dim=0),
            x_std=torch.where(x_std > 0, x_std, torch.ones_like(x_std)),
            y_mean=y_mean.repeat_interleave(cells),
            y_std=torch.where(y_std > 0, y_std, torch.ones_like(y_std)).repeat_interleave(cells),
        )
