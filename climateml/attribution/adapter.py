"""xarray <-> tensors for attribution, through the one adapter :class:`~climateml.data.adapter.FieldLayout`.

The input is an ``xarray.DataArray`` with the sample dim first, e.g. (sample, feature), (time, input),
(sample, channel, lat, lon) or (sample, time, y, x), or a ``Dataset`` of input variables sharing their
dims, stacked as channels (dim ``variable``, in the model's input order). The model sees exactly
``x.values`` as a float32 tensor (stacked variables for a Dataset: :meth:`FieldLayout.stack`), and numbers of
that shape come back with exactly ``x``'s dims, coordinates and variables (:meth:`FieldLayout.unstack`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import xarray as xr
from torch import nn

from climateml.data.adapter import FieldLayout
from climateml.errors import DataError
from climateml.grid import coord_mismatch


def input_layout(x: xr.DataArray | xr.Dataset, variables: Sequence[str] | None = None,
                 model: nn.Module | None = None) -> FieldLayout:
    """The :class:`~climateml.data.adapter.FieldLayout` of the input ``x`` (:meth:`FieldLayout.from_xarray`); a
    Dataset's variables are taken in the order of ``variables``, else of the model's ``spec.inputs`` when it names
    them all, else of the Dataset. ``variables`` is ignored for a DataArray."""
    if isinstance(x, xr.Dataset) and variables is None:
        spec_inputs = list(getattr(getattr(model, "spec", None), "inputs", None) or [])
        variables = spec_inputs if spec_inputs and all(v in x.data_vars for v in spec_inputs) else None
    return FieldLayout.from_xarray(x, None if isinstance(x, xr.DataArray) else variables)


def stacked(x: xr.DataArray | xr.Dataset, variables: Sequence[str] | None = None,
            model: nn.Module | None = None) -> xr.DataArray:
    """``x`` as the model sees it: one DataArray (sample, [variable], ...) with ``x``'s coordinates."""
    return input_layout(x, variables, model).stack(x)


def input_values(x: xr.DataArray | xr.Dataset, variables: Sequence[str] | None = None,
                 model: nn.Module | None = None) -> np.ndarray:
    """The numbers the model sees for ``x``: float32 (sample, [variable], ...)."""
    return np.asarray(stacked(x, variables, model).values, dtype=np.float32)


def check_input(model: nn.Module, x: xr.DataArray, expected_coords: Mapping[str, Any] | None = None) -> None:
    """DataError unless the input fits the model: per-sample shape and channel names against the model's
    ``spec`` (a :class:`~climateml.data.base.DataSpec`, when it has one), coordinates against
    ``expected_coords`` (or ``spec.options["coords"]``). ``x``: the input stacked (:func:`stacked`)."""
    spec = getattr(model, "spec", None)
    per_sample = tuple(x.shape[1:])
    dims = ", ".join(map(str, x.dims[1:]))
    if spec is not None and getattr(spec, "input_shape", None):
        # the channel axis must match; a fully convolutional model may take other grid sizes (the trial
        # forward pass then tells whether it can)
        expected = tuple(int(v) for v in spec.input_shape)
        if len(per_sample) != len(expected) or per_sample[:1] != expected[:1]:
            raise DataError(f"input has shape {per_sample} per sample ({dims}), but {type(model).__name__} expects "
                            f"{expected} (its data spec); inputs {list(spec.inputs)}")
        names = list(getattr(spec, "inputs", []) or [])
        if x.ndim > 1 and len(names) == x.shape[1] and x.dims[1] in x.coords:
            have = np.asarray(x[x.dims[1]].values).tolist()
            if all(isinstance(v, str) for v in have) and have != names:
                raise DataError(f"input {x.dims[1]!r} coordinate {have} does not match {type(model).__name__}'s inputs {names}")
    coords = dict(expected_coords or (getattr(spec, "options", {}) or {}).get("coords", {}) or {})
    for dim, values in coords.items():
        if dim not in x.dims:
            raise DataError(f"input has no {dim!r} dim, which the model expects (input dims {tuple(x.dims)})")
        have, want = np.asarray(x[dim].values), np.asarray(values)
        same = have.shape == want.shape and (coord_mismatch(have, want) is None if np.issubdtype(have.dtype, np.number) and
                                              np.issubdtype(want.dtype, np.number) else np.array_equal(have, want))
        if not same:
            raise DataError(f"input {dim!r} coordinate ({have.size} values, {have.min() if have.size else ''}.."
                            f"{have.max() if have.size else ''}) does not match the model's ({want.size} values)")


def first_samples(x: xr.DataArray | xr.Dataset, n: int) -> xr.DataArray | xr.Dataset:
    """The first ``n`` samples of an input or of its maps (the sample dim first)."""
    return x.isel({FieldLayout.from_xarray(x).sample_dim: slice(0, n)})
