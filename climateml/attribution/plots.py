"""Figures of attribution maps and diagnostics: per-channel overlays on the input's map, cluster means,
importance bars, backwards-optimised inputs, and for feature inputs (sample, feature) bars per feature and
lines per year.

Attribution is always drawn with a diverging colour scale centred on zero (red raises the target, blue
lowers it), symmetric about zero at a high percentile of |relevance| so one extreme cell does not wash
out the map. On lat/lon grids coastlines are drawn from :mod:`climateml.geography` when it can (no
download), and axes carry degree labels; on projected y/x grids axes are in the coordinates' units.
"""

from __future__ import annotations

import itertools
import textwrap
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from climateml import plotting
from climateml.attribution.adapter import stacked
from climateml.grid import spatial_dims
from climateml.plotting import save  # noqa: F401  (re-exported: plots.save)

ATTRIBUTION_CMAP = "RdBu_r"


def symmetric_limit(values: Any, percentile: float = 99.0) -> float:
    """The colour limit of a diverging scale: the ``percentile`` of |values| (1 if all are zero or NaN)."""
    a = np.abs(np.asarray(values, dtype=float))
    a = a[np.isfinite(a)]
    lim = float(np.percentile(a, percentile)) if a.size else 0.0
    return lim if lim > 0 else (float(a.max()) if a.size and a.max() > 0 else 1.0)


def draw_map(ax, field: xr.DataArray, cmap: str = ATTRIBUTION_CMAP, vmin: float | None = None, vmax: float | None = None,
             contour: xr.DataArray | None = None, coastlines: bool = True, title: str = "", n_contours: int = 7,
             boxes: Sequence[Mapping[str, Sequence[float]]] = ()):
    """Draw a 2-d field on its horizontal dims (lat/lon or y/x) with optional contours of another field and
    dashed outlines of ``boxes`` (region specs such as ``{"lat": (60, 70), "lon": (22.5, 37.5)}`` or y/x boxes).

    Returns the mappable (for a colorbar).
    """
    hdims = spatial_dims(field, required=False) or tuple(field.dims[-2:])
    f = field.transpose(*hdims)
    on_map = hdims == ("lat", "lon")
    if on_map:  # plot_field draws the field sorted by lat and lon: so are the contours drawn over it
        f = f.sortby("lat").sortby("lon")
        contour = contour.transpose(*hdims).sortby("lat").sortby("lon") if contour is not None else None
    ycoord = f[hdims[0]].values if hdims[0] in f.coords else np.arange(f.shape[0])
    xcoord = f[hdims[1]].values if hdims[1] in f.coords else np.arange(f.shape[1])
    if on_map:  # cells, degree axes and coastlines as on every map of the package
        im = plotting.plot_field(ax, f, cmap=cmap, vmin=vmin, vmax=vmax, coastlines=coastlines)
    else:
        im = ax.pcolormesh(xcoord, ycoord, f.values, cmap=cmap, vmin=vmin, vmax=vmax, shading="auto")
        units = f[hdims[1]].attrs.get("units", "") if hdims[1] in f.coords else ""
        ax.set_aspect("equal")
        ax.set_xlabel(f"{hdims[1]} ({units})" if units else hdims[1], fontsize=7)
        ax.set_ylabel(f"{hdims[0]} ({units})" if units else hdims[0], fontsize=7)
    if contour is not None:
        c = contour.transpose(*hdims).values
        if np.nanstd(c) > 0:
            ax.contour(xcoord, ycoord, c, levels=n_contours, colors="0.25", linewidths=0.6)
    for box in boxes:
        ylo, yhi = sorted(box.get(hdims[0], (np.min(ycoord), np.max(ycoord))))
        xlo, xhi = box.get(hdims[1], (np.min(xcoord), np.max(xcoord)))
        ax.plot([xlo, xhi, xhi, xlo, xlo], [ylo, ylo, yhi, yhi, ylo], color="k", ls="--", lw=1.0)
    ax.tick_params(labelsize=6)
    if title:
        ax.set_title(title, fontsize=8)
    return im


