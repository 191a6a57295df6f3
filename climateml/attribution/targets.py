"""Attribution targets: what scalar per sample the attribution explains.

Every target turns a model into a small ``nn.Module`` that outputs **one number per sample**
(:class:`TargetModule`), so every Captum method is called the same way (``target=None``) whatever the
model's output: a scalar, a vector of classes, a (variable x lat x lon) map flattened as the temperature
emulator emits it, a (class, lat, lon) segmentation logit map or a (lead_time, y, x) nowcast.

- :class:`OutputIndex` / an int or tuple: one element of the output (a class logit, one output value).
- :class:`RegionMean` (and the helpers :func:`region_mean`, :func:`global_mean`, :func:`class_score`,
  :func:`nowcast_rain`): the (area-weighted) mean or the sum of one output map over a region: a lat/lon
  box, a y/x box, a fixed boolean mask, or a mask per sample (e.g. the predicted cyclone mask).
- any callable ``f(output) -> (n,)`` tensor.

Area weights are cos(latitude) on lat/lon grids and equal on projected y/x grids (:mod:`climateml.grid`).
A static region is reduced by a frozen ``nn.Linear`` (weights = the normalised region weights), so LRP's
rules see the reduction and the output relevance of each cell is its weighted contribution.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from torch import nn

from climateml.attribution.regions import describe_region, mask_array, region_mask
from climateml.errors import ConfigError, DataError
from climateml.grid import lat_weights, spatial_dims


class TargetModule(nn.Module):
    """``model`` followed by a reduction to one scalar per sample: ``forward(x, *extra) -> (n,)``.

    ``extra`` are per-sample tensors the reduction needs (e.g. a segmentation mask per sample); Captum
    passes them through ``additional_forward_args`` and expands them with the inputs.
    """

    def __init__(self, model: nn.Module, reducer: nn.Module):
        super().__init__()
        self.model = model
        self.reducer = reducer

    def forward(self, x: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        return self.reducer(self.model(x), *extra)


class BoundTarget:
    """A target resolved for one model output shape: the reduction module, per-sample extra inputs, a description."""

    def __init__(self, reducer: nn.Module, description: str, extra: Sequence[np.ndarray] = ()):
        self.reducer = reducer
        self.description = description
        self.extra = tuple(np.asarray(e, dtype=np.float32) for e in extra)


class Target:
    """Base of the targets: :meth:`bind` resolves the target for a model's per-sample output shape."""

    def bind(self, output_shape: tuple[int, ...], grid: xr.DataArray | xr.Dataset | None, n_samples: int,
             sample_dim: str | None = None) -> BoundTarget:
        """Resolve for a per-sample output of ``output_shape``; ``grid`` carries the output map's coordinates
        (by default the input), ``n_samples`` and ``sample_dim`` describe the input's samples."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------
# one output element
# ---------------------------------------------------------------------------------------------------

class _Select(nn.Module):
    def __init__(self, output_shape: tuple[int, ...], index: tuple[int, ...]):
        super().__init__()
        self.output_shape, self.index = tuple(output_shape), tuple(index)

    def forward(self, out: torch.Tensor) -> torch.Tensor:
        out = out.reshape(out.shape[0], *self.output_shape)
        return out[(slice(None), *self.index)].reshape(out.shape[0])


class OutputIndex(Target):
    """One element of the model's per-sample output: ``index`` an int (flat or first-axis index), a tuple
    (one index per output axis), or None when the output holds a single value per sample.

    Args:
        index: the element; negative indices count from the end.
        names: optional names of the output's first axis (e.g. the classes), so ``index`` may be a name.
    """

    def __init__(self, index: int | str | Sequence[int] | None = None, names: Sequence[str] | None = None):
        self.index, self.names = index, list(names) if names is not None else None

    def describe(self) -> str:
        return "the model's output" if self.index is None else f"output[{self.index}]"

    def bind(self, output_shape, grid, n_samples, sample_dim=None) -> BoundTarget:
        shape = tuple(output_shape)
        size = int(np.prod(shape, dtype=int))
        if self.index is None:
            if size != 1:
                raise ConfigError(f"the model outputs {shape} values per sample; pass target= an output index, or a "
                                  "region target (climateml.attribution.targets.region_mean / class_score / nowcast_rain)")
            return BoundTarget(_Select((1,), (0,)), self.describe())
        index = self.index
        if isinstance(index, str):
            if not self.names or index not in self.names:
                raise ConfigError(f"target {index!r} is not one of the output names {self.names}")
            index = self.names.index(index)
        if np.ndim(index) == 0:  # one int: a flat index into the flattened per-sample output
            view, index = (size,), (int(index),)
        else:  # one index per output axis
            view, index = shape, tuple(int(i) for i in index)
        if len(index) != len(view) or any(not -n <= i < n for i, n in zip(index, view)):
            raise ConfigError(f"target index {self.index} does not pick one value of the model's per-sample output "
                              f"of shape {shape} (give a flat int index or one index per axis)")
        return BoundTarget(_Select(view, index), self.describe())


# ---------------------------------------------------------------------------------------------------
# region reductions of map outputs
# ---------------------------------------------------------------------------------------------------

class _MapReduce(nn.Module):
    """(n, *output_shape) -> (n,): optional softmax/sigmoid over the first axis, pick ``index`` among the
    leading axes, then a weighted sum over the map (frozen Linear for a static region, or per-sample masks)."""

    def __init__(self, lead: tuple[int, ...], map_shape: tuple[int, int], index: tuple[int, ...],
                 activation: str | None, weights: np.ndarray | None, cell_weights: np.ndarray, reduce: str):
        super().__init__()
        self.lead, self.map_shape, self.index, self.activation, self.reduce = lead, map_shape, index, activation, reduce
        n_cells = int(np.prod(map_shape))
        if weights is not None:
            self.linear = nn.Linear(n_cells, 1, bias=False)
            with torch.no_grad():
                self.linear.weight.copy_(torch.as_tensor(weights, dtype=torch.float32).reshape(1, -1))
            self.linear.weight.requires_grad_(False)
        else:
            self.linear = None
            self.register_buffer("cell_weights", torch.as_tensor(cell_weights, dtype=torch.float32).reshape(1, -1))

    def forward(self, out: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        n = out.shape[0]
        out = out.reshape(n, *self.lead, *self.map_shape)
        if self.activation == "softmax":
            out = torch.softmax(out, dim=1)
        elif self.activation == "sigmoid":
            out = torch.sigmoid(out)
        field = out[(slice(None), *self.index)].reshape(n, -1)
        if self.linear is not None:
            return self.linear(field).reshape(n)
        m = mask.reshape(n, -1).to(field.dtype)
        if self.reduce == "sum":
            return (field * m).sum(1)
        w = m * self.cell_weights
        return (field * w).sum(1) / w.sum(1).clamp_min(1e-12)


class RegionMean(Target):
    """Mean (area-weighted) or sum of one output map over a region, one number per sample.

    The output's last two per-sample axes are the map on ``grid``'s horizontal dims (lat/lon or y/x); a
    flat output (e.g. the temperature emulator's variables x lat x lon) is viewed as (-1, nlat, nlon).
    ``index`` picks the map among the leading axes: the target variable, the class of a segmentation
    logit map, the lead time of a nowcast.

    Args:
        index: int or tuple into the leading axes (or a name in ``names``); None if there is one map.
        region: a region spec (:mod:`climateml.attribution.regions`), e.g. ``{"lat": (30, 60), "lon": (0, 40)}``,
            a boolean (lat, lon) mask, or a boolean mask **with the sample dim** (one region per sample,
            e.g. each sample's predicted cyclone mask); None: the whole map (a global mean).
        reduce: "mean" (weighted mean over the region, in the output's units) or "sum" (plain sum over
            the region's cells, e.g. a class score summed over a mask).
        weighting: "area" (cos(lat) on lat/lon grids, equal on y/x grids) or "equal" (for reduce="mean").
        activation: None (raw output, e.g. logits), "softmax" over the first output axis (class
            probabilities) or "sigmoid".
        grid: the xarray object carrying the output map's coordinates; default: the input's.
        names: names of the leading axis (e.g. the layout's variables or the classes) for ``index`` by name.
    """

    def __init__(self, index: int | str | Sequence[int] | None = None, region: Any = None, reduce: str = "mean",
                 weighting: str = "area", activation: str | None = None, grid: xr.DataArray | xr.Dataset | None = None,
                 names: Sequence[str] | None = None):
        if reduce not in ("mean", "sum"):
            raise ConfigError(f"target reduce must be 'mean' or 'sum', got {reduce!r}")
        if weighting not in ("area", "equal"):
            raise ConfigError(f"target weighting must be 'area' or 'equal', got {weighting!r}")
        if activation not in (None, "softmax", "sigmoid"):
            raise ConfigError(f"target activation must be None, 'softmax' or 'sigmoid', got {activation!r}")
        self.index, self.region, self.reduce, self.weighting = index, region, reduce, weighting
        self.activation, self.grid, self.names = activation, grid, list(names) if names is not None else None

    def describe(self) -> str:
        what = {"mean": "area-weighted mean" if self.weighting == "area" else "mean", "sum": "sum"}[self.reduce]
        act = f"{self.activation} of " if self.activation else ""
        idx = "" if self.index is None else f"[{self.index}]"
        return f"{what} of {act}output{idx} over {describe_region(self.region)}"

    def bind(self, output_shape, grid, n_samples, sample_dim=None) -> BoundTarget:
        grid = self.grid if self.grid is not None else grid
        hdims = spatial_dims(grid, required=False) if grid is not None else None
        if hdims is None:
            raise ConfigError(f"target {self.describe()} needs the output map's grid: pass grid= (an xarray object "
                              "with lat/lon or y/x coordinates) to the target, or an input with those dims")
        map_shape = (grid.sizes[hdims[0]], grid.sizes[hdims[1]])
        shape = tuple(output_shape)
        cells = map_shape[0] * map_shape[1]
        if shape[-2:] == map_shape:
            lead = shape[:-2]
        elif int(np.prod(shape, dtype=int)) % cells == 0:
            lead = (int(np.prod(shape, dtype=int)) // cells,)
        else:
            raise DataError(f"the model's per-sample output {shape} holds no map of the target grid's "
                            f"{hdims} = {map_shape}; pass the output's grid as the target's grid=")
        index = self.index
        if isinstance(index, str):
            if not self.names or index not in self.names:
                raise ConfigError(f"target index {index!r} is not one of {self.names}")
            index = self.names.index(index)
        if index is None:
            if any(n != 1 for n in lead):
                raise ConfigError(f"the model outputs {lead} maps per sample (leading axes of {shape}); pass the target "
                                  "an index= (variable, class or lead time)")
            index = tuple(0 for _ in lead)
        index = (int(index),) if np.ndim(index) == 0 else tuple(int(i) for i in index)
        if len(index) != len(lead) or any(not -n <= i < n for i, n in zip(index, lead)):
            raise ConfigError(f"target index {self.index} does not pick one map among the output's leading axes {lead}")
        if self.activation == "softmax" and not lead:
            raise ConfigError("target activation 'softmax' needs a class axis before the map")

        per_sample = isinstance(self.region, xr.DataArray) and sample_dim is not None and sample_dim in self.region.dims
        mask = region_mask(grid, self.region, "target region")
        cell_w = np.ones(map_shape)
        if self.weighting == "area" and hdims[0] == "lat":
            cell_w = np.broadcast_to(lat_weights(grid["lat"].values)[:, None], map_shape).copy()
        if per_sample:
            if mask.sizes[sample_dim] != n_samples:
                raise DataError(f"per-sample target mask has {mask.sizes[sample_dim]} samples, the input {n_samples}")
            m = mask_array(mask, (sample_dim, *hdims), (n_samples, *map_shape), np.float32)
            reducer = _MapReduce(lead, map_shape, index, self.activation, None, cell_w, self.reduce)
            return BoundTarget(reducer, self.describe(), extra=[m])
        if set(mask.dims) - set(hdims):
            raise ConfigError(f"target region {describe_region(self.region)} has dims {tuple(mask.dims)}; a target "
                              f"region lives on the output map's {hdims} (or adds the sample dim)")
        m = mask_array(mask, hdims, map_shape, float)
        if self.reduce == "sum":
            w = m
        else:
            w = m * cell_w
            if w.sum() <= 0:
                w = m
            w = w / w.sum()
        reducer = _MapReduce(lead, map_shape, index, self.activation, w.ravel(), cell_w, self.reduce)
        return BoundTarget(reducer, self.describe())


class CallableTarget(Target):
    """A user function ``f(output) -> (n,)`` tensor as a target (``extra`` inputs are not supported)."""

    class _Call(nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, out):
            return self.fn(out)

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str | None = None):
        self.fn, self.name = fn, name or getattr(fn, "__name__", "custom target")

    def describe(self) -> str:
        return f"custom target {self.name}"

    def bind(self, output_shape, grid, n_samples, sample_dim=None) -> BoundTarget:
        return BoundTarget(self._Call(self.fn), self.describe())


# ---------------------------------------------------------------------------------------------------
# helpers in the field's words
# ---------------------------------------------------------------------------------------------------

def region_mean(index=None, lat=None, lon=None, region=None, **kw) -> RegionMean:
    """Area-weighted mean of output map ``index`` over a lat/lon box (or any ``region``), e.g. regional tas."""
    box = {k: v for k, v in (("lat", lat), ("lon", lon)) if v is not None}
    if box and region is not None:
        raise ConfigError("give the target region either as lat=/lon= or as region=, not both")
    return RegionMean(index=index, region=box or region, reduce="mean", **kw)


def global_mean(index=None, **kw) -> RegionMean:
    """Area-weighted global mean of output map ``index`` (e.g. global-mean tas)."""
    return RegionMean(index=index, region=None, reduce="mean", **kw)


def class_score(cls: int | str | None = None, region=None, probability: bool = False, reduce: str = "sum",
                index: int | str | None = None, **kw) -> RegionMean:
    """Class ``cls``'s score (logit, or softmax probability) summed over a region or per-sample mask of a
    (class, lat, lon) / (class, y, x) segmentation output. ``index`` is another name for ``cls`` (the output
    index, as the other target kinds call it): ``{kind: class_score, cls: 1}`` and ``{kind: class_score, index: 1}``
    are the same target."""
    if (cls is None) == (index is None):
        raise ConfigError(f"class_score needs the class as cls (or index), exactly once; got cls={cls!r}, index={index!r}")
    return RegionMean(index=cls if index is None else index, region=region, reduce=reduce, weighting="equal",
                      activation="softmax" if probability else None, **kw)


def nowcast_rain(lead_time: int, region=None, reduce: str = "mean", **kw) -> RegionMean:
    """A nowcast's rain (output[lead_time] of a (lead_time, y, x) output) averaged (or summed) over a region
    of its y/x grid, e.g. ``{"y": (-40, 40), "x": (-40, 40)}`` in km."""
    return RegionMean(index=lead_time, region=region, reduce=reduce, weighting="equal", **kw)


TARGET_KINDS = {"index": OutputIndex, "region_mean": region_mean, "global_mean": global_mean,
                "class_score": class_score, "nowcast_rain": nowcast_rain}


def as_target(target: Any) -> Target:
    """A :class:`Target` from None, an int/tuple index, a Target, a callable, or a config mapping such as
    ``{"kind": "region_mean", "index": 0, "lat": [30, 60], "lon": [0, 40]}`` (kinds: index, region_mean,
    global_mean, class_score, nowcast_rain; the other keys are the helper's arguments)."""
    if isinstance(target, Target):
        return target
    if target is None or isinstance(target, (int, np.integer, str, tuple, list)):
        return OutputIndex(target if not isinstance(target, list) else tuple(target))
    if isinstance(target, Mapping):
        spec = dict(target)
        kind = spec.pop("kind", "index")
        if kind not in TARGET_KINDS:
            raise ConfigError(f"target kind must be one of {list(TARGET_KINDS)}, got {kind!r}")
        # YAML lists of two numbers become (low, high) bounds: the target keeps the spec as written in Python
        for k in ("lat", "lon"):
            if k in spec and isinstance(spec[k], list):
                spec[k] = tuple(spec[k])
        if isinstance(spec.get("region"), Mapping):
            spec["region"] = {k: tuple(v) if isinstance(v, list) and k in ("lat", "lon", "y", "x") else v
                              for k, v in spec["region"].items()}
        try:
            return TARGET_KINDS[kind](**spec)
        except TypeError as err:
            raise ConfigError(f"target {dict(target)}: {err}") from None
    if callable(target):
        return CallableTarget(target)
    raise ConfigError(f"target must be None, an index, a Target, a callable or a mapping, got {type(target).__name__}")
