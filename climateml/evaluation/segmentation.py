"""Scores, the heuristic baseline and figures of TC / AR segmentation: what the generic evaluator calls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import xarray as xr

from climateml import plotting
from climateml.contracts import FieldData, SegmentationBatchData, require
from climateml.evaluation.base import Evaluation
from climateml.writers import synchronous
from climateml.metrics.segmentation import CLASS_NAMES, confusion_matrix, scores_from_confusion
from climateml.models.heuristic_detection import HeuristicDetector


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
                 comparison_keys: list[str] = ["iou_background", "iou_tc", "iou_ar", "mean_iou"],
                 headline: dict[str, str] = {"mean_iou": "higher"}, **options):
        super().__init__(summary_keys=summary_keys, comparison_keys=comparison_keys, headline=headline, **options)
        self.detector = None if heuristic is None else HeuristicDetector(**heuristic)
        self.figure_field, self.n_figure_samples = figure_field, n_figure_samples

    def baselines(self, datamodule) -> dict[str, dict[str, xr.Dataset]]:
        if self.detector is None:
            return {}
        require(datamodule, FieldData, f"evaluation {type(self).__name__}")
        return self._heuristic(datamodule.fields(self.split, self._detector_fields(datamodule)))

    def _heuristic(self, fields: xr.Dataset) -> dict[str, dict[str, xr.Dataset]]:
        """The heuristic's labels of ``fields``, as a baseline entry."""
        return {"heuristic": {self.split: self.detector.predict(fields).to_dataset(name="LABELS")}}

    def _detector_fields(self, datamodule) -> list[str]:
        d = self.detector
        names = {d.psl_field, d.tmq_field, *d.tc_wind, *d.ar_wind}
        if d.tc_min_warm_core_k is not None:
            names.add(d.tc_warm_core_field)
        return sorted(names)

    def summary_figures(self, fig_dir: Path, result: dict, histories, models) -> None:
        """Per-class scores (``metrics.png``, higher is better) and loss plus validation IoU per epoch
        (``learning_curves.png``)."""
        plotting.save(plot_scores(result), fig_dir / "metrics.png")
        if histories:
            plotting.save(plot_training_history(histories, loss_label=self.loss_label(models)),
                          fig_dir / "learning_curves.png")

    def loss_label(self, models) -> str:
        """The model's loss terms from its hyperparameters, e.g. "loss: cross entropy + jaccard"."""
        loss = getattr(models[0], "hparams", {}).get("loss") if models else None
        if not loss:
            return super().loss_label(models)
        terms = {loss: 1.0} if isinstance(loss, str) else dict(loss)
        shown = " + ".join(("" if float(w) == 1 else f"{float(w):g} ") + name.replace("_", " ")
                           for name, w in terms.items())
        return f"loss: {shown}"

    def combine_members(self, members: xr.Dataset) -> xr.Dataset:
        """The ensemble's labels: argmax of the members' mean class probability."""
        prob = members["probability"].mean("member")
        out = xr.Dataset({"probability": prob, "LABELS": prob.argmax("class").astype(np.int64)})
        out["LABELS"].attrs = members["LABELS"].attrs
        return out

    def streams(self, datamodule) -> bool:
        """Batch by batch for a DataModule that serves its batches' labels and fields (:class:`SegmentationBatchData`)."""
        return isinstance(datamodule, SegmentationBatchData)

    def batch_baselines(self, datamodule, batch, indices) -> dict[str, dict[str, xr.Dataset]]:
        """The heuristic on the raw fields of the batch's dates."""
        if self.detector is None:
            return {}
        return self._heuristic(datamodule.fields(self.split, self._detector_fields(datamodule), indices))

    def statistics(self, pred: xr.DataArray, truth: xr.DataArray, variable: str) -> dict[str, np.ndarray]:
        """The confusion matrix (rows truth, columns prediction) of the pixels given."""
        return {"confusion": confusion_matrix(pred, truth, len(CLASS_NAMES))}

    def scores_from_statistics(self, statistics, variable: str) -> dict[str, float]:
        """IoU, precision, recall per class, mean IoU and accuracy from the confusion matrix summed over every
        test pixel (not a mean of per-batch scores); area is not weighted: every pixel counts once."""
        return scores_from_confusion(statistics["confusion"], CLASS_NAMES)

    def observe(self, sums, group: str, truth: xr.Dataset, indices) -> None:
        """Keeps the ``n_figure_samples`` dates with the most feature (TC or AR) pixels for the mask figures."""
        sums.pick((group, "features"), _feature_pixels(truth), indices, self.n_figure_samples)

    def streamed_figures(self, fig_dir: Path, group: str, predictions: xr.Dataset, sums, scores) -> None:
        """A mask figure of each date picked, its predictions read back from the written file."""
        dm = self.datamodule
        for _, i in sums.picks.get((group, "features"), []):
            sample = torch.utils.data.default_collate([dm.dataset(self.split)[i]])
            truth = dm.batch_truth(sample, self.split, [i])[group]["LABELS"].isel(time=0)
            date = str(truth["time"].values)
            field = dm.fields(self.split, [self.figure_field], [i])[self.figure_field].isel(time=0)
            with synchronous():
                shown = predictions["LABELS"].sel(time=date).load()
            masks = {str(name): shown.sel(model=name) for name in shown["model"].values}
            plotting.save(plot_masks(field, truth, masks, CLASS_NAMES), fig_dir / f"masks_{date}.png")

    def figures(self, fig_dir: Path, group: str, truth: xr.Dataset, predictions: dict[str, xr.Dataset],
                members: xr.Dataset, scores: dict[str, dict[str, dict]]) -> None:
        # the dates with the most feature pixels: where a reader sees what the model found
        order = np.argsort(-_feature_pixels(truth), kind="stable")[: self.n_figure_samples]
        fields = self.datamodule.fields(self.split, [self.figure_field])
        for i in order:
            date = str(truth["time"].values[i])
            field = fields[self.figure_field].sel(time=date)
            masks = {name: p["LABELS"].sel(time=date) for name, p in predictions.items()}
            plotting.save(plot_masks(field, truth["LABELS"].sel(time=date), masks, CLASS_NAMES),
                          fig_dir / f"masks_{date}.png")


