"""Scores, baselines (persistence, optical flow) and figures of radar nowcasting: what the generic evaluator calls.

Every score is in mm/h and computed per lead time over every test window and valid radar cell (NaN
outside the radar's range is left out), then averaged over lead times. Categorical scores use one
convention: an event is ``rain >= threshold``. FSS sums the squared fraction differences over every
window before the ratio (not a mean of per-window FSS).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import xarray as xr

from climateml import plotting
from climateml.contracts import NowcastBatchData, NowcastData, require
from climateml.errors import ConfigError
from climateml.evaluation.base import Evaluation
from climateml.writers import synchronous
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
        headline: the scores the summary's verdict names (which entry won each, and by how much), each with the
            direction that is better ("higher" or "lower").
    """

    def __init__(self, baselines: list[str] = ["persistence", "optical_flow"],
                 optical_flow_method: str = "lucas-kanade", thresholds: list[float] = [0.5, 1.0, 5.0, 10.0],
                 fss_scales_km: list[float] = [1, 2, 4, 8, 16, 32], fss_threshold: float = 1.0,
                 figure_threshold: float = 1.0,
                 summary_keys: list[str] = ["mae", "rmse", "csi_1.0", "csi_5.0"],
                 comparison_keys: list[str] = ["mae", "rmse", "csi_0.5", "csi_1.0", "csi_5.0", "csi_10.0"],
                 headline: dict[str, str] = {"csi_1.0": "higher", "mae": "lower"}, **options):
        super().__init__(summary_keys=summary_keys, comparison_keys=comparison_keys, headline=headline, **options)
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
        if self.baseline_names:
            require(datamodule, NowcastData, f"evaluation {type(self).__name__}")
        past = datamodule.past_frames(self.split)
        if past is not None:  # the figures show the last input frame; the run empties run_state when it ends
            self.run_state["last_input"] = past[:, -1].copy()
        return {name: datamodule.to_xarray(self._extrapolate(name, past, datamodule.n_out), self.split)
                for name in self.baseline_names}

    def streams(self, datamodule) -> bool:
        """Batch by batch for a DataModule that serves its batches' windows (:class:`NowcastBatchData`)."""
        return isinstance(datamodule, NowcastBatchData)

    def batch_baselines(self, datamodule, batch, indices) -> dict[str, dict[str, xr.Dataset]]:
        """Persistence and optical flow of one batch, from its own past frames."""
        past = datamodule.batch_past_frames(batch)
        return {name: datamodule.batch_to_xarray(self._extrapolate(name, past, datamodule.n_out), self.split,
                                                 indices, batch)
                for name in self.baseline_names}

    def _extrapolate(self, name: str, past: np.ndarray, n_out: int) -> np.ndarray:
        if name == "persistence":
            return np.asarray(persistence(past, n_out))
        # rain advected in from outside the domain is unknown: taken as dry, so every model is scored on the same cells
        return np.asarray(optical_flow_nowcast(past, n_out, method=self.optical_flow_method, fill_value=0.0))

    def statistics(self, pred: xr.DataArray, truth: xr.DataArray, variable: str) -> dict[str, np.ndarray]:
        """Per lead time, summed over the windows and cells given where both fields are finite: ``abs_error``
        (sum of |pred - truth|), ``squared_error``, ``count``; per threshold the contingency table
        ``table_<t>`` (hits, misses, false alarms, correct negatives; event ``rain >= t``); per FSS scale
        ``fss_<km>km`` (sum of squared fraction differences, sum of the reference), see
        :func:`~climateml.metrics.categorical.fss_components`."""
        spatial = [d for d in truth.dims if d not in ("time", "lead_time")]
        reduce = ["time", *spatial]
        spacing = float(np.mean([np.abs(np.diff(truth[d].values)).mean() for d in spatial]))
        self.run_state["lead_minutes"] = (truth["lead_time"].values / np.timedelta64(1, "m")).astype(float)
        # plain arrays on the same dims, aligned once: no coordinates to align at every operation
        pred, truth = xr.align(pred, truth, join="exact")
        pred = xr.DataArray(pred.transpose(*truth.dims).values, dims=truth.dims)
        truth = xr.DataArray(truth.values, dims=truth.dims)
        pred = pred.where(np.isfinite(truth)).astype(np.float64)  # sums in float64: exact enough over any split
        error = (pred - truth.astype(np.float64)).transpose("lead_time", ...)
        valid = error.notnull()
        out = {"abs_error": abs(error).sum(reduce).values, "squared_error": (error ** 2).sum(reduce).values,
               "count": valid.sum(reduce).values}
        for t in self.thresholds:
            table = categorical.contingency(pred, truth, t, dim=reduce).transpose("lead_time")
            out[f"table_{t:g}"] = np.stack([table[k].values for k in categorical.TABLE])
        for km, cells in zip(self.fss_scales_km, categorical.fss_scales_km(self.fss_scales_km, spacing)):
            parts = categorical.fss_components(pred, truth, self.fss_threshold, cells, spatial_dims=spatial, dim="time")
            out[f"fss_{km:g}km"] = np.stack([parts["mse"].transpose("lead_time").values,
                                             parts["reference"].transpose("lead_time").values])
        return out

    def scores_from_statistics(self, statistics, variable: str) -> dict:
        """MAE, RMSE [mm/h], CSI/POD/FAR per threshold and FSS per scale from the statistics summed over every
        test window and valid cell (not means of per-batch scores): per lead time under ``by_lead_time``
        (minutes), and their means over lead times; NaN where a ratio is 0 / 0."""
        s = {k: np.asarray(v, dtype=float) for k, v in statistics.items()}
        with np.errstate(invalid="ignore", divide="ignore"):
            count = np.where(s["count"] > 0, s["count"], np.nan)
            per_lead = {"mae": s["abs_error"] / count, "rmse": np.sqrt(s["squared_error"] / count)}
            for t in self.thresholds:
                table = xr.Dataset({k: ("lead_time", row) for k, row in zip(categorical.TABLE, s[f"table_{t:g}"])})
                per_lead[_threshold_key("csi", t)] = categorical.csi_from_table(table).values
                per_lead[_threshold_key("pod", t)] = categorical.pod_from_table(table).values
                per_lead[_threshold_key("far", t)] = categorical.far_from_table(table).values
            for km in self.fss_scales_km:
                mse, ref = s[f"fss_{km:g}km"]
                parts = xr.Dataset({"mse": ("lead_time", mse), "reference": ("lead_time", ref)})
                per_lead[f"fss_{km:g}km"] = categorical.fss_from_components(parts).values
        minutes = self.run_state.get("lead_minutes")
        if minutes is None:  # a DDP rank that scored no window (fewer windows than ranks) has the others' sums
            step = float(self.datamodule.spec.options["time_step_minutes"])
            minutes = step * np.arange(1, self.datamodule.n_out + 1)
        # the mean over the lead times where a score is defined (NaN only when it is defined at none)
        out: dict = {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for k, v in per_lead.items()}
        out["by_lead_time"] = {f"{m:g}min": {k: float(v[i]) for k, v in per_lead.items()} for i, m in enumerate(minutes)}
        return out

    def _wet_cells(self, truth: xr.Dataset) -> np.ndarray:
        """Per window, its cells >= ``figure_threshold`` over its lead times: the rainiest window is the figure's."""
        rain = truth["rain_rate"]
        return (rain >= self.figure_threshold).sum([d for d in rain.dims if d != "time"]).values

    def observe(self, sums, group: str, truth: xr.Dataset, indices) -> None:
        """Picks the rainiest window (:meth:`_wet_cells`) for the figure."""
        sums.pick((group, "rainiest"), self._wet_cells(truth), indices)

    def streamed_figures(self, fig_dir: Path, group: str, predictions: xr.Dataset, sums, scores) -> None:
        """The rainiest window read back (its predictions from the written file, its frames from the data) and
        the skill per lead time from the scores."""
        v = "rain_rate"
        case = sums.picks[(group, "rainiest")][0][1]
        sample = torch.utils.data.default_collate([self.datamodule.dataset(self.split)[case]])
        truth = self.datamodule.batch_truth(sample, self.split, [case])[group][v].isel(time=0)
        last = truth.isel(lead_time=0).copy(data=self.datamodule.batch_past_frames(sample)[0, -1])
        with synchronous():
            shown = predictions[v].sel(time=truth["time"].values).load()
        plotting.save(plot_sequences(truth, {str(n): shown.sel(model=n) for n in shown["model"].values},
                                     last_input=last), fig_dir / f"sequence_{group}.png")
        plotting.save(self._skill_figure(int(predictions.sizes["time"]), {n: s[v]["by_lead_time"] for n, s in scores.items()}),
                      fig_dir / f"skill_by_lead_time_{group}.png")

    def summary_figures(self, fig_dir: Path, result: dict, histories, models) -> None:
        """This task's score bars (errors: lower is better; CSI: higher is better) as ``metrics.png`` and
        learning curves (its loss and the validation MAE in mm/h) as ``learning_curves.png``."""
        plotting.save(plot_score_bars(result, self.thresholds), fig_dir / "metrics.png")
        if histories:
            plotting.save(plot_learning_curves(histories, self.loss_label(models)), fig_dir / "learning_curves.png")

    def loss_label(self, models) -> str:
        """The model's loss from its hyperparameters, e.g. "logcosh + 0.5 (1 - soft CSI)" (on the transformed
        rain scale, NaN masked: the learning curves' panel title says so)."""
        hp = getattr(models[0], "hparams", {}) if models else {}
        return str(hp.get("loss", "loss")) + (f" + {hp['csi_weight']:g} (1 - soft CSI)" if hp.get("csi_weight") else "")

    def figures(self, fig_dir: Path, group: str, truth: xr.Dataset, predictions: dict[str, xr.Dataset],
                members: xr.Dataset, scores: dict[str, dict[str, dict]]) -> None:
        v = "rain_rate"
        case = int(np.argmax(self._wet_cells(truth)))
        last = self.run_state.get("last_input")
        last_input = None if last is None else truth[v].isel(time=case, lead_time=0).copy(data=last[case])
        plotting.save(plot_sequences(truth[v].isel(time=case), {n: p[v].isel(time=case) for n, p in predictions.items()},
                                     last_input=last_input),
                      fig_dir / f"sequence_{group}.png")
        plotting.save(self._skill_figure(truth.sizes["time"], {n: s[v]["by_lead_time"] for n, s in scores.items()}),
                      fig_dir / f"skill_by_lead_time_{group}.png")

    def _skill_figure(self, n_cases: int, by_lead_time: dict[str, dict[str, dict[str, float]]]) -> plt.Figure:
        """Scores per lead time of each of ``n_cases`` predictions (``by_lead_time``: {name: its scores' ``by_lead_time``})."""
        t = self.figure_threshold
        high = max(self.thresholds) if self.thresholds else t
        high = next((x for x in sorted(self.thresholds) if x > t and x <= 5.0), high)
        fss_key = f"fss_{sorted(self.fss_scales_km)[len(self.fss_scales_km) // 2]:g}km" if self.fss_scales_km else None
        panels = [("mae", "MAE (mm/h), lower is better"),
                  (_threshold_key("csi", t), f"CSI at {t:g} mm/h, higher is better"),
                  (_threshold_key("csi", high), f"CSI at {high:g} mm/h, higher is better")]
        if fss_key:
            panels.append((fss_key, f"FSS at {self.fss_threshold:g} mm/h, {fss_key[4:-2]} km"))
        fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), constrained_layout=True)
        for i, (name, scores) in enumerate(by_lead_time.items()):
            minutes = [float(k.removesuffix("min")) for k in scores]
            for ax, (key, label) in zip(axes, panels):
                ax.plot(minutes, [s.get(key, np.nan) for s in scores.values()], "o-", color=STYLE.get(name, f"C{i}"),
                        label=name.replace("_", " "))
                ax.set_xlabel("lead time (min)"), ax.set_title(label, fontsize=9)
        for ax, (key, _) in zip(axes, panels):
            if key != "mae":
                ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"Skill per lead time over {n_cases} test nowcasts (event: rain >= threshold; "
                     "cells outside the radar's range left out)", fontsize=10)
        return fig


