"""Statistics fitted on training data only; the model stores them as buffers so checkpoints carry them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


class Moments:
    """Mean and standard deviation per channel, fitted in one pass over data that comes in pieces (files, batches):
    every task's input statistics are fitted with it, on training data only.

    Each piece's count, mean and sum of squared deviations are merged into the running ones in float64 (Chan et
    al.'s pairwise update), so the result does not depend on how the data is cut and stays exact when the mean is
    large against the spread. ``std`` is the population std (divides by N); a constant channel gets std 1, so
    standardising by it is a no-op instead of a division by zero.
    """

    def __init__(self, n_channels: int):
        self.count = 0.0
        self.mean = np.zeros(n_channels)
        self.m2 = np.zeros(n_channels)

    def add(self, values: np.ndarray | torch.Tensor, channel_axis: int = 0) -> "Moments":
        """Adds every value of ``values`` to its channel (the index along ``channel_axis``)."""
        v = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
        v = np.moveaxis(v.astype(np.float64, copy=False), channel_axis, 0).reshape(len(self.mean), -1)
        if v.shape[1] == 0:
            return self
        mean = v.mean(axis=1)
        return self.merge(np.concatenate([[v.shape[1]], mean, ((v - mean[:, None]) ** 2).sum(axis=1)]))

    def state(self) -> np.ndarray:
        """[count, mean per channel..., sum of squared deviations per channel...] (float64): a piece's moments as
        plain numbers, to keep per piece (e.g. per frame) and :meth:`merge` later."""
        return np.concatenate([[self.count], self.mean, self.m2])

    def merge(self, state: "np.ndarray | torch.Tensor | Moments") -> "Moments":
        """Adds a piece's moments (its :meth:`state`, or a Moments of as many channels) to the running ones."""
        state = state.state() if isinstance(state, Moments) else np.asarray(state, dtype=np.float64)
        c = len(self.mean)
        n, mean, m2 = float(state[0]), state[1:1 + c], state[1 + c:]
        if n == 0:
            return self
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta ** 2 * (self.count * n / total)
        self.count = total
        return self

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) per channel as float32 tensors; std 1 where a channel is constant."""
        std = np.sqrt(self.m2 / max(self.count, 1.0))
        return (torch.tensor(self.mean, dtype=torch.float32),
                torch.tensor(np.where(std > 0, std, 1.0), dtype=torch.float32))


@dataclass
class Standardization:
    """Per-input mean/std, and one mean/std per target variable broadcast over its grid cells."""

    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor, y: torch.Tensor, n_targets: int) -> "Standardization":
        """Fit on training tensors x (samples, inputs) and y (samples, n_targets * cells) (:class:`Moments`)."""
        x_mean, x_std = Moments(x.shape[1]).add(x, channel_axis=1).mean_std()
        groups = y.reshape(y.shape[0], n_targets, -1)
        y_mean, y_std = Moments(n_targets).add(groups, channel_axis=1).mean_std()
        cells = groups.shape[-1]
        return cls(x_mean=x_mean, x_std=x_std, y_mean=y_mean.repeat_interleave(cells),
                   y_std=y_std.repeat_interleave(cells))


def fit_pattern_scaling(co2: torch.Tensor, y: torch.Tensor, cell_weights: torch.Tensor,
                        n_targets: int) -> dict[str, torch.Tensor]:
    """Two-step linear pattern scaling fitted on training samples (Tebaldi & Arblaster 2014; ClimateBench).

    Step 1: each target's area-weighted global mean ``g_v = sum_c w_c y_vc`` (``cell_weights`` w summing to 1)
    is regressed on cumulative CO2 by least squares: ``g_v ~ a_v + b_v CO2``.
    Step 2: every cell is regressed on its variable's *true* training global mean: ``y_vc ~ alpha_vc + beta_vc g_v``.
    A prediction plugs step 1's global mean into step 2, so the map is affine in CO2:
    ``y_vc = (alpha_vc + beta_vc a_v) + beta_vc b_v CO2``.

    Args:
        co2: (samples,) cumulative CO2 of the training years.
        y: (samples, n_targets * cells) training targets, variables one after another.
        cell_weights: (cells,) area weights of one variable's grid, summing to 1.
        n_targets: number of target variables in ``y``.

    Returns float32 tensors: ``global_intercept``, ``global_slope`` (n_targets,) of step 1, ``cell_intercept``,
    ``cell_slope`` (n_outputs,) of step 2, and the combined ``intercept``, ``slope`` (n_outputs,) with
    ``prediction = intercept + slope * CO2``. A constant CO2 (or global mean) gives slope 0 and the mean.
    """
    co2 = co2.double().reshape(-1)
    n = len(co2)
    maps = y.double().reshape(n, n_targets, -1)
    w = cell_weights.double().reshape(-1)
    g = maps @ w                                                     # (samples, n_targets)

    def line(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Least-squares intercept and slope of t (samples, k) on x (samples, k), column by column."""
        xm, tm = x.mean(0), t.mean(0)
        var = ((x - xm) ** 2).mean(0)
        cov = ((x - xm) * (t - tm)).mean(0)
        slope = torch.where(var > 0, cov / torch.where(var > 0, var, torch.ones_like(var)), torch.zeros_like(var))
        return tm - slope * xm, slope

    a, b = line(co2[:, None].expand_as(g), g)                         # step 1, (n_targets,)
    alpha, beta = line(g[:, :, None].expand_as(maps), maps)           # step 2, (n_targets, cells)
    out = {"global_intercept": a, "global_slope": b, "cell_intercept": alpha.reshape(-1), "cell_slope": beta.reshape(-1),
           "intercept": (alpha + beta * a[:, None]).reshape(-1), "slope": (beta * b[:, None]).reshape(-1)}
    return {k: v.float() for k, v in out.items()}


#: how many leading modes of pattern scaling's training residuals the data module keeps for the emulator
MAX_RESIDUAL_MODES = 16


def residual_modes(residual: torch.Tensor, weights: torch.Tensor, n_modes: int = MAX_RESIDUAL_MODES) -> torch.Tensor:
    """Leading area-weighted EOFs of training residuals, as (n_modes, n_outputs) maps scaled so that unit-variance
    coefficients restore them: ``residual ~ c @ modes`` with each column of c of variance 1 over the samples.

    ``residual``: (samples, n_outputs), e.g. standardised targets minus pattern scaling; ``weights``: (n_outputs,)
    area weight of each output. The EOFs maximise the area-weighted variance (SVD of residual * sqrt(w)); the maps
    are regression patterns, computed without dividing by sqrt(w), so cells of weight 0 (rows at the poles) get
    their pattern too. Fewer modes come back when the residual has lower rank (at most min(samples, outputs)).
    """
    r = residual.double()
    r = r - r.mean(0)
    a = r * weights.double().clamp(min=0).sqrt()
    u, s, _ = torch.linalg.svd(a, full_matrices=False)
    keep = int(min(n_modes, int((s > s[0] * 1e-6).sum()) if len(s) and s[0] > 0 else 0))
    n = r.shape[0]
    return ((u[:, :keep].T @ r) / n ** 0.5).float()  # c = u * sqrt(n) has unit variance; c @ modes = projection
