"""Scores, baselines (persistence, optical flow) and figures of radar nowcasting: what the generic evaluator calls.

Every score is in mm/h and computed per lead time over every test window and valid radar cell (NaN
outside the radar's range is left out), then averaged over lead times. Categorical scores use one
convention: an event is ``rain >= threshold``. FSS sums the squared fraction differences over every
window before the ratio (not a mean of per-window FSS).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from climateml import metrics, plotting
from climateml.errors import ConfigError
from climateml.evaluation.base import Evaluation
from climateml.metrics import categorical
from climateml.models.extrapolation import METHODS, optical_flow_nowcast, persistence

BASELINES = ("persistence", "optical_flow")


class NowcastEvaluation(Evaluation):
    """Nowcast verification against persistence and optical-flow extrapolation, scored by the same code.

    Args:
        baselines: any of "persistence" (the last frame) and "optical_flow" (motion from the past
            frames, semi-Lagrangian advection of the last one).
        optical_flow_method: "lucas-kanade" (ours) or "pysteps" (when installed).
        thresholds: rain rates [mm/h] of the CSI, POD, FAR and FSS events (``>=``).
        fss_scales_km: neighbourhood sizes [km] of the FSS, turned into odd numbers of grid cells.
        fss_threshold: the rain rate [mm/h] of the FSS event.
        figure_thresholds: threshold [mm/h] of the skill-per-lead-time figure's CSI panel.
    """

    def __init__(self, baselines: list[str] = ["persistence", "optical_flow"],
                 optical_flow_method: str = "lucas-kanade", thresholds: list[float] = [0.5, 1.0, 5.0, 10.0],
                 fss_scales_km: list[float] = [1, 2, 4, 8, 16, 32], fss_threshold: float = 1.0,
                 figure_threshold: float = 1.0,
                 summary_keys: list[str] = ["mae", "rmse", "csi_1.0", "csi_5.0"],
                 comparison_keys: list[str] = ["mae", "rmse", "csi_0.5", "csi_1.0", "csi_5.0", "csi_10.0"], **options):
        super().__init__(summary_keys=summary_keys, comparison_keys=comparison_keys, **options)
        unknown = [b for b in baselines if b not in BASELINES]
        if unknown:
            raise ConfigError(f"evaluation.baselines: unknown {unknown}; choose from {list(BASELINES)}")
        if optical_flow_method not in METHODS:
            raise ConfigError(f"evaluation.optical_flow_method must be one of {list(METHODS)}, got {optical_flow_method!r}")
        self.baseline_names, self.optical_flow_method = list(baselines), optical_flow_method
        self.thresholds = [float(t) for t in thresholds]
        self.fss_scales_km, self.fss_threshold = [float(s) for s in fss_scales_km], float(fss_threshold)
        self.figure_threshold = float(figure_threshold)

    def baselines(self, datamodule) -> dict[str, dict[str, xr.Dataset]]:
        past = datamodule.past_frames(self.split)
        out = {}
        for name in self.baseline_names:
            if name == "persistence":
                pred = persistence(past, datamodule.n_out)
            else:
                # rain advected in from outside the domain is unknown: taken as dry, so every model is
                # scored on the same cells
                pred = optical_flow_nowcast(past, datamodule.n_out, method=self.optical_flow_method, fill_value=0.0)
            out[name] = datamodule.to_xarray(np.asarray(pred), self.split)
        return out

    def score_variable(self, pred: xr.DataArray, truth: xr.DataArray, variable: str) -> dict:
        """MAE, RMSE [mm/h], CSI/POD/FAR per threshold and FSS per scale: means over lead times, and
        ``by_lead_time`` with each score per lead time (minutes)."""
        spatial = [d for d in truth.dims if d not in ("time", "lead_time")]
        reduce = ["time", *spatial]
        pred = pred.where(np.isfinite(truth))
        per_lead = {"mae": metrics.mae(pred, truth, dim=reduce, weights=None),
                    "rmse": metrics.rmse(pred, truth, dim=reduce, weights=None)}
        for t in self.thresholds:
            table = categorical.contingency(pred, truth, t, dim=reduce)
            per_lead[f"csi_{t:g}"] = categorical.csi_from_table(table)
            per_lead[f"pod_{t:g}"] = categorical.pod_from_table(table)
            per_lead[f"far_{t:g}"] = categorical.far_from_table(table)
        spacing = float(np.mean([np.abs(np.diff(truth[d].values)).mean() for d in spatial]))
        for km, cells in zip(self.fss_scales_km, categorical.fss_scales_km(self.fss_scales_km, spacing)):
            per_lead[f"fss_{km:g}km"] = categorical.fss(pred, truth, self.fss_threshold, cells, spatial_dims=spatial,
                                                        dim="time")
        minutes = (truth["lead_time"].values / np.timedelta64(1, "m")).astype(float)
        out: dict = {k: float(v.mean("lead_time")) for k, v in per_lead.items()}
        out = {_key(k): v for k, v in out.items()}
        out["by_lead_time"] = {f"{m:g}min": {_key(k): float(v.isel(lead_time=i)) for k, v in per_lead.items()}
                               for i, m in enumerate(minutes)}
        return out

    def aggregate(self, per_group: list[dict]) -> dict:
        if len(per_group) == 1:
            return per_group[0]
        return super().aggregate([{k: v for k, v in g.items() if k != "by_lead_time"} for g in per_group])

    def figures(self, fig_dir: Path, group: str, truth: xr.Dataset, predictions: dict[str, xr.Dataset],
                members: xr.Dataset) -> None:
        v = "rain_rate"
        wet = (truth[v] >= self.figure_threshold).sum([d for d in truth[v].dims if d != "time"]).values
        case = int(np.argmax(wet))
        plotting.save(plot_sequences(truth[v].isel(time=case), {n: p[v].isel(time=case) for n, p in predictions.items()}),
                      fig_dir / f"sequence_{group}.png")
        plotting.save(self._skill_figure(truth[v], {n: p[v] for n, p in predictions.items()}),
                      fig_dir / f"skill_by_lead_time_{group}.png")

    def _skill_figure(self, truth: xr.DataArray, predictions: dict[str, xr.DataArray]) -> plt.Figure:
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
        t = self.figure_threshold
        for i, (name, pred) in enumerate(predictions.items()):
            scores = self.score_variable(pred, truth, "rain_rate")["by_lead_time"]
            minutes = [float(k.removesuffix("min")) for k in scores]
            for ax, key, label in ((axes[0], "mae", "MAE (mm/h)"), (axes[1], "rmse", "RMSE (mm/h)"),
                                   (axes[2], _key(f"csi_{t:g}"), f"CSI at {t:g} mm/h")):
                ax.plot(minutes, [s[key] for s in scores.values()], "o-", color=f"C{i}", label=name)
                ax.set_xlabel("lead time (min)"), ax.set_ylabel(label)
        axes[2].set_ylim(0, 1), axes[0].legend(fontsize=8)
        fig.suptitle("Skill per lead time on the test windows (events: rain >= threshold)")
        return fig


def _key(name: str) -> str:
    """csi_1 -> csi_1.0: thresholds always written with a decimal, as in the issue's keys."""
    head, _, tail = name.partition("_")
    if head in ("csi", "pod", "far") and tail.replace(".", "", 1).isdigit() and "." not in tail:
        return f"{head}_{float(tail):.1f}"
    return name