def _panels(da: xr.DataArray, hdims: tuple[str, str]) -> list[tuple[str, xr.DataArray]]:
    """(label, 2-d field) for every combination of the non-horizontal dims of ``da``."""
    others = [d for d in da.dims if d not in hdims]
    if not others:
        return [("", da)]
    out = []
    for idx in itertools.product(*[range(da.sizes[d]) for d in others]):
        sel = dict(zip(others, idx))
        label = ", ".join((f"{da[d].values[i]}" if d in ("channel", "variable") else f"{d} {da[d].values[i]}")
                          if d in da.coords else f"{d} {i}" for d, i in sel.items())
        out.append((label, da.isel(sel)))
    return out


def _sample_sel(da: xr.DataArray, sample: int | Any) -> xr.DataArray:
    dim = da.dims[0]
    return da.isel({dim: sample}) if isinstance(sample, (int, np.integer)) else da.sel({dim: sample})


def plot_attribution(attr: xr.DataArray | xr.Dataset, x: xr.DataArray | xr.Dataset | None = None, sample: int | Any = 0,
                     percentile: float = 99.0, vmax: float | None = None, coastlines: bool = True,
                     panel_size: tuple[float, float] = (3.4, 2.6), max_panels: int = 12, title: str | None = None,
                     boxes: Sequence[Mapping[str, Sequence[float]]] = ()):
    """One sample's attribution per channel on its map: a top row with the input fields (if ``x`` is given)
    and a bottom row with the attribution (diverging, centred on zero) under contours of the input.

    Inputs without horizontal dims (features) are drawn as bars, one per feature. ``sample`` is an index
    or a coordinate value of the sample dim; colour limits are shared by all channels of the sample
    (``vmax``, default the ``percentile`` of |attribution|). ``boxes``: regions outlined on every map.
    """
    a = stacked(attr)
    xs = stacked(x) if x is not None else None
    a1 = _sample_sel(a, sample)
    x1 = _sample_sel(xs, sample) if xs is not None else None
    label = a.attrs.get("method", a1.name or "attribution")
    sample_value = a1[a.dims[0]].values if a.dims[0] in a1.coords else sample
    # other coordinates along the sample dim (e.g. scenario, year) name a sample better than its position
    along = [f"{c} {a1[c].values}" for c in a.coords if c != a.dims[0] and a[c].dims == (a.dims[0],)]
    position = [f"{a.dims[0]} {sample_value}"] if a.dims[0] in a.coords or not along else []
    sample_label = ", ".join(position + along)
    title = title if title is not None else f"{label}, {sample_label}: {a.attrs.get('target', '')}"
    hdims = spatial_dims(a1, required=False)
    if hdims is None:
        flat = a1.values.reshape(-1)
        names = ([str(v) for v in a1[a1.dims[0]].values] if a1.ndim == 1 and a1.dims[0] in a1.coords
                 else [str(i) for i in range(flat.size)])
        fig, ax = plt.subplots(figsize=(max(4, 0.4 * flat.size + 2), 3), constrained_layout=True)
        colours = np.where(flat >= 0, "#b2182b", "#2166ac")
        ax.bar(range(flat.size), flat, color=colours)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(range(flat.size), names, rotation=45 if flat.size > 8 else 0, fontsize=7)
        ax.set_ylabel("attribution"), ax.set_title("\n".join(textwrap.wrap(title, 50)), fontsize=9)
        return fig
    panels = _panels(a1, hdims)[:max_panels]
    lim = vmax if vmax is not None else symmetric_limit(np.concatenate([p.values.ravel() for _, p in panels]), percentile)
    rows = 2 if x1 is not None else 1
    fig, axes = plt.subplots(rows, len(panels), figsize=(panel_size[0] * len(panels), panel_size[1] * rows + 0.5),
                             squeeze=False, constrained_layout=True)
    xpanels = dict(_panels(x1, hdims)) if x1 is not None else {}
    for c, (name, field) in enumerate(panels):
        inp = xpanels.get(name)
        if inp is not None:
            v = inp.values
            lo, hi = np.nanpercentile(v, [1, 99])
            if lo < 0 < hi:
                m = max(-lo, hi)
                im0 = draw_map(axes[0, c], inp, "PuOr_r", -m, m, coastlines=coastlines, title=f"input {name}", boxes=boxes)
            else:
                im0 = draw_map(axes[0, c], inp, "viridis", lo, hi, coastlines=coastlines, title=f"input {name}",
                               boxes=boxes)
            fig.colorbar(im0, ax=axes[0, c], shrink=0.8)
        im = draw_map(axes[rows - 1, c], field, ATTRIBUTION_CMAP, -lim, lim, contour=inp, coastlines=coastlines,
                      title=f"attribution {name}" + (" (contours: input)" if inp is not None else ""), boxes=boxes)
    fig.colorbar(im, ax=axes[rows - 1, :].tolist(), shrink=0.8, label="attribution (red raises the target)")
    fig.suptitle(title, fontsize=9)
    return fig