STYLE = {"model": "C0", "persistence": "C1", "optical_flow": "C2"}


def _threshold_key(score: str, threshold: float) -> str:
    """The key of a categorical score at a threshold [mm/h]: csi_1.0, csi_0.5, far_10.0 (whole numbers always
    written with one decimal, others as ``:g`` writes them)."""
    text = f"{threshold:g}"
    return f"{score}_{float(text):.1f}" if text.isdigit() else f"{score}_{text}"


def plot_sequences(observed: xr.DataArray, predictions: dict[str, xr.DataArray], vmax: float | None = None,
                   last_input: xr.DataArray | None = None) -> plt.Figure:
    """Rows: observed, then each model; columns: lead times (and, with ``last_input``, the last observed
    frame the nowcasts start from). Rain rate [mm/h] on a log colour scale from 0.1 mm/h, white where
    dry, grey where the radar saw nothing (there the nowcasts are not scored, and are greyed too)."""
    from matplotlib.colors import LogNorm

    rows = {"observed": observed, **predictions}
    n_lead = observed.sizes["lead_time"]
    extra = 1 if last_input is not None else 0
    vmax = vmax or max(float(np.nanpercentile(observed.values, 99.5)), 1.0)
    fig, axes = plt.subplots(len(rows), n_lead + extra, figsize=(2.0 * (n_lead + extra) + 1.2, 2.0 * len(rows) + 0.6),
                             squeeze=False, constrained_layout=True)
    ydim, xdim = observed.dims[-2:]
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("0.8")
    cmap.set_under("white")
    norm = LogNorm(vmin=0.1, vmax=vmax)
    outside = observed.isnull()

    def draw(ax, field):
        shown = field.where(field >= 0.1, 1e-3).where(~field.isnull())  # dry below the colour scale, NaN grey
        im = ax.pcolormesh(field[xdim], field[ydim], shown, cmap=cmap, norm=norm, shading="auto")
        ax.set_aspect("equal")
        ax.set_xticks([]), ax.set_yticks([])
        return im

    im = None
    for r, (name, da) in enumerate(rows.items()):
        if extra:
            ax = axes[r, 0]
            if r == 0:
                draw(ax, last_input)
                ax.set_title("now (last input)", fontsize=9)
            else:
                ax.axis("off")
        for c in range(n_lead):
            ax = axes[r, c + extra]
            field = da.isel(lead_time=c)
            im = draw(ax, field.where(~outside.isel(lead_time=c)))
            if r == 0:
                minutes = float(observed["lead_time"].values[c] / np.timedelta64(1, "m"))
                ax.set_title(f"+{minutes:g} min", fontsize=9)
        # the row's name left of its first panel: the "now" panel's in the observed row
        axes[r, extra if r else 0].set_ylabel(name.replace("_", " "), fontsize=10)
    issue = np.datetime_as_string(observed["time"].values, unit="m") if "time" in observed.coords else ""
    fig.colorbar(im, ax=axes, shrink=0.6, label="rain rate (mm/h)", extend="both")
    units = observed[xdim].attrs.get("units", "km")
    title = (f"Nowcasts issued {issue}: the rainiest test case ({xdim}, {ydim} in {units}; white: < 0.1 mm/h, "
             f"grey: outside the radar's range)")
    # wrapped to the figure's width (about 13 characters of 10-point text per inch), so few lead times clip nothing
    fig.suptitle(textwrap.fill(title, width=max(30, int(13 * fig.get_figwidth()))), fontsize=10)
    return fig


