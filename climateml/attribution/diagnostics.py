"""Clever-Hans diagnostics: does a model lean on a cue it should not use?

- :func:`relevance_mass_accuracy`, :func:`relevance_rank_accuracy` (Arras, Osman & Samek 2022, "CLEVR-XAI"):
  how much of an attribution map's **positive** relevance falls inside a region (a suspected cue, or
  the region where the true signal is), per sample; the mean is in ``attrs["mean"]``.
- :func:`ablate` / :func:`cue_ablation`: replace a region or channel by a baseline (climatology, zeros,
  noise or values shuffled across samples) and report the change in the task's own skill score.
- :func:`permutation_importance`: the skill lost when one input variable (or one patch of it) is
  shuffled across samples, which breaks its link to the target while keeping its distribution.
- :func:`optimise_input`: backwards optimisation, the input that maximises a target, started from the
  climatology and regularised (L2 distance from the start and spatial smoothness) to stay physical.

Skill scores are functions ``skill(prediction, truth) -> float``, higher is better (:func:`r2_skill`,
:func:`accuracy_skill`, or the task's own score).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from torch import nn

from climateml.attribution.adapter import input_layout, stacked
from climateml.attribution.core import predict
from climateml.attribution.methods import eval_mode, model_device, model_dtype
from climateml.attribution.regions import describe_region, mask_array, region_mask
from climateml.attribution.targets import TargetModule, as_target
from climateml.data.adapter import FieldLayout
from climateml.errors import ConfigError, DataError
from climateml.grid import spatial_dims
from climateml.metrics.continuous import r2

Skill = Callable[[np.ndarray, np.ndarray], float]

ARRAS_NOTE = ("Arras et al. 2022; only positive relevance counts (negative relevance, evidence against the target, "
              "is set to zero)")


# ---------------------------------------------------------------------------------------------------
# skill scores (higher is better)
# ---------------------------------------------------------------------------------------------------

def r2_skill(pred: np.ndarray, truth: np.ndarray) -> float:
    """:func:`climateml.metrics.r2` on arrays with the sample axis first, unweighted: 1 - SSE / SST with SST
    about each output's mean over the samples (scikit-learn's variance-weighted R²; 1 is perfect, 0 is the
    truth's per-output mean, NaN for a constant truth)."""
    truth = np.asarray(truth, float)
    table = truth.reshape(len(truth), -1)
    dims = ("sample", "output")
    return float(r2(xr.DataArray(np.asarray(pred, float).reshape(table.shape), dims=dims),
                    xr.DataArray(table, dims=dims), weights=None, sample_dim="sample"))


