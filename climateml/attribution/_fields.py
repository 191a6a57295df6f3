"""Spatially correlated random fields: the raw material of the synthetic benchmarks (fidelity, confounded data).

A field is white noise filtered in Fourier space and scaled to unit standard deviation, so neighbouring
cells are correlated like anomalies of a climate variable; the field is periodic. The default filter has
a red, power-law spectrum (amplitude 1 / (1 + (2 pi L k)^2), k in cycles per cell; a Matern-like
covariance that decays over about ``L`` cells) with some variance left at every scale, as anomaly fields
have; ``kind="gaussian"`` (amplitude exp(-2 (pi L k)^2)) makes fields so smooth that small scales carry
almost no variance.
"""

from __future__ import annotations

import numpy as np


def correlated_fields(n: int, shape: tuple[int, int], length_scale: float, rng: np.random.Generator,
                      kind: str = "matern", dtype=np.float32) -> np.ndarray:
    """``n`` random fields of ``shape`` (ny, nx) with Gaussian spatial correlation, mean 0 and std 1.

    Args:
        n: number of fields (samples).
        shape: (ny, nx) grid cells.
        length_scale: correlation length in grid cells (0 gives white noise).
        rng: the numpy random generator (the only source of randomness, so results are reproducible).
        kind: "matern" (red power-law spectrum) or "gaussian" (very smooth).
    """
    ny, nx = shape
    noise = rng.standard_normal((n, ny, nx))
    if length_scale > 0:
        ky = np.fft.fftfreq(ny)[:, None]
        kx = np.fft.rfftfreq(nx)[None, :]
        k2 = kx**2 + ky**2
        if kind == "gaussian":
            kernel = np.exp(-2.0 * (np.pi * length_scale) ** 2 * k2)
        elif kind == "matern":
            kernel = 1.0 / (1.0 + (2.0 * np.pi * length_scale) ** 2 * k2)
        else:
            raise ValueError(f"correlated_fields kind must be 'matern' or 'gaussian', got {kind!r}")
        noise = np.fft.irfft2(np.fft.rfft2(noise, axes=(1, 2)) * kernel, s=(ny, nx), axes=(1, 2))
    noise /= noise.std()
    return noise.astype(dtype)
