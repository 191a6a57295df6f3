"""The rain transform of the nowcasting network: rain rate [mm/h] <-> standardised network values (log1p, dBR)."""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from climateml.data.normalize import Moments
from climateml.errors import DataError


class RainTransform(torch.nn.Module):
    """Rain rate [mm/h] <-> network space: ``(g(R) - mean) / std`` with g one of

    * ``"log1p"``: log(1 + R);
    * ``"dBR"``: 10 log10(R) for R >= ``threshold_mm_h``, ``zero_dbr`` below (default 5 dB under the
      threshold's dBR, as pysteps does), so dry pixels sit a clear gap below the lightest rain;
    * ``"none"``: R itself.

    ``mean`` / ``std`` are buffers (0 and 1 until :meth:`fit`), so they travel in the state_dict and the
    checkpoint. NaN passes through. Works on torch tensors and numpy arrays, returning the same type;
    :meth:`inverse` returns a non-negative rate.
    """

    KINDS = ("log1p", "dBR", "none")

    def __init__(self, kind: str = "log1p", threshold_mm_h: float = 0.1, zero_dbr: float | None = None):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        self.kind = kind
        self.threshold_mm_h = float(threshold_mm_h)
        self.threshold_dbr = 10.0 * float(np.log10(threshold_mm_h))
        self.zero_dbr = self.threshold_dbr - 5.0 if zero_dbr is None else float(zero_dbr)
        self.register_buffer("mean", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("std", torch.tensor(1.0, dtype=torch.float64))

    def _g(self, r: torch.Tensor) -> torch.Tensor:
        if self.kind == "log1p":
            return torch.log1p(r.clamp(min=0))
        if self.kind == "dBR":
            value = torch.where(r >= self.threshold_mm_h, 10.0 * torch.log10(r.clamp(min=self.threshold_mm_h)),
                                torch.full_like(r, self.zero_dbr))
            return torch.where(torch.isnan(r), r, value)
        return r

    def _g_inverse(self, v: torch.Tensor) -> torch.Tensor:
        if self.kind == "log1p":
            return torch.expm1(v).clamp(min=0)
        if self.kind == "dBR":
            return torch.where(v >= self.threshold_dbr, 10.0 ** (v / 10.0), torch.where(torch.isnan(v), v, 0 * v))
        return v.clamp(min=0)

    @staticmethod
    def _map(fn, x):
        if isinstance(x, torch.Tensor):
            return fn(x)
        array = np.asarray(x)
        return fn(torch.from_numpy(array)).numpy().astype(array.dtype, copy=False)

    def forward(self, rain):
        """Rain rate [mm/h] -> standardised network value."""
        return self._map(lambda r: (self._g(r) - self.mean.to(r.dtype)) / self.std.to(r.dtype), rain)

    def inverse(self, value):
        """Standardised network value -> rain rate [mm/h], >= 0."""
        return self._map(lambda v: self._g_inverse(v * self.std.to(v.dtype) + self.mean.to(v.dtype)), value)

    def moments(self, rain) -> Moments:
        """The :class:`~climateml.data.normalize.Moments` of g(R) over the finite values of ``rain`` [mm/h]: merge
        them over frames (``Moments.merge``) and pass the total to :meth:`fit_moments` to fit without holding all
        frames."""
        g = self._g(torch.as_tensor(np.asarray(rain) if not isinstance(rain, torch.Tensor) else rain,
                                    dtype=torch.float64))
        return Moments(1).add(g[~torch.isnan(g)].reshape(1, -1))

    @torch.no_grad()
    def fit_moments(self, moments: Moments) -> "RainTransform":
        """Set mean and std (population) of g(R) from merged :meth:`moments`."""
        mean = float(moments.mean[0]) if moments.count > 0 else float("nan")
        std = float(np.sqrt(moments.m2[0] / moments.count)) if moments.count > 0 else float("nan")
        if not np.isfinite(mean) or not std > 0:
            raise DataError(f"cannot fit the {self.kind} transform: mean {mean}, std {std} (no or constant data)")
        self.mean.fill_(mean)
        self.std.fill_(std)
        return self

    @torch.no_grad()
    def fit(self, rain) -> "RainTransform":
        """Set mean and std of g(R) over ``rain`` [mm/h] (NaN ignored): a tensor, an array, or a lazy
        DataArray, which is reduced frame by frame (chunk by chunk) without being loaded at once."""
        if isinstance(rain, xr.DataArray) and rain.chunks is not None:
            import dask  # noqa: PLC0415

            parts = rain.data.map_blocks(lambda a: self.moments(a).state()[None, None, None, :], dtype=np.float64,
                                         chunks=((1,) * len(rain.data.chunks[0]), (1,) * len(rain.data.chunks[1]),
                                                 (1,) * len(rain.data.chunks[2]), (3,)), new_axis=3)
            with dask.config.set(scheduler="synchronous"):
                states = parts.compute().reshape(-1, 3)
            total = Moments(1)
            for state in states:
                total.merge(state)
            return self.fit_moments(total)
        return self.fit_moments(self.moments(rain.values if isinstance(rain, xr.DataArray) else rain))

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, threshold_mm_h={self.threshold_mm_h}, mean={float(self.mean):.4g}, std={float(self.std):.4g}"
