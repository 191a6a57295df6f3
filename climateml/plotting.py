"""Figures students and researchers look at: maps, series, learning curves, metric comparisons.

Every map goes through :func:`plot_field` (any (lat, lon) field) and :func:`map_axes`: longitude and
latitude axes in degrees and coastlines drawn offline (:mod:`climateml.geography`), so a later task's maps
look like this lab's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Collection, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import xarray as xr

from climateml.metrics import global_mean, global_std


def _nearest_year(da: xr.DataArray, year: int) -> int:
    return int(da["time"].values[np.abs(da["time"].values - year).argmin()])


def _edges(centres: np.ndarray, single_span: float, clip: tuple[float, float] | None = None) -> np.ndarray:
    """Cell edges half-way between centres; a single cell spans ``single_span`` degrees around its centre."""
    c = np.asarray(centres, dtype=float)
    if len(c) == 1:
        edges = np.array([c[0] - single_span / 2, c[0] + single_span / 2])
    else:
        mid = (c[1:] + c[:-1]) / 2
        edges = np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])
    return np.clip(edges, *clip) if clip else edges


def map_axes(ax: plt.Axes, lat, lon, coastlines: bool = True, max_ticks: int = 7) -> plt.Axes:
    """Make ``ax`` a map of the grid (lat, lon) [degrees]: extent of the grid's cells, ticks labelled
    60°E / 30°S, an equal-degree aspect near the centre, and coastlines (drawn offline from the
    package's land mask, see :func:`climateml.geography.add_coastlines`).

    A single-cell axis (a 1 x 1 grid) spans the whole sphere along it, as the cell does.
    """
    from climateml import geography

    lat, lon = np.atleast_1d(np.asarray(lat, float)), np.atleast_1d(np.asarray(lon, float))
    # format_map_axes takes cell centres; two centres whose cells together span a lone cell's extent
    lat_c = lat if len(lat) > 1 else np.array([-45.0, 45.0])
    lon_c = lon if len(lon) > 1 else lon[0] + np.array([-90.0, 90.0])
    geography.format_map_axes(ax, lon_c, lat_c, max_ticks=max_ticks)
    if coastlines:
        geography.add_coastlines(ax, lon_range=ax.get_xlim())
    ax.set_xlabel(""), ax.set_ylabel("")
    return ax


def plot_field(ax: plt.Axes, field: xr.DataArray, cmap: str = "RdBu_r", vmin: float | None = None,
               vmax: float | None = None, title: str | None = None, coastlines: bool = True, **kwargs):
    """Draw a (lat, lon) field on ``ax`` as a map (cells as drawn by pcolormesh, degree axes, coastlines).

    The field may be on 0..360 or -180..180 longitudes, with latitudes ascending or descending; it is
    drawn as it is stored. Returns the QuadMesh (for a colorbar).
    """
    extra = [d for d in field.dims if d not in ("lat", "lon")]
    if extra or "lat" not in field.dims or "lon" not in field.dims:
        raise ValueError(f"plot_field needs a (lat, lon) field, got dims {tuple(field.dims)}")
    field = field.transpose("lat", "lon").sortby("lat").sortby("lon")
    lat, lon = field["lat"].values, field["lon"].values
    mesh = ax.pcolormesh(_edges(lon, 360.0), _edges(lat, 180.0, (-90.0, 90.0)), np.asarray(field.values),
                         cmap=cmap, vmin=vmin, vmax=vmax, shading="flat", **kwargs)
    map_axes(ax, lat, lon, coastlines=coastlines)
    if title:
        ax.set_title(title, fontsize=8)
    return mesh


def _map_grid(nrow: int, ncol: int, lat, lon, panel_width: float = 3.3, extra_height: float = 0.75):
    """A figure of nrow x ncol map panels sized to the maps' aspect, so constrained layout leaves no gaps."""
    lat, lon = np.atleast_1d(lat), np.atleast_1d(lon)
    lat_span = np.ptp(_edges(lat, 180.0, (-90.0, 90.0)))
    lon_span = np.ptp(_edges(lon, 360.0))
    mid = np.deg2rad(np.mean(_edges(lat, 180.0, (-90.0, 90.0))[[0, -1]]))
    aspect = min(lat_span / lon_span / max(np.cos(mid), 1e-6), 2.0 * lat_span / lon_span) if lon_span else 0.5
    panel_height = panel_width * aspect + 0.3  # map, title and tick labels
    return plt.subplots(nrow, ncol, figsize=(panel_width * ncol + 0.3, panel_height * nrow + extra_height),
                        squeeze=False, constrained_layout=True)


def plot_maps(truth: xr.DataArray, predictions: Mapping[str, xr.DataArray], years: Sequence[int] = (2030, 2050, 2100),
              vmax: float = 6.0, cmap: str = "RdBu_r", units: str = "K") -> plt.Figure:
    """Rows: years; columns: truth, each prediction, and each prediction minus truth (diverging colours).

    Every panel is a map with longitude/latitude axes in degrees and coastlines; fields share the
    colour range ±``vmax``, differences ±``vmax``/3.
    """
    years = [y for y in dict.fromkeys(_nearest_year(truth, y) for y in years)]
    ncol = 1 + 2 * len(predictions)
    fig, axes = _map_grid(len(years), ncol, truth["lat"].values, truth["lon"].values)
    for r, year in enumerate(years):
        panels = [("truth", truth.sel(time=year), vmax)]
        panels += [(name, p.sel(time=year), vmax) for name, p in predictions.items()]
        panels += [(f"{name} - truth", p.sel(time=year) - truth.sel(time=year), vmax / 3) for name, p in predictions.items()]
        for c, (title, field, lim) in enumerate(panels):
            ax = axes[r, c]
            mesh = plot_field(ax, field, cmap=cmap, vmin=-lim, vmax=lim, title=f"{title}, {year}")
            if r == len(years) - 1:
                fig.colorbar(mesh, ax=axes[:, c].tolist(), orientation="horizontal", shrink=0.8, aspect=30,
                             label=f"{'difference' if c > len(predictions) else truth.name or 'field'} ({units})")
    return fig


def plot_ensemble_spread(members: xr.DataArray, years: Sequence[int] = (2030, 2050, 2100), units: str = "K") -> plt.Figure:
    """Maps of the standard deviation across ensemble members (dimension ``member``) for the given years."""
    years = [y for y in dict.fromkeys(_nearest_year(members, y) for y in years)]
    spread = members.std("member")
    vmax = float(spread.sel(time=years).max()) or 1.0
    fig, axes = _map_grid(1, len(years), members["lat"].values, members["lon"].values, extra_height=0.8)
    for ax, year in zip(axes[0], years):
        mesh = plot_field(ax, spread.sel(time=year), cmap="viridis", vmin=0, vmax=vmax,
                          title=f"ensemble spread, {year}")
    fig.colorbar(mesh, ax=axes[0].tolist(), orientation="horizontal", shrink=0.6, aspect=30,
                 label=f"standard deviation across {members.sizes['member']} members ({units})")
    return fig


def plot_global_mean(truth: xr.DataArray, predictions: Mapping[str, xr.DataArray], units: str = "K",
                     spread_of: Sequence[str] | None = None) -> plt.Figure:
    """Global (cos-lat) mean over time, with the spatial spread (±1 std over the grid) shaded.

    The spread is shaded for the truth and for the names in ``spread_of`` (default: the first
    prediction, i.e. the model); other predictions (baselines) are drawn as lines only, so many
    series stay readable. A prediction with a ``member`` dimension is drawn as its ensemble mean, with
    the ensemble's min-max range of the global mean shaded as well.
    """
    fig, ax = plt.subplots(figsize=(8, 4), constrained_layout=True)
    series = {"truth": truth, **predictions}
    shaded = {"truth", *(list(predictions)[:1] if spread_of is None else spread_of)}
    for i, (name, da) in enumerate(series.items()):
        colour = f"C{i}"
        mean_da = da.mean("member") if "member" in da.dims else da
        g = global_mean(mean_da)
        t = da["time"].values
        main = name in shaded
        ax.plot(t, g, color=colour, label=name, lw=2 if name == "truth" else (1.6 if main else 1.2),
                ls="-" if main else "--", zorder=3 if main else 2)
        if main:
            s = global_std(mean_da)
            ax.fill_between(t, g - s, g + s, color=colour, alpha=0.12, lw=0)
        if "member" in da.dims and da.sizes["member"] > 1:
            members = global_mean(da)
            ax.fill_between(t, members.min("member"), members.max("member"), color=colour, alpha=0.35,
                            label=f"{name}: ensemble range ({da.sizes['member']} members)")
    ax.set_xlabel("year"), ax.set_ylabel(f"global mean ({units})")
    ax.set_title(f"Global mean (cos-latitude weighted); shading: ±1 std over the grid ({', '.join(s for s in series if s in shaded)})",
                 fontsize=9)
    ax.legend(fontsize=8)
    return fig


def plot_point_series(truth: xr.DataArray, predictions: Mapping[str, xr.DataArray], lat: float, lon: float,
                      place: str = "", units: str = "K") -> plt.Figure:
    """The series at the grid cell nearest (lat, lon); lon may be given in -180..180 or 0..360.

    The first prediction (the model) is drawn solid, the others (baselines) dashed.
    """
    from climateml.geography import lat_label, lon_label

    if float(truth["lon"].max()) > 180 and lon < 0:
        lon += 360.0
    elif float(truth["lon"].min()) < 0 and lon > 180:
        lon -= 360.0
    fig, ax = plt.subplots(figsize=(8, 3.5), constrained_layout=True)
    for i, (name, da) in enumerate({"truth": truth, **predictions}.items()):
        point = da.sel(lat=lat, lon=lon, method="nearest")
        if "member" in point.dims:
            ax.fill_between(point["time"], point.min("member"), point.max("member"), color=f"C{i}", alpha=0.3)
            point = point.mean("member")
        ax.plot(point["time"], point, color=f"C{i}", label=name, ls="--" if i > 1 else "-",
                lw=1.2 if i > 1 else 1.6)
    cell = truth.sel(lat=lat, lon=lon, method="nearest")
    where = f"grid cell at {lat_label(float(cell.lat), 1)}, {lon_label(float(cell.lon), 1)}"
    ax.set_title(f"{place} ({where})" if place else where)
    ax.set_xlabel("year"), ax.set_ylabel(units), ax.legend(fontsize=8)
    return fig


#: parts of a score's name (between underscores) that mark a skill score or an overlap, for which higher is
#: better: ``r2``, ``mean_iou``, ``iou_tc``, ``csi_1.0``, ``fss_8km`` ...; any other score is an error
HIGHER_IS_BETTER_PARTS = frozenset({"acc", "accuracy", "csi", "pod", "fss", "iou", "r2", "precision", "recall",
                                    "f1", "ets", "hss"})
#: parts of a signed score's name whose best value is 0 (``bias``)
BEST_AT_ZERO_PARTS = frozenset({"bias"})
#: the short mark of each direction, put after a score's name where one panel mixes directions
DIRECTION_MARKS = {"lower": "↓", "higher": "↑", "closer to 0": "→0"}


def better_direction(key: str, higher_is_better: Collection[str] | None = None) -> str:
    """Which values of the score ``key`` are better: "higher", "lower" or "closer to 0".

    ``higher_is_better`` names the keys for which higher is better; None uses the default rule: a key
    with a part in :data:`HIGHER_IS_BETTER_PARTS` (skill scores, overlaps). A key that is not higher-better
    and has a part in :data:`BEST_AT_ZERO_PARTS` (a bias) is best at 0; every other key is an error
    (lower is better).
    """
    parts = set(key.lower().split("_"))
    higher = key in higher_is_better if higher_is_better is not None else bool(parts & HIGHER_IS_BETTER_PARTS)
    if higher:
        return "higher"
    return "closer to 0" if parts & BEST_AT_ZERO_PARTS else "lower"


def read_history(history: str | Path | pd.DataFrame) -> pd.DataFrame:
    """A Lightning CSVLogger ``metrics.csv`` (a path, or the DataFrame already read)."""
    return history if isinstance(history, pd.DataFrame) else pd.read_csv(history)


def epoch_curve(df: pd.DataFrame, key: str) -> pd.Series | None:
    """The last value of ``key`` logged in each epoch (index: epoch), or None when ``key`` was never logged."""
    return df.dropna(subset=[key]).groupby("epoch")[key].last() if key in df else None


def plot_loss_panel(ax: plt.Axes, histories: Mapping[str, str | Path | pd.DataFrame], loss_label: str,
                    mark_best: bool = True, log_y: bool = False) -> plt.Axes:
    """Training (solid) and validation (dashed) loss per epoch on ``ax``, one colour per run, from CSVLogger
    ``metrics.csv`` files; the y axis is labelled ``loss_label`` (what the loss is).

    With ``mark_best``, the lowest validation loss is circled: the weights early stopping restores and the
    checkpoint keeps when they monitor ``val_loss``. With ``log_y``, a log y axis when every loss drawn is
    positive.
    """
    from matplotlib.ticker import MaxNLocator

    drawn = []
    for i, (name, hist) in enumerate(histories.items()):
        df = read_history(hist)
        for key, style in (("train_loss", "-"), ("val_loss", "--")):
            d = epoch_curve(df, key)
            if d is not None:
                ax.plot(d.index, d.values, style, color=f"C{i}", label=f"{name} {key.split('_')[0]}")
                drawn.append(d.values)
        if mark_best and "val_loss" in df and df["val_loss"].notna().any():
            best = df.loc[df["val_loss"].idxmin()]
            where = f"epoch {int(best['epoch'])}" + (f", step {int(best['step'])}" if "step" in df else "")
            ax.plot(best["epoch"], best["val_loss"], "o", color=f"C{i}", mfc="none", ms=8,
                    label=f"{name} best (kept), {where}")
    values = np.concatenate(drawn) if drawn else np.array([])
    if log_y and len(values) and (values > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("epoch"), ax.set_ylabel(loss_label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7)
    return ax


def plot_learning_curves(histories: Mapping[str, str | Path | pd.DataFrame],
                         loss_label: str = "loss (the training objective)",
                         metrics: Mapping[str, str] | None = None, metric_label: str | None = None,
                         metric_title: str | None = None, best: str | None = None, mark_best_loss: bool = True,
                         loss_title: str | None = None, title: str | None = "Learning curves", log_y: bool = True,
                         metric_ylim: tuple[float, float] | None = None,
                         figsize: tuple[float, float] | None = None) -> plt.Figure:
    """Learning curves from Lightning CSVLogger ``metrics.csv`` files (paths or DataFrames), one colour per run.

    The loss panel (:func:`plot_loss_panel`): training and validation loss per epoch, y label ``loss_label``
    (what the loss is, e.g. "MSE on standardised tas"), on a log axis with ``log_y``, the lowest validation loss
    circled with ``mark_best_loss`` (the weights kept when early stopping and the checkpoint monitor
    ``val_loss``). Alone, the panel is titled ``title``.

    With ``metrics`` ({key logged: label in the legend}), a second panel draws each key per epoch (line
    styles solid, dashed, dotted, dash-dot in the order given; y label ``metric_label``, limits
    ``metric_ylim``); ``best`` ("max" or "min") dots the best epoch of the first key, where the weights kept
    are chosen by that score instead of the loss. The two panels are titled ``loss_title`` and
    ``metric_title``, the figure ``title``.
    """
    from matplotlib.ticker import MaxNLocator

    if best not in (None, "max", "min"):
        raise ValueError(f"best must be None, 'max' or 'min', got {best!r}")
    if not metrics:
        fig, ax_loss = plt.subplots(figsize=figsize or (7, 4), constrained_layout=True)
        plot_loss_panel(ax_loss, histories, loss_label, mark_best=mark_best_loss, log_y=log_y)
        ax_loss.set_title(loss_title or title or "")
        return fig
    fig, (ax_loss, ax) = plt.subplots(1, 2, figsize=figsize or (11, 3.6), constrained_layout=True)
    plot_loss_panel(ax_loss, histories, loss_label, mark_best=mark_best_loss, log_y=log_y)
    for i, (name, hist) in enumerate(histories.items()):
        df = read_history(hist)
        for j, (key, label) in enumerate(metrics.items()):
            d = epoch_curve(df, key)
            if d is None:
                continue
            ax.plot(d.index, d.values, ("-", "--", ":", "-.")[j % 4], color=f"C{i}", label=f"{name} {label}")
            if best and j == 0 and len(d):
                at = d.idxmax() if best == "max" else d.idxmin()
                ax.plot([at], [d[at]], "o", color=f"C{i}", ms=5)
    ax.set_xlabel("epoch"), ax.set_ylabel(metric_label or "")
    if metric_ylim is not None:
        ax.set_ylim(*metric_ylim)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    ax_loss.set_title(loss_title or "", fontsize=9), ax.set_title(metric_title or "", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_metric_comparison(metrics: Mapping[str, Mapping[str, Mapping[str, float]]],
                           keys: Sequence[str] = ("nrmse_spatial", "nrmse_global", "nrmse_total"),
                           higher_is_better: Collection[str] | None = None) -> plt.Figure:
    """Bars of each metric for the model and each baseline (all the names in ``metrics``), one panel per target.

    Each panel's title says which way is better (see :func:`better_direction`; ``higher_is_better`` names
    the keys for which higher is better, None: the default rule). A panel whose scores go different ways
    marks each score with an arrow (lower, higher, closer to 0) and its title explains the arrows.
    """
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5), squeeze=False, constrained_layout=True)
    for ax, (target, by_model) in zip(axes[0], metrics.items()):
        present = [k for k in keys if all(k in m for m in by_model.values())] or ["rmse"]
        x = np.arange(len(present))
        width = 0.8 / len(by_model)
        for i, (name, m) in enumerate(by_model.items()):
            vals = [m[k] for k in present]
            bars = ax.bar(x + i * width, vals, width, label=name)
            ax.bar_label(bars, fmt="%.3f", fontsize=7)
        directions = [better_direction(k, higher_is_better) for k in present]
        shown = list(dict.fromkeys(directions))
        if len(shown) == 1:
            labels, title = present, f"{target}: test scores ({shown[0]} is better)"
        else:  # the arrows explained on a second line
            labels = [f"{k} {DIRECTION_MARKS[d]}" for k, d in zip(present, directions)]
            title = f"{target}: test scores\n" + ", ".join(f"{DIRECTION_MARKS[d]} {d} is better" for d in shown)
        ax.set_xticks(x + width * (len(by_model) - 1) / 2, labels, fontsize=8)
        ax.set_title(title, fontsize=10 if len(shown) == 1 else 9), ax.legend(fontsize=8)
    return fig


def save(fig: plt.Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (folders made as needed) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