def plot_feature_attribution(attr: xr.DataArray | xr.Dataset, sample_axis: str | None = None, title: str | None = None,
                             panel_size: tuple[float, float] = (4.2, 2.6), max_cols: int = 3):
    """The attribution of feature inputs (sample, feature) over all samples: bars of each feature's mean
    |attribution| (its overall importance), and each feature's attribution along ``sample_axis`` (default the
    ``year`` coordinate when the samples have one, else the sample dim) over the sum of all features (grey;
    for integrated gradients and DeepLift it is target(x) - target(baseline)), one panel per ``scenario``
    when the samples carry one (``max_cols`` panels a row, shared y axis).
    """
    a = stacked(attr)
    if a.ndim != 2 or spatial_dims(a, required=False) is not None:
        raise ValueError(f"plot_feature_attribution needs (sample, feature) attribution, got {tuple(a.dims)}")
    sdim, fdim = a.dims
    names = [str(v) for v in a[fdim].values] if fdim in a.coords else [str(i) for i in range(a.sizes[fdim])]
    along_samples = lambda c: c in a.coords and a[c].dims == (sdim,)  # noqa: E731
    axis = sample_axis or ("year" if along_samples("year") else sdim)
    xvals = a[axis].values if axis in a.coords else np.arange(a.sizes[sdim])
    groups = a["scenario"].values.astype(str) if along_samples("scenario") else np.full(a.sizes[sdim], "")
    values = a.values
    label = a.attrs.get("method", a.name or "attribution")
    meaning = str(a.attrs.get("meaning", ""))
    units = meaning.rsplit("; ", 1)[-1] if "; " in meaning else ""  # e.g. "target units"
    ylabel = "attribution" + (f" ({units})" if units else "")
    title = title if title is not None else f"{label} over {a.sizes[sdim]} samples: {a.attrs.get('target', '')}"

    order = list(dict.fromkeys(groups))
    ncols = min(max_cols, len(order))
    nrows = int(np.ceil(len(order) / ncols))
    bar_width = 0.8  # the bar panel's width in panels
    fig = plt.figure(figsize=(panel_size[0] * (ncols + bar_width), panel_size[1] * nrows + 1.0),
                     constrained_layout=True)
    grid = fig.add_gridspec(nrows, ncols + 1, width_ratios=[bar_width] + [1.0] * ncols)
    ax0 = fig.add_subplot(grid[:, 0])
    ax0.bar(range(len(names)), np.nanmean(np.abs(values), axis=0), color=[f"C{j % 10}" for j in range(len(names))])
    long = len(names) > 4 or max(map(len, names)) > 6
    ax0.set_xticks(range(len(names)), names, rotation=45 if long else 0, ha="right" if long else "center", fontsize=7)
    ax0.set_ylabel("mean |attribution|" + (f" ({units})" if units else ""), fontsize=8)
    ax0.set_title("importance per feature", fontsize=8)
    ax0.tick_params(labelsize=7)
    first = None
    for k, group in enumerate(order):
        ax = fig.add_subplot(grid[k // ncols, 1 + k % ncols], sharey=first)
        first = first or ax
        rows = np.flatnonzero(groups == group)
        rows = rows[np.argsort(xvals[rows], kind="stable")]
        ax.plot(xvals[rows], values[rows].sum(axis=1), color="0.7", lw=3.0, label="sum", zorder=1)
        for j, name in enumerate(names):
            ax.plot(xvals[rows], values[rows, j], color=f"C{j % 10}", lw=1.2, label=name, zorder=2)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(group or f"per {axis}", fontsize=8)
        ax.tick_params(labelsize=7)
        if k + ncols >= len(order):  # the lowest panel of its column
            ax.set_xlabel(axis, fontsize=8)
        if k % ncols == 0:
            ax.set_ylabel(ylabel, fontsize=8)
    handles, labels = first.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=7, title="above 0: raises\nthe target",
               title_fontsize=7)
    fig.suptitle("\n".join(textwrap.wrap(title, int(40 * (ncols + bar_width)))), fontsize=9)
    return fig


def plot_maps(da: xr.DataArray | xr.Dataset, row: str | None = None, col: str | None = None, diverging: bool = True,
              percentile: float = 99.0, cmap: str | None = None, coastlines: bool = True, title: str = "",
              row_labels: Sequence[str] | None = None, colorbar_label: str = "",
              panel_size: tuple[float, float] = (3.2, 2.4), boxes: Sequence[Mapping[str, Sequence[float]]] = ()):
    """A grid of maps: ``row`` and ``col`` dims (default: the non-horizontal dims in order) of a field with
    horizontal dims; diverging (centred on zero, shared symmetric limit) or sequential colours."""
    d = stacked(da)
    hdims = spatial_dims(d, required=False)
    if hdims is None:
        raise ValueError(f"plot_maps needs (lat, lon) or (y, x) dims, got {tuple(d.dims)}")
    others = [x for x in d.dims if x not in hdims]
    if row is None and col is None:
        row, col = (others + [None, None])[:2] if len(others) >= 2 else (None, others[0] if others else None)
    extra = [x for x in others if x not in (row, col)]
    if extra:
        d = d.isel({x: 0 for x in extra})
    nr = d.sizes[row] if row else 1
    nc = d.sizes[col] if col else 1
    v = d.values
    if diverging:
        lim = symmetric_limit(v, percentile)
        vmin, vmax, cm = -lim, lim, cmap or ATTRIBUTION_CMAP
    else:
        vmin, vmax = np.nanpercentile(v, [100 - percentile, percentile])
        cm = cmap or "viridis"
    fig, axes = plt.subplots(nr, nc, figsize=(panel_size[0] * nc, panel_size[1] * nr + 0.6), squeeze=False,
                             constrained_layout=True)
    im = None
    for i in range(nr):
        for j in range(nc):
            sel = {**({row: i} if row else {}), **({col: j} if col else {})}
            f = d.isel(sel)
            parts = []
            if row:
                parts.append(row_labels[i] if row_labels is not None else f"{row} {d[row].values[i] if row in d.coords else i}")
            if col:
                parts.append(f"{d[col].values[j]}" if col in d.coords else f"{col} {j}")
            im = draw_map(axes[i, j], f, cm, vmin, vmax, coastlines=coastlines, title=", ".join(map(str, parts)),
                          boxes=boxes)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.7, label=colorbar_label)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_methods(maps: Mapping[str, xr.DataArray], sample: int = 0, channel: Mapping[str, Any] | None = None,
                 truth: xr.DataArray | None = None, coastlines: bool = True, panel_size=(3.0, 2.3), title: str = ""):
    """One sample's map from each method side by side (each on its own symmetric scale), with an optional
    ground-truth panel first. ``channel`` picks one value of the other per-sample dims, e.g. {"variable": "tas"}."""
    items = ([("ground truth", truth)] if truth is not None else []) + list(maps.items())
    n = len(items)
    ncol = min(n, 5)
    nrow = int(np.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(panel_size[0] * ncol, panel_size[1] * nrow + 0.4), squeeze=False,
                             constrained_layout=True)
    for k, (name, m) in enumerate(items):
        a = stacked(m)
        f = _sample_sel(a, sample)
        if channel:
            f = f.sel(channel)
        hd = spatial_dims(f, required=False)
        f = f.isel({d: 0 for d in f.dims if hd is None or d not in hd})
        lim = symmetric_limit(f.values)
        ax = axes[k // ncol, k % ncol]
        im = draw_map(ax, f, ATTRIBUTION_CMAP, -lim, lim, coastlines=coastlines, title=name)
        fig.colorbar(im, ax=ax, shrink=0.75)
    for k in range(n, nrow * ncol):
        axes[k // ncol, k % ncol].set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_spray(result, coastlines: bool = True, max_clusters: int = 6, title: str = "SpRAy clusters",
               boxes: Sequence[Mapping[str, Sequence[float]]] = ()):
    """Each SpRAy cluster's mean attribution map (rows) per channel (columns), titled with member counts,
    and the Laplacian's smallest eigenvalues with the eigengap that chose the number of clusters."""
    means = result.cluster_means.isel(cluster=slice(0, max_clusters))
    labels = [f"cluster {c} ({int(n)} maps)" for c, n in zip(means.cluster.values, result.counts.values)]
    hd = spatial_dims(means, required=False)
    if hd is None:
        fig, ax = plt.subplots(figsize=(6, 3), constrained_layout=True)
        flat = means.values.reshape(means.sizes["cluster"], -1)
        for c in range(flat.shape[0]):
            ax.plot(flat[c], marker="o", label=labels[c])
        ax.axhline(0, color="k", lw=0.5), ax.legend(fontsize=7), ax.set_title(title, fontsize=9)
        return fig
    others = [d for d in means.dims if d not in hd and d != "cluster"]
    fig = plot_maps(means, row="cluster", col=others[0] if others else None, coastlines=coastlines,
                    row_labels=labels, colorbar_label="mean attribution", boxes=boxes,
                    title=f"{title}: {result.n_clusters} clusters (eigengap {result.eigengap:.3f}); "
                          f"eigenvalues {', '.join(f'{v:.3f}' for v in result.eigenvalues[:6])}")
    return fig


def plot_importance(importance: xr.Dataset, title: str = "Permutation importance"):
    """Bars of the skill lost per shuffled variable (± std over repeats)."""
    dim = importance["importance"].dims[0]
    names = [str(v) for v in importance[dim].values]

    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(names) + 2), 3.2), constrained_layout=True)
    ax.bar(names, importance["importance"].values, yerr=importance["importance_std"].values, color="C0", capsize=3)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylabel(f"skill lost (unperturbed {importance.attrs.get('skill', float('nan')):.3f})", fontsize=8)
    ax.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=9)
    return fig