def plot_score_bars(result: dict, thresholds) -> plt.Figure:
    """Bars of the mean scores over lead times for the model and each baseline: errors (lower is better)
    and CSI per threshold (higher is better)."""
    variable, by_model = next(iter(result.items()))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), constrained_layout=True, gridspec_kw={"width_ratios": [2, 4]})
    groups = [(axes[0], ["mae", "rmse"], "errors (mm/h), lower is better"),
              (axes[1], [_threshold_key("csi", t) for t in thresholds], "CSI (event: rain >= threshold), higher is better")]
    width = 0.8 / len(by_model)
    for ax, keys, title in groups:
        keys = [k for k in keys if all(k in m for m in by_model.values())]
        x = np.arange(len(keys))
        for i, (name, m) in enumerate(by_model.items()):
            bars = ax.bar(x + i * width, [m[k] for k in keys], width, label=name.replace("_", " "),
                          color=STYLE.get(name, f"C{i}"))
            ax.bar_label(bars, fmt="%.3f", fontsize=7)
        ax.set_xticks(x + width * (len(by_model) - 1) / 2, [k.replace("csi_", "CSI ") + (" mm/h" if "csi" in k else "")
                                                            for k in keys], fontsize=8)
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{variable}: test scores, means over lead times", fontsize=10)
    return fig


def plot_learning_curves(histories: dict, loss_label: str = "loss") -> plt.Figure:
    """Training and validation loss per epoch (the model's loss on the transformed rain scale, NaN masked;
    y label ``loss_label``; the weights restored are chosen by ``val_selection``, not the loss, so no epoch is
    circled) and the training and validation MAE in mm/h (with the optical-flow base: of the nowcast given, of the
    corrected nowcast and of optical flow alone), from Lightning CSVLogger ``metrics.csv`` files: :func:`plotting.plot_learning_curves`
    with this task's keys."""
    return plotting.plot_learning_curves(
        histories, loss_label, metrics={"train_mae_mm_h": "train", "val_mae_mm_h": "val (nowcast given)",
                                        "val_mae_correction": "val, correction on",
                                        "val_mae_optical_flow": "val, optical flow alone"},
        metric_label="MAE (mm/h)", metric_title="mean absolute error (mm/h)", log_y=False, mark_best_loss=False,
        loss_title="loss (transformed rain scale, NaN masked); weights kept by val_selection")