def _feature_pixels(truth: xr.Dataset) -> np.ndarray:
    """Per date, its TC and AR pixels: the dates with the most get a mask figure."""
    return (truth["LABELS"] > 0).sum(("lat", "lon")).values


def plot_masks(field: xr.DataArray, truth: xr.DataArray, predictions: dict[str, xr.DataArray],
               class_names=CLASS_NAMES):
    """One panel per prediction: ``field`` on a map with coastlines, the true TC / AR masks outlined in solid
    lines and the predicted ones in dashed lines (one colour per class); one colour scale for all panels."""
    import matplotlib.pyplot as plt

    from climateml.geography import add_coastlines, format_map_axes

    colours = {1: "magenta", 2: "black"}
    n = len(predictions)
    fig, axes = plt.subplots(1, n, figsize=(5.6 * n + 0.8, 3.7), squeeze=False, constrained_layout=True)
    lon, lat = field["lon"].values, field["lat"].values
    units = field.attrs.get("units", "")
    label = f"{field.name} ({units})" if units else str(field.name)
    vmin, vmax = float(field.min()), float(field.max())
    date = str(field["time"].values) if "time" in field.coords else ""
    for ax, (name, pred) in zip(axes[0], predictions.items()):
        im = ax.pcolormesh(lon, lat, field.values, cmap="Blues", shading="auto", vmin=vmin, vmax=vmax)
        add_coastlines(ax, colors="0.45", linewidths=0.5)
        for k, colour in colours.items():
            for mask, style in ((truth, "solid"), (pred, "dashed")):
                m = (np.asarray(mask.values) == k).astype(float)
                if m.any():
                    ax.contour(lon, lat, m, levels=[0.5], colors=colour, linestyles=style, linewidths=1.1)
        format_map_axes(ax, lon, lat)
        handles = [plt.Line2D([], [], color=c, ls=ls, label=f"{class_names[k].upper()} {what}")
                   for k, c in colours.items() for ls, what in (("solid", "expert"), ("dashed", name))]
        ax.legend(handles=handles, fontsize=6, loc="lower left", ncol=2, framealpha=0.8)
        ax.set_title(f"{name} (dashed) vs expert labels (solid), {date}", fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, pad=0.01, label=label)
    return fig


def plot_scores(result: dict, classes=("tc", "ar", "background"), variable: str = "LABELS"):
    """Per-class IoU, precision and recall of the model and each baseline on the test split (higher is better)."""
    import matplotlib.pyplot as plt

    by_model = result[variable]
    kinds = ("iou", "precision", "recall")
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.4), squeeze=False, constrained_layout=True,
                             sharey=True)
    x = np.arange(len(classes))
    width = 0.8 / len(by_model)
    for ax, kind in zip(axes[0], kinds):
        for i, (name, scores) in enumerate(by_model.items()):
            values = np.array([scores.get(f"{kind}_{c}", np.nan) for c in classes], dtype=float)
            bars = ax.bar(x + i * width, np.nan_to_num(values), width, label=name, color=f"C{i}")
            # NaN: undefined (e.g. precision of a class never predicted)
            ax.bar_label(bars, labels=["n/a" if v != v else f"{v:.2f}" for v in values], fontsize=7)
        ax.set_xticks(x + width * (len(by_model) - 1) / 2, [c.upper() if len(c) == 2 else c for c in classes])
        ax.set_ylim(0, 1.08)
        ax.set_title(kind if kind != "iou" else "IoU", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel("test score (higher is better)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper right", ncol=len(labels), fontsize=8)
    means = ", ".join(f"{name} {m.get('mean_iou', np.nan):.3f}" for name, m in by_model.items())
    fig.suptitle(f"{variable}: per-class scores over every test pixel; mean IoU: {means}", fontsize=10, x=0.02,
                 ha="left")
    return fig


def plot_training_history(histories: dict, classes=("tc", "ar"), loss_label: str = "loss (the training objective)"):
    """Loss (training and validation, y label ``loss_label``) and validation IoU per class and mean, per
    epoch, from CSVLogger files; the best mean IoU (the weights kept) is marked, not the lowest loss."""
    ious = {"val_mean_iou": "mean IoU", **{f"val_iou_{c}": f"IoU {c.upper()}" for c in classes}}
    return plotting.plot_learning_curves(
        histories, loss_label, metrics=ious, metric_label="validation IoU", best="max", mark_best_loss=False,
        loss_title="training and validation loss", metric_title="validation IoU (dot: best epoch, its weights are kept)",
        title=None, log_y=False, metric_ylim=(0, 1))
