"""Attribution baselines: the reference input of path methods (integrated gradients, DeepLift, occlusion, gradient
SHAP). The default is the training climatology the model carries; a zeros baseline warns where zero is no
physical state of a channel (absolute temperature, pressure, geopotential).
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from torch import nn

from climateml.attribution.adapter import input_layout, stacked
from climateml.data.adapter import FieldLayout
from climateml.errors import ConfigError, DataError


#: variable names (lower case) whose zero is no physical state: absolute temperature [K], pressure [Pa] and
#: geopotential [m2 s-2] or geopotential height [m] (CMIP / CF, ERA5 and CAM5 / ClimateNet spellings)
UNPHYSICAL_ZERO_NAMES = {
    "temperature": re.compile(r"^(t|ta|tas|tasmax|tasmin|ts|t2m?|skt|sst|trefht|tbot|t\d+|air_temperature)$"),
    "pressure": re.compile(r"^(p|ps|psl|msl|mslp|slp|sp|pres|pressure|pbot|air_pressure)$"),
    "geopotential": re.compile(r"^(z|zg|phi|phis|zbot|z\d+|gh|geopotential)$"),
}
#: units whose zero is no physical state (spelled without blanks, '**' or '^', lower case)
UNPHYSICAL_ZERO_UNITS = {"k": "temperature", "degk": "temperature", "kelvin": "temperature",
                         "pa": "pressure", "hpa": "pressure", "kpa": "pressure", "mbar": "pressure",
                         "millibar": "pressure", "bar": "pressure", "atm": "pressure",
                         "m2s-2": "geopotential", "m2/s2": "geopotential", "gpm": "geopotential"}


def _zero_kind(name: str, attrs: Mapping[str, Any]) -> str | None:
    """"temperature", "pressure" or "geopotential" when 0 in this variable's units is no physical state, from its
    ``standard_name``, ``units`` and name; None for anomalies (``anomaly`` in its names) and other quantities."""
    names = " ".join(str(attrs.get(k, "")) for k in ("standard_name", "long_name")).lower()
    if "anomal" in names or "anomal" in name.lower():
        return None
    std = str(attrs.get("standard_name", "")).lower()
    for kind in ("geopotential", "pressure", "temperature"):
        if kind in std:
            return kind
    units = str(attrs.get("units", "")).lower().replace(" ", "").replace("**", "").replace("^", "")
    if units in UNPHYSICAL_ZERO_UNITS:
        return UNPHYSICAL_ZERO_UNITS[units]
    return next((k for k, pattern in UNPHYSICAL_ZERO_NAMES.items() if pattern.match(name.lower())), None)


def unphysical_zero_channels(x: xr.DataArray | xr.Dataset, variables: Sequence[str] | None = None
                             ) -> list[tuple[str, str, float]]:
    """(name, kind, distance) of each input channel whose zero is no physical state (:func:`_zero_kind`):
    ``distance`` is how far 0 lies from the channel's mean over the input, in its standard deviations."""
    layout = input_layout(x, variables)
    return _unphysical_zeros(layout, layout.stack(x))


def _unphysical_zeros(layout: FieldLayout, xs: xr.DataArray) -> list[tuple[str, str, float]]:
    values = np.asarray(xs.values, dtype=np.float32)
    if layout.stacked:
        channels = [(v, layout.attrs.get(v, {}), i) for i, v in enumerate(layout.variables)]
    elif xs.ndim > 1 and xs.dims[1] in xs.coords and all(isinstance(v, str) for v in np.asarray(xs[xs.dims[1]].values).tolist()):
        channels = [(str(v), dict(xs.attrs) if xs.shape[1] == 1 else {}, i) for i, v in enumerate(xs[xs.dims[1]].values)]
    else:
        channels = [(str(xs.name or "input"), dict(xs.attrs), None)]
    out = []
    for name, attrs, i in channels:
        kind = _zero_kind(name, attrs)
        if kind is None:
            continue
        v = values if i is None else values[:, i]
        std = float(v.std()) or 1.0
        out.append((name, kind, abs(float(v.mean())) / std))
    return out


def _warn_zeros(layout: FieldLayout, xs: xr.DataArray) -> None:
    """One warning line when a zeros baseline is no physical state of some channel."""
    bad = _unphysical_zeros(layout, xs)
    if bad:
        which = ", ".join(f"{n} ({k}, 0 lies {d:.0f} std from its mean)" for n, k, d in bad)
        warnings.warn(f"baseline 'zeros' is no physical state of {which}: path methods then measure the distance "
                      "from an impossible input, not what the model uses; leave the baseline at its default, the "
                      "training climatology", UserWarning, stacklevel=4)