def plot_sequences(observed: xr.DataArray, predictions: dict[str, xr.DataArray], vmax: float | None = None) -> plt.Figure:
    """Rows: observed, then each model; columns: lead times. Rain rate [mm/h] on a log colour scale, grey
    where the radar saw nothing."""
    from matplotlib.colors import LogNorm

    rows = {"observed": observed, **predictions}
    n_lead = observed.sizes["lead_time"]
    vmax = vmax or max(float(np.nanpercentile(observed.values, 99.5)), 1.0)
    fig, axes = plt.subplots(len(rows), n_lead, figsize=(2.1 * n_lead + 1, 2.0 * len(rows) + 0.5), squeeze=False,
                             constrained_layout=True)
    ydim, xdim = observed.dims[-2:]
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("0.85")
    cmap.set_under("white")
    for r, (name, da) in enumerate(rows.items()):
        for c in range(n_lead):
            ax = axes[r, c]
            field = da.isel(lead_time=c)
            im = ax.pcolormesh(field[xdim], field[ydim], field.where(field > 0, 1e-3), cmap=cmap,
                               norm=LogNorm(vmin=0.1, vmax=vmax), shading="auto")
            ax.set_aspect("equal")
            ax.set_xticks([]), ax.set_yticks([])
            minutes = float(observed["lead_time"].values[c] / np.timedelta64(1, "m"))
            if r == 0:
                ax.set_title(f"+{minutes:g} min", fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    issue = np.datetime_as_string(observed["time"].values, unit="m") if "time" in observed.coords else ""
    fig.colorbar(im, ax=axes, shrink=0.6, label="rain rate (mm/h)", extend="both")
    fig.suptitle(f"Nowcasts issued {issue} (x, y in {observed[xdim].attrs.get('units', 'km')}; grey: no radar)")
    return fig
