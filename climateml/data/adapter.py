"""xarray <-> tensor, keeping coordinates: the one adapter used by DataModules, writers, evaluation and attribution.

A :class:`FieldLayout` remembers how a Dataset's variables were stacked into a tensor — which variables
(the channel axis), which field dims and their coordinates — so model outputs come back as xarray on the
input's coordinates without anyone reshaping a (time, lat, lon) array by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
import xarray as xr

from climateml.errors import DataError

#: the dim a Dataset's variables are stacked on by :meth:`FieldLayout.stack`
VARIABLE_DIM = "variable"


@dataclass
class FieldLayout:
    """How ``variables`` on ``field_dims`` map to a tensor (samples, variables, *field_shape).

    Args:
        variables: the channel axis, in order (e.g. ["tas"] or ["TMQ", "U850"]).
        field_dims: the dims after the sample dim, e.g. ("lat", "lon") or ("lead_time", "y", "x"); may be empty.
        coords: 1-d coordinate values of each field dim, and any other coordinate on field dims to carry
            (e.g. 2-d ``lat`` / ``lon`` on a projected ``y``, ``x`` grid, or labels beside a dim).
        attrs: attributes per variable (units, long_name), restored on the way back.
        sample_dim: the name of the sample dim ("time" for yearly maps, "sample" for windows).
    """

    variables: list[str]
    field_dims: tuple[str, ...]
    coords: dict[Hashable, xr.DataArray] = field(default_factory=dict)
    attrs: dict[str, dict] = field(default_factory=dict)
    sample_dim: str = "time"

    @classmethod
    def from_dataset(cls, ds: xr.Dataset, variables: Sequence[str], sample_dim: str = "time") -> "FieldLayout":
        """The layout of ``variables`` in ``ds`` (all with the same dims, sample dim first)."""
        first = ds[variables[0]]
        field_dims = tuple(d for d in first.dims if d != sample_dim)
        for v in variables:
            if tuple(d for d in ds[v].dims if d != sample_dim) != field_dims:
                raise DataError(f"variable {v!r} has dims {ds[v].dims}, expected ({sample_dim}, {', '.join(field_dims)})")
        coords = {d: ds[d].copy() for d in field_dims if d in ds.coords}
        coords.update({k: c.copy() for k, c in ds.coords.items()  # auxiliary coords on the field (2-d lat / lon)
                       if k not in coords and c.dims and set(c.dims) <= set(field_dims)})
        return cls(list(variables), field_dims, coords, {v: dict(ds[v].attrs) for v in variables}, sample_dim)

    @property
    def field_shape(self) -> tuple[int, ...]:
        return tuple(len(self.coords[d]) for d in self.field_dims)

    @property
    def n_values(self) -> int:
        """Numbers per sample: variables x field cells."""
        return len(self.variables) * int(np.prod(self.field_shape, dtype=int))

    def to_tensor(self, ds: xr.Dataset, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(samples, variables, *field_shape) from ``ds`` (dims put in this layout's order)."""
        arrays = [np.asarray(ds[v].transpose(self.sample_dim, *self.field_dims).values) for v in self.variables]
        return torch.as_tensor(np.stack(arrays, axis=1), dtype=dtype)

    def to_xarray(self, values: torch.Tensor | np.ndarray, sample_coord: xr.DataArray | np.ndarray | Sequence | None,
                  extra_dims: Mapping[str, Sequence] | None = None, coords: Mapping[str, object] | None = None,
                  n_samples: int | None = None) -> xr.Dataset:
        """A Dataset from values shaped (samples, [extra dims...], variables, *field_shape), flat or not.

        ``sample_coord``: the sample dim's coordinate (a DataArray keeps its attributes), or None for none (then
        ``n_samples`` defaults to ``len(values)``). ``extra_dims`` (e.g. {"member": [0, 1, 2]}) come before the
        variable axis in ``values`` and after the sample dim in the result. ``coords``: more coordinates that
        depend on the samples, as xarray takes them (e.g. ``{"valid_time": (("time", "lead_time"), times)}``).
        """
        if isinstance(values, torch.Tensor):
            values = values.detach().float().cpu().numpy()
        values = np.asarray(values)
        extra = dict(extra_dims or {})
        n = len(sample_coord) if sample_coord is not None else len(values) if n_samples is None else n_samples
        shape = (n, *[len(v) for v in extra.values()], len(self.variables), *self.field_shape)
        if values.size != int(np.prod(shape)) or values.shape[0] != n:
            raise DataError(f"values of shape {tuple(values.shape)} do not fit {n} samples x "
                            f"{len(self.variables)} variables {self.variables} x field {self.field_shape} "
                            f"{self.field_dims}" + (f" x {tuple(extra)}" if extra else ""))
        values = values.reshape(shape)
        dims = (self.sample_dim, *extra, *self.field_dims)
        sample = {} if sample_coord is None else {self.sample_dim: sample_coord}
        all_coords = {**sample, **{k: list(v) for k, v in extra.items()}, **self.coords, **dict(coords or {})}
        axis = 1 + len(extra)
        return xr.Dataset({v: (dims, np.take(values, i, axis=axis), dict(self.attrs.get(v, {})))
                           for i, v in enumerate(self.variables)}, coords=all_coords)

    def to_dataarray(self, values: torch.Tensor | np.ndarray, sample_coord, dim: str = "channel",
                     name: str | None = None, **kwargs) -> xr.DataArray:
        """The values as one DataArray shaped like the tensor, (sample, ``dim``, *field_dims), the variables'
        names on ``dim``: e.g. a model's inputs for attribution. Other arguments as :meth:`to_xarray`."""
        ds = self.to_xarray(values, sample_coord, **kwargs)
        return ds.to_array(dim).transpose(self.sample_dim, dim, *self.field_dims).rename(name)

    def to_groups(self, values: torch.Tensor | np.ndarray, groups: Mapping[str, xr.DataArray | np.ndarray | Sequence],
                  what: str = "samples") -> dict[str, xr.Dataset]:
        """Values of several groups one after another (e.g. scenarios), cut into one Dataset per group: ``groups``
        maps each group's name to its sample coordinate, in the order the values come. A DataError naming
        ``what`` the samples are if the values do not fill the groups exactly."""
        sizes = {g: len(c) for g, c in groups.items()}
        if sum(sizes.values()) != len(values):
            raise DataError(f"{len(values)} predictions do not fit the {sum(sizes.values())} {what} of "
                            f"{list(groups)} ({', '.join(f'{g}: {n}' for g, n in sizes.items())})")
        out, start = {}, 0
        for g, coord in groups.items():
            out[g] = self.to_xarray(values[start:start + sizes[g]], coord)
            start += sizes[g]
        return out

    # ---- an xarray input as a model takes it whole (attribution): additive to the above ----
    #: False for a single DataArray whose axes after the sample dim are all field dims: its tensor has no
    #: variable axis (its one "variable" is the DataArray's name)
    stacked: bool = True

    @classmethod
    def from_xarray(cls, x: xr.DataArray | xr.Dataset, variables: Sequence[str] | None = None) -> "FieldLayout":
        """The layout of a model input given as xarray, sample dim first: a DataArray is the tensor as it is (no
        variable axis, ``stacked`` False); a Dataset's ``variables`` (default: all, in order) are stacked on a
        variable axis after the sample dim, each variable's other dims in any order."""
        if isinstance(x, xr.DataArray):
            if x.ndim < 1:
                raise DataError("the input needs a sample dim first; got a 0-d DataArray")
            name = str(x.name if x.name is not None else "input")
            return cls([name], tuple(map(str, x.dims[1:])), {d: x[d].copy() for d in x.dims[1:] if d in x.coords},
                       {name: dict(x.attrs)}, str(x.dims[0]), stacked=False)
        if not isinstance(x, xr.Dataset):
            raise DataError(f"the input must be an xarray.DataArray or Dataset, got {type(x).__name__}")
        variables = [str(v) for v in (list(x.data_vars) if variables is None else variables)]
        missing = [v for v in variables if v not in x.data_vars]
        if missing or not variables:
            raise DataError(f"input variables {missing or variables} not in the Dataset (it has {list(x.data_vars)})")
        first = x[variables[0]]
        for v in variables:
            if set(x[v].dims) != set(first.dims):
                raise DataError(f"input variable {v!r} has dims {x[v].dims}, expected those of {variables[0]!r}: "
                                f"{first.dims}")
        return cls.from_dataset(x[variables].transpose(*first.dims), variables, str(first.dims[0]))

    def stack(self, x: xr.DataArray | xr.Dataset) -> xr.DataArray:
        """``x`` as one DataArray shaped like its tensor, (sample, [variable], *field dims), coordinates kept."""
        if not self.stacked:
            return x if isinstance(x, xr.DataArray) else x[self.variables[0]]
        parts = [x[v].transpose(self.sample_dim, *self.field_dims) for v in self.variables]
        out = xr.concat(parts, dim=VARIABLE_DIM, coords="minimal", compat="override")
        out = out.assign_coords({VARIABLE_DIM: self.variables}).transpose(self.sample_dim, VARIABLE_DIM, *self.field_dims)
        out.attrs = {}
        return out

    def unstack(self, values: np.ndarray, like: xr.DataArray | xr.Dataset, name: str | None = None,
                attrs: Mapping | None = None) -> xr.DataArray | xr.Dataset:
        """``values`` shaped like :meth:`stack` of ``like`` back on ``like``'s dims and coordinates: a DataArray for a
        DataArray, a Dataset of the variables (each on its own dims' order) otherwise; ``name`` and ``attrs`` replace
        ``like``'s when given (a Dataset's variables get ``attrs`` plus their own name as ``variable``)."""
        values = np.asarray(values)
        if not self.stacked:
            out = self.stack(like).copy(data=values)
            if name is not None:
                out.name = name
            if attrs is not None:
                out.attrs = dict(attrs)
            return out
        template = self.stack(like)
        out = xr.Dataset(attrs=dict(like.attrs if attrs is None else attrs))
        for i, v in enumerate(self.variables):
            arr = template.isel({VARIABLE_DIM: i}, drop=True).copy(data=values[:, i]).transpose(*like[v].dims)
            arr.attrs = dict(like[v].attrs) if attrs is None else {**dict(attrs), "variable": v}
            out[v] = arr
        return out
