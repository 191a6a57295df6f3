"""Scores, the heuristic baseline and figures of TC / AR segmentation: what the generic evaluator calls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from climateml import plotting
from climateml.evaluation.base import Evaluation
from climateml.metrics.segmentation import confusion_matrix, scores_from_confusion
from climateml.models.heuristic_detection import HeuristicDetector

CLASS_NAMES = ("background", "tc", "ar")


class SegmentationEvaluation(Evaluation):
    """Per-class IoU, precision and recall from one confusion matrix over every pixel of the test split.

    The baseline ``heuristic`` (thresholds on integrated vapour transport over long, elongated regions
    for ARs; deep pressure minima with cyclonic low-level vorticity for TCs) runs on the same raw fields
    and is scored by the same code.

    Args:
        heuristic: arguments of :class:`~climateml.models.heuristic_detection.HeuristicDetector`
            (thresholds in the units it states), or null to skip the baseline.
        figure_field: the input field drawn under the outlined masks.
        n_figure_samples: how many test dates get a mask figure.
    """

    def __init__(self, heuristic: dict | None = {}, figure_field: str = "TMQ", n_figure_samples: int = 2,
                 summary_keys: list[str] = ["mean_iou", "iou_tc", "iou_ar"],
                 comparison_keys: list[str] = ["iou_background", "iou_tc", "iou_ar", "mean_iou"], **options):
        super().__init__(summary_keys=summary_keys, comparison_keys=comparison_keys, **options)
        self.detector = None if heuristic is None else HeuristicDetector(**heuristic)
        self.figure_field, self.n_figure_samples = figure_field, n_figure_samples

    def baselines(self, datamodule) -> dict[str, dict[str, xr.Dataset]]:
        if self.detector is None:
            return {}
        fields = datamodule.fields(self.split, self._detector_fields(datamodule))
        return {"heuristic": {self.split: self.detector.predict(fields).to_dataset(name="LABELS")}}

    def _detector_fields(self, datamodule) -> list[str]:
        d = self.detector
        names = {d.psl_field, d.tmq_field, *d.tc_wind, *d.ar_wind}
        if d.tc_min_warm_core_k is not None:
            names.add(d.tc_warm_core_field)
        return sorted(names)

    def combine_members(self, members: xr.Dataset) -> xr.Dataset:
        """The ensemble's labels: argmax of the members' mean class probability."""
        prob = members["probability"].mean("member")
        out = xr.Dataset({"probability": prob, "LABELS": prob.argmax("class").astype(np.int64)})
        out["LABELS"].attrs = members["LABELS"].attrs
        return out

    def score_variable(self, pred: xr.DataArray, truth: xr.DataArray, variable: str) -> dict[str, float]:
        """IoU, precision and recall per class and mean IoU, from the confusion matrix of every test pixel."""
        return scores_from_confusion(confusion_matrix(pred, truth, len(CLASS_NAMES)), CLASS_NAMES)

    def figures(self, fig_dir: Path, group: str, truth: xr.Dataset, predictions: dict[str, xr.Dataset],
                members: xr.Dataset) -> None:
        # the dates with the most feature pixels: where a reader sees what the model found
        order = np.argsort(-(truth["LABELS"] > 0).sum(("lat", "lon")).values)[: self.n_figure_samples]
        fields = self.datamodule.fields(self.split, [self.figure_field])
        for i in order:
            date = str(truth["time"].values[i])
            field = fields[self.figure_field].sel(time=date)
            masks = {name: p["LABELS"].sel(time=date) for name, p in predictions.items()}
            plotting.save(plot_masks(field, truth["LABELS"].sel(time=date), masks, CLASS_NAMES),
                          fig_dir / f"masks_{date}.png")


def plot_masks(field: xr.DataArray, truth: xr.DataArray, predictions: dict[str, xr.DataArray],
               class_names=CLASS_NAMES):
    """One panel per prediction: ``field`` on a map with coastlines, the true TC / AR masks outlined in solid
    lines and the predicted ones in dashed lines (one colour per class)."""
    import matplotlib.pyplot as plt

    from climateml.geography import add_coastlines, format_map_axes

    colours = {1: "magenta", 2: "black"}
    n = len(predictions)
    fig, axes = plt.subplots(1, n, figsize=(6.2 * n, 3.6), squeeze=False, constrained_layout=True)
    lon, lat = field["lon"].values, field["lat"].values
    for ax, (name, pred) in zip(axes[0], predictions.items()):
        im = ax.pcolormesh(lon, lat, field.values, cmap="Blues", shading="auto")
        add_coastlines(ax, colors="0.35", linewidths=0.5)
        for k, colour in colours.items():
            for mask, style in ((truth, "solid"), (pred, "dashed")):
                m = (mask.values == k).astype(float)
                if m.any():
                    ax.contour(lon, lat, m, levels=[0.5], colors=colour, linestyles=style, linewidths=1.0)
        format_map_axes(ax, lon, lat)
        handles = [plt.Line2D([], [], color=c, ls=ls, label=f"{class_names[k]} {what}")
                   for k, c in colours.items() for ls, what in (("solid", "true"), ("dashed", name))]
        ax.legend(handles=handles, fontsize=6, loc="lower left", ncol=2)
        ax.set_title(f"{name}: {field.name} ({field.attrs.get('units', '')}), {str(field['time'].values)}", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8, label=f"{field.name} ({field.attrs.get('units', '')})")
    return fig