def training_climatology(model: nn.Module, per_sample_shape: Sequence[int]) -> np.ndarray | None:
    """The training climatology of the model's inputs, shaped (1, *per_sample_shape), in the input's units; None
    if the model carries none.

    Taken from ``model.input_climatology()`` when the model defines it (a tensor that broadcasts to one
    sample, e.g. the nowcasting model's rain rate at its training mean), else from the training mean the
    model standardises with (its ``x_mean`` buffer, fitted on training data by the DataModule and saved in
    the checkpoint): one value per channel (axis 1 of the input), or one per cell when it has a sample's
    full shape. Either way it is zero in the model's standardised space.
    """
    shape = tuple(int(s) for s in per_sample_shape)
    fn = getattr(model, "input_climatology", None)
    mean = fn() if callable(fn) else getattr(model, "x_mean", None)
    if not isinstance(mean, torch.Tensor):
        return None
    m = mean.detach().float().cpu().numpy()
    if m.size == int(np.prod(shape)):
        return m.reshape(1, *shape)
    if shape and m.size == shape[0]:
        return np.broadcast_to(m.reshape(1, shape[0], *([1] * (len(shape) - 1))), (1, *shape)).copy()
    return None


#: descriptions of the default baseline stored in the maps' ``baseline`` attribute
TRAINING_CLIMATOLOGY = "training climatology (the training mean the model standardises with; 0 in its standardised space)"
SAMPLE_CLIMATOLOGY = "climatology of the input (mean over its {n} samples; the model carries no training mean)"


def default_baseline(model: nn.Module, xs: xr.DataArray) -> tuple[np.ndarray, str]:
    """(values (1, ...), description) of the default baseline of the stacked input ``xs``: the training climatology
    the model carries (:func:`training_climatology`), else the mean over the input's samples at every cell."""
    clim = training_climatology(model, xs.shape[1:])
    if clim is not None:
        return clim.astype(np.float32), TRAINING_CLIMATOLOGY
    return np.asarray(xs.values, dtype=np.float32).mean(axis=0, keepdims=True), SAMPLE_CLIMATOLOGY.format(n=xs.shape[0])


def baseline_array(baseline: Any, layout: FieldLayout, x: xr.DataArray, method: str, max_baselines: int, seed: int,
                   model: nn.Module) -> tuple[np.ndarray | float, str]:
    """(values, description) of ``baseline`` for the stacked input ``x`` of ``layout``: a float, an array (1, ...)
    broadcast over samples, (n, ...) one per sample, or for gradient SHAP a distribution (m, ...)."""
    n = x.shape[0]
    if baseline is None:
        if method == "gradient_shap":
            idx = np.random.default_rng(seed).permutation(n)[:max_baselines]
            values = np.asarray(x.values, dtype=np.float32)
            return values[np.sort(idx)], f"{min(n, max_baselines)} input samples (the input's distribution)"
        return default_baseline(model, x)
    if isinstance(baseline, str):
        if baseline == "zeros":
            _warn_zeros(layout, x)
            return 0.0, "zeros"
        if baseline == "climatology":
            return default_baseline(model, x)
        if baseline == "sample_mean":
            return np.asarray(x.values, dtype=np.float32).mean(axis=0, keepdims=True), f"mean over the input's {n} samples"
        raise ConfigError(f"baseline must be 'climatology', 'sample_mean', 'zeros', a number or an array/xarray, "
                          f"got {baseline!r}")
    if isinstance(baseline, (int, float, np.integer, np.floating)):
        if float(baseline) == 0.0:
            _warn_zeros(layout, x)
        return float(baseline), f"constant {float(baseline):g}"
    if isinstance(baseline, (xr.DataArray, xr.Dataset)):
        b = stacked(baseline, layout.variables) if isinstance(baseline, xr.Dataset) else baseline
        sample = layout.sample_dim
        field_dims = list(x.dims[1:])
        if sample in b.dims:
            if set(b.dims) != set(x.dims):
                raise DataError(f"baseline dims {tuple(b.dims)} do not match the input's {tuple(x.dims)}")
            b = b.transpose(*x.dims)
            if method != "gradient_shap" and b.shape[0] not in (1, n):
                raise DataError(f"baseline has {b.shape[0]} samples, the input {n} (give one, one per sample, or none)")
            desc = "given baseline per sample" if method != "gradient_shap" else f"{b.shape[0]} given baseline samples"
        else:
            if set(b.dims) != set(field_dims):
                raise DataError(f"baseline dims {tuple(b.dims)} do not match the input's field dims {tuple(field_dims)}")
            b = b.transpose(*field_dims).expand_dims({sample: 1})
            desc = "given baseline field"
        for d in field_dims:
            if d in b.coords and d in x.coords and b[d].shape == x[d].shape and not np.array_equal(b[d].values, x[d].values):
                raise DataError(f"baseline {d!r} coordinate does not match the input's")
        return np.asarray(b.values, dtype=np.float32), desc
    arr = np.asarray(baseline.detach().cpu() if isinstance(baseline, torch.Tensor) else baseline, dtype=np.float32)
    if arr.shape == tuple(x.shape[1:]):
        arr = arr[None]
    if arr.shape[1:] != tuple(x.shape[1:]) or (method != "gradient_shap" and arr.shape[0] not in (1, n)):
        raise DataError(f"baseline of shape {arr.shape} does not fit the input's {tuple(x.shape)}")
    return arr, "given baseline array"