def plot_clever_hans(result: Mapping[str, Mapping[str, float]],
                     keys: Sequence[str] = ("relevance_mass_cue", "skill", "skill_cue_ablated", "skill_test")):
    """Grouped bars of the Clever-Hans numbers of each model (confounded vs clean)."""
    models = list(result)
    keys = [k for k in keys if all(k in result[m] for m in models)]
    x = np.arange(len(keys))
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(1.8 * len(keys) + 2, 3.4), constrained_layout=True)
    for i, m in enumerate(models):
        bars = ax.bar(x + i * width, [result[m][k] for k in keys], width, label=m)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(x + width * (len(models) - 1) / 2, keys, fontsize=8)
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=8)
    ax.set_title("Clever-Hans diagnostics: relevance on the cue, skill before / after ablating it", fontsize=9)
    return fig



def plot_sanity(results: Sequence[Any] | Any, title: str | None = None):
    """Cascading randomisation (:class:`~climateml.attribution.faithfulness.SanityResult`, one or several methods):
    Spearman rho between the trained and the randomised model's maps against the number of layers randomised
    from the output down; the band |rho| <= threshold is where a method passes. A failing method is named in
    the title."""
    results = list(results) if isinstance(results, (list, tuple)) else [results]
    fig, ax = plt.subplots(figsize=(7.6, 3.6), constrained_layout=True)
    threshold = results[0].threshold
    ax.axhspan(-threshold, threshold, color="0.9", label=f"passes: |rho| <= {threshold:g}")
    for r in results:
        ax.plot([0, *r.n_randomised], [1.0, *r.spearman], marker="o", ms=3,
                label=f"{r.method} ({'passes' if r.passed else 'FAILS'})")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("layers re-initialised, from the output layer down")
    ax.set_ylabel("Spearman rho with the trained model's maps", fontsize=8)
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    fig.legend(fontsize=7, loc="outside right upper")
    failed = [r.method for r in results if not r.passed]
    if title is None:
        title = ("Sanity check (model-parameter randomisation, Adebayo et al. 2018): "
                 + (f"FAILED by {', '.join(failed)}: the maps barely change when the model is randomised"
                    if failed else f"{results[0].method} passes" if len(results) == 1 else "every method passes"))
    ax.set_title("\n".join(textwrap.wrap(title, 70)), fontsize=9, color="C3" if failed else "k")
    return fig