def accuracy_skill(pred: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of correct classes: argmax over axis 1 of (n, classes, ...) scores, or score > 0 for one logit."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.ndim == truth.ndim + 1:
        label = pred.argmax(1)
    else:
        label = (pred.reshape(truth.shape) > 0).astype(truth.dtype)
    return float((label == truth).mean())


# ---------------------------------------------------------------------------------------------------
# relevance in a region
# ---------------------------------------------------------------------------------------------------

def _oriented(da: xr.DataArray, orient: bool) -> np.ndarray:
    """(n, cells) relevance; with ``orient`` each sample's map times the sign of its total relevance."""
    r = np.asarray(da.values, dtype=np.float64).reshape(da.shape[0], -1)
    if orient:
        sign = np.sign(r.sum(1, keepdims=True))
        r = r * np.where(sign == 0, 1.0, sign)
    return r


def relevance_mass_accuracy(attr: xr.DataArray | xr.Dataset, region: Any, orient: bool = False) -> xr.DataArray:
    """Per sample, the share of positive relevance inside ``region``: sum(R+ in region) / sum(R+ everywhere).

    1 means all positive relevance lies in the region; a region of k of N cells scores k/N for a map of
    uniform relevance. NaN for a sample without positive relevance. ``region`` is any region spec
    (:mod:`climateml.attribution.regions`), e.g. ``{"variable": "station_density", "lat": (50, 60), "lon": (0, 20)}``,
    or a boolean mask (with the sample dim for one region per sample).

    ``orient=True`` (for regression targets): each sample's map is first multiplied by the sign of its total
    relevance, so for a sample whose target lies below the baseline's the evidence for that negative
    anomaly counts as positive (otherwise only the evidence against it would).
    """
    da = stacked(attr)
    mask = mask_array(region_mask(da, region, "relevance region"), da.dims, da.shape)
    r = np.clip(_oriented(da, orient), 0.0, None)
    m = mask.reshape(da.shape[0], -1)
    total = r.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mass = np.where(total > 0, (r * m).sum(1) / total, np.nan)
    sample = da.dims[0]
    return xr.DataArray(mass, coords={sample: da[sample]} if sample in da.coords else None, dims=(sample,),
                        name="relevance_mass_accuracy",
                        attrs={"region": describe_region(region), "definition": "sum of positive relevance inside the "
                               "region / sum of positive relevance", "reference": ARRAS_NOTE, "oriented": int(orient),
                               "mean": float(np.nanmean(mass)) if np.isfinite(mass).any() else float("nan"),
                               "region_fraction": float(m.mean())})


def relevance_rank_accuracy(attr: xr.DataArray | xr.Dataset, region: Any, orient: bool = False) -> xr.DataArray:
    """Per sample, the share of the K highest-relevance cells that lie in ``region`` (K = the region's size).

    Cells are ranked by relevance; a cell whose relevance is not positive never counts as a hit. A
    region of k of N cells scores about k/N for random relevance. ``orient`` as in :func:`relevance_mass_accuracy`.
    """
    da = stacked(attr)
    mask = mask_array(region_mask(da, region, "relevance region"), da.dims, da.shape).reshape(da.shape[0], -1)
    r = _oriented(da, orient)
    k = mask.sum(1)
    rank = np.empty_like(r, dtype=np.int64)
    order = np.argsort(-r, axis=1, kind="stable")
    np.put_along_axis(rank, order, np.arange(r.shape[1])[None, :].repeat(r.shape[0], 0), axis=1)
    hits = (rank < k[:, None]) & mask & (r > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(k > 0, hits.sum(1) / np.maximum(k, 1), np.nan)
    sample = da.dims[0]
    return xr.DataArray(acc, coords={sample: da[sample]} if sample in da.coords else None, dims=(sample,),
                        name="relevance_rank_accuracy",
                        attrs={"region": describe_region(region), "definition": "share of the K most relevant cells "
                               "inside the region, K = cells in the region", "reference": ARRAS_NOTE,
                               "mean": float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")})


# ---------------------------------------------------------------------------------------------------
# ablation
# ---------------------------------------------------------------------------------------------------

FILLS = ("climatology", "zeros", "noise", "shuffle")


def _restore(layout: FieldLayout, values: np.ndarray, like: xr.DataArray | xr.Dataset) -> xr.DataArray | xr.Dataset:
    """Stacked ``values`` back into ``like`` (a Dataset's other variables kept)."""
    back = layout.unstack(values, like)
    return back if isinstance(like, xr.DataArray) else like.assign({v: back[v] for v in back.data_vars})


def ablate(x: xr.DataArray | xr.Dataset, region: Any, fill: str | float = "climatology",
           reference: xr.DataArray | xr.Dataset | None = None, seed: int = 0,
           variables: Sequence[str] | None = None) -> xr.DataArray | xr.Dataset:
    """``x`` with the cells of ``region`` replaced by a baseline.

    Args:
        x: the inputs (sample dim first); a Dataset's variables are addressed as ``{"variable": name}``.
        region: region spec; e.g. ``{"variable": "station_density"}`` (a whole channel) or a box within one.
        fill: "climatology" (per-cell mean of ``reference`` over samples), "zeros", "noise" (Gaussian with
            ``reference``'s per-cell mean and std), "shuffle" (the same cells of other samples: a random
            permutation of the samples) or a number.
        reference: the data the climatology and noise statistics come from (e.g. the training inputs);
            default ``x`` itself.
        seed: seeds "noise" and "shuffle".
    """
    layout = input_layout(x, variables)
    da = layout.stack(x)
    mask = mask_array(region_mask(da, region, "ablation region"), da.dims, da.shape)
    values = np.asarray(da.values, dtype=np.float64)
    ref = values if reference is None else np.asarray(stacked(reference, layout.variables)
                                                      .transpose(*da.dims).values, dtype=np.float64)
    if ref.shape[1:] != values.shape[1:]:
        raise DataError(f"ablation reference has per-sample shape {ref.shape[1:]}, the input {values.shape[1:]}")
    rng = np.random.default_rng(seed)
    if isinstance(fill, (int, float, np.number)):
        filler = np.full_like(values, float(fill))
    elif fill == "zeros":
        filler = np.zeros_like(values)
    elif fill == "climatology":
        filler = np.broadcast_to(ref.mean(0, keepdims=True), values.shape)
    elif fill == "noise":
        filler = ref.mean(0, keepdims=True) + ref.std(0, keepdims=True) * rng.standard_normal(values.shape)
    elif fill == "shuffle":
        filler = values[rng.permutation(len(values))]
    else:
        raise ConfigError(f"ablation fill must be one of {list(FILLS)} or a number, got {fill!r}")
    return _restore(layout, np.where(mask, filler, values).astype(da.dtype), x)


def cue_ablation(model: nn.Module, x: xr.DataArray | xr.Dataset, y: Any, skill: Skill, region: Any,
                 fill: str | float = "climatology", reference: xr.DataArray | xr.Dataset | None = None,
                 repeats: int = 1, seed: int = 0, variables: Sequence[str] | None = None,
                 batch_size: int = 1024, base_pred: np.ndarray | None = None) -> dict[str, Any]:
    """The task's skill before and after ablating ``region`` (see :func:`ablate`).

    ``base_pred``: the model's prediction on ``x`` as :func:`~climateml.attribution.core.predict` gives it,
    when the caller already has it (saves one pass over ``x``).

    Returns ``{"skill", "skill_ablated", "skill_ablated_std", "change", "fill", "region"}``; with random
    fills ("noise", "shuffle") the ablated skill is the mean over ``repeats`` draws (seeds seed, seed+1, ...).
    """
    truth = np.asarray(y.values if isinstance(y, (xr.DataArray, xr.Dataset)) else y)
    base = skill(predict(model, x, batch_size, variables) if base_pred is None else base_pred, truth)
    n_rep = repeats if fill in ("noise", "shuffle") else 1
    scores = [skill(predict(model, ablate(x, region, fill, reference, seed + i, variables), batch_size, variables), truth)
              for i in range(n_rep)]
    return {"skill": float(base), "skill_ablated": float(np.mean(scores)),
            "skill_ablated_std": float(np.std(scores)) if n_rep > 1 else 0.0,
            "change": float(np.mean(scores) - base), "fill": str(fill), "region": describe_region(region)}


def permutation_importance(model: nn.Module, x: xr.DataArray | xr.Dataset, y: Any, skill: Skill,
                           dim: str | None = None, n_repeats: int = 5, seed: int = 0,
                           patch: Mapping[str, int] | None = None, variables: Sequence[str] | None = None,
                           batch_size: int = 1024, base_pred: np.ndarray | None = None) -> xr.Dataset:
    """Skill lost when one input variable is shuffled across samples (same permutation for all its cells).

    Args:
        dim: the variable dim (default: ``variable`` for a Dataset, else ``x``'s second dim).
        n_repeats: permutations per variable; the result holds their mean and std.
        patch: e.g. ``{"lat": 4, "lon": 4}``: also shuffle each block of 4 x 4 cells of each variable alone,
            giving a map of the skill lost per block (``importance_map``, on ``x``'s grid).
        base_pred: the model's prediction on the unperturbed ``x`` (as
            :func:`~climateml.attribution.core.predict` gives it), when the caller already has it.

    Returns a Dataset with ``importance`` and ``importance_std`` along ``dim`` (and ``importance_map``),
    attrs ``skill`` (unperturbed).
    """
    da = stacked(x, variables)
    dim = dim or str(da.dims[1])
    if dim not in da.dims or dim == da.dims[0]:
        raise ConfigError(f"permutation importance dim {dim!r} must be a per-sample dim of the input {tuple(da.dims)}")
    truth = np.asarray(y.values if isinstance(y, (xr.DataArray, xr.Dataset)) else y)
    values = np.asarray(da.values)
    axis = da.dims.index(dim)
    base = skill(predict(model, values, batch_size) if base_pred is None else base_pred, truth)
    rng = np.random.default_rng(seed)
    n = values.shape[0]

    def lost(select: tuple) -> tuple[float, float]:
        scores = []
        for _ in range(n_repeats):
            perm = rng.permutation(n)
            v = values.copy()
            # shuffle only the selected block (the same as values[perm][select] while select keeps the sample axis)
            v[select] = values[select][perm] if select[0] == slice(None) else values[perm][select]
            scores.append(base - skill(predict(model, v, batch_size), truth))
        return float(np.mean(scores)), float(np.std(scores))

    names = da[dim].values if dim in da.coords else np.arange(da.sizes[dim])
    imp = [lost(tuple([slice(None)] * axis + [i])) for i in range(da.sizes[dim])]
    out = xr.Dataset({"importance": ((dim,), [m for m, _ in imp]), "importance_std": ((dim,), [s for _, s in imp])},
                     coords={dim: names},
                     attrs={"skill": float(base), "n_repeats": n_repeats,
                            "definition": "skill(unperturbed) - skill(variable shuffled across samples)"})
    if patch:
        hdims = spatial_dims(da, required=False)
        if hdims is None:
            raise ConfigError("permutation importance patches need (lat, lon) or (y, x) dims")
        sizes = {d: int(patch.get(d, 1)) for d in hdims}
        imap = np.zeros([da.sizes[d] for d in (dim, *hdims)])
        a0, a1 = da.dims.index(hdims[0]), da.dims.index(hdims[1])
        for i in range(da.sizes[dim]):
            for r0 in range(0, da.sizes[hdims[0]], sizes[hdims[0]]):
                for c0 in range(0, da.sizes[hdims[1]], sizes[hdims[1]]):
                    sel = [slice(None)] * da.ndim
                    sel[axis], sel[a0], sel[a1] = i, slice(r0, r0 + sizes[hdims[0]]), slice(c0, c0 + sizes[hdims[1]])
                    imap[i, r0:r0 + sizes[hdims[0]], c0:c0 + sizes[hdims[1]]] = lost(tuple(sel))[0]
        out["importance_map"] = xr.DataArray(imap, coords={dim: names, **{d: da[d] for d in hdims if d in da.coords}},
                                             dims=(dim, *hdims), attrs={"patch": str(sizes)})
    return out


# ---------------------------------------------------------------------------------------------------
# backwards optimisation
# ---------------------------------------------------------------------------------------------------

def climatology(x: xr.DataArray | xr.Dataset, sample_dim: str | None = None) -> xr.DataArray | xr.Dataset:
    """The mean over samples, kept as one sample (the usual start of :func:`optimise_input`)."""
    sample_dim = sample_dim or (x.dims[0] if isinstance(x, xr.DataArray) else next(iter(x[next(iter(x.data_vars))].dims)))
    mean = x.mean(sample_dim, keep_attrs=True)
    out = mean.expand_dims({sample_dim: [0]})
    if isinstance(x, xr.DataArray):
        return out.transpose(*x.dims)
    return out.transpose(sample_dim, ...)


def optimise_input(model: nn.Module, start: xr.DataArray | xr.Dataset, target: Any = None, steps: int = 200,
                   lr: float = 0.05, l2: float = 1.0, smoothness: float = 10.0,
                   scale: xr.DataArray | xr.Dataset | float | None = None, variables: Sequence[str] | None = None,
                   device: str | torch.device | None = None) -> xr.DataArray | xr.Dataset:
    """Backwards optimisation: the input that maximises ``target`` (e.g. a class score), regularised.

    Maximises ``target(x) - l2 * mean(z**2) - smoothness * mean(dz**2)`` with Adam, where
    ``z = (x - start) / scale`` and ``dz`` are differences of z between neighbouring cells along the
    horizontal dims (lat/lon or y/x); the L2 term keeps the input near the start (the climatology) and the
    smoothness term keeps it a smooth, field-like anomaly. Each sample of ``start`` is optimised alone
    (e.g. several starting points), all at once.

    Args:
        start: starting input(s), sample dim first (e.g. :func:`climatology` of the training inputs).
        target: what to maximise, as in :func:`~climateml.attribution.core.attribute`.
        steps, lr: Adam iterations and learning rate (in units of ``scale``).
        l2, smoothness: weights of the regularisers (per squared ``scale`` unit).
        scale: the unit of the optimisation per value (e.g. the training std per variable and cell, an
            xarray broadcastable to ``start`` without the sample dim); default 1.

    Returns ``start``'s layout with the optimised values; attrs: target at start and end, settings.
    """
    with torch.inference_mode(False):  # also when called inside a Lightning validation loop
        return _optimise(model, start, target, steps, lr, l2, smoothness, scale, variables, device)


def _optimise(model, start, target, steps, lr, l2, smoothness, scale, variables, device):
    layout = input_layout(start, variables, model)
    da = layout.stack(start)
    x0 = torch.as_tensor(np.asarray(da.values, dtype=np.float32))
    if scale is None:
        s = torch.ones(1, *x0.shape[1:])
    elif isinstance(scale, (int, float)):
        s = torch.full((1, *x0.shape[1:]), float(scale))
    else:
        sc = stacked(scale.expand_dims({da.dims[0]: [0]}) if da.dims[0] not in scale.dims else scale, layout.variables)
        sc = sc.broadcast_like(da.isel({da.dims[0]: [0]}, drop=False)).transpose(*da.dims)
        s = torch.as_tensor(np.asarray(sc.values, dtype=np.float32)[:1])
    s = torch.where(s > 0, s, torch.ones_like(s))
    dev = torch.device(device) if device is not None else model_device(model)
    x0, s = x0.to(dev, model_dtype(model)), s.to(dev, model_dtype(model))
    hdims = spatial_dims(da, required=False)
    axes = [da.dims.index(d) for d in hdims] if hdims else []
    with eval_mode(model):
        with torch.no_grad():
            out_shape = tuple(model(x0[:1]).shape[1:])
        bound = as_target(target).bind(out_shape, start, x0.shape[0], layout.sample_dim)
        if bound.extra:
            raise ConfigError("optimise_input takes targets without per-sample masks")
        fwd = TargetModule(model, bound.reducer).to(dev)
        params = [p for p in fwd.parameters()]
        req = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        z = torch.zeros_like(x0, requires_grad=True)
        opt = torch.optim.Adam([z], lr=lr)
        with torch.enable_grad():
            t_start = fwd(x0).detach().float().cpu().numpy()
            for _ in range(int(steps)):
                opt.zero_grad()
                value = fwd(x0 + s * z)
                penalty = l2 * z.pow(2).flatten(1).mean(1)
                for a in axes:
                    penalty = penalty + smoothness * torch.diff(z, dim=a).pow(2).flatten(1).mean(1)
                loss = -(value - penalty).sum()
                loss.backward()
                opt.step()
            with torch.no_grad():
                x_opt = (x0 + s * z).detach()
                t_end = fwd(x_opt).float().cpu().numpy()
        for p, r in zip(params, req):
            p.requires_grad_(r)
    attrs = {"method": "backwards optimisation", "target": bound.description,
             "target_at_start": [float(v) for v in t_start], "target_at_end": [float(v) for v in t_end],
             "steps": int(steps), "lr": float(lr), "l2": float(l2), "smoothness": float(smoothness)}
    out = layout.unstack(x_opt.float().cpu().numpy(), start, "optimised_input", attrs)
    if isinstance(start, xr.Dataset):
        for v in out.data_vars:
            out[v].attrs = {**start[v].attrs, **attrs}
    else:
        out.attrs = {**start.attrs, **attrs}
        out.name = start.name or "optimised_input"
    return out