def plot_method_scores(scores: Mapping[str, Mapping[str, Any]], title: str = ""):
    """Methods ranked on one run: one panel per score (:data:`~climateml.attribution.faithfulness.SCORE_DIRECTION`),
    the methods' bars sorted best first (top), the direction of "better" in the panel's title."""
    from climateml.attribution.faithfulness import SANITY_THRESHOLD, SCORE_DIRECTION

    keys = [k for k in SCORE_DIRECTION if any(k in s for s in scores.values())]
    methods = list(scores)
    fig, axes = plt.subplots(1, len(keys), figsize=(2.9 * len(keys) + 0.6, 0.42 * len(methods) + 1.6),
                             constrained_layout=True, squeeze=False)
    words = {1: "higher is better", -1: "lower is better", 0: "closer to 0 is better"}
    for ax, key in zip(axes[0], keys):
        d = SCORE_DIRECTION[key]
        vals = {m: float(scores[m].get(key, np.nan)) for m in methods}
        rank = {1: lambda v: -v, -1: lambda v: v, 0: lambda v: abs(v)}[d]
        order = sorted(methods, key=lambda m: (not np.isfinite(vals[m]), rank(vals[m]) if np.isfinite(vals[m]) else 0))
        y = np.arange(len(order))[::-1]
        colors = ["C3" if key == "randomisation_spearman" and abs(vals[m]) > SANITY_THRESHOLD else "C0" for m in order]
        ax.barh(y, [vals[m] if np.isfinite(vals[m]) else 0.0 for m in order], color=colors)
        for yi, m in zip(y, order):
            ax.text(0, yi, f" {vals[m]:.2f}", va="center", fontsize=7)
        ax.set_yticks(y, order, fontsize=7)
        ax.axvline(0, color="k", lw=0.5)
        if key == "randomisation_spearman":
            for s in (-1, 1):
                ax.axvline(s * SANITY_THRESHOLD, color="C3", lw=0.8, ls="--")
        ax.set_title(f"{key}\n({words[d]})", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(title or "Attribution methods ranked on one run (best at the top of each panel; red: fails the "
                          "sanity check)", fontsize=9)
    return fig
