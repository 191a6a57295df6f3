"""Segmentation scores (IoU, precision, recall) from a confusion matrix accumulated over a whole evaluation set.

Scores are computed once from the summed confusion matrix, not averaged over batches or images: a mean
of per-batch IoUs over-weights batches with few TC pixels and depends on the batch size. Rows of the
matrix are the truth, columns the prediction (scikit-learn's convention). A score whose denominator is
0 (e.g. IoU of a class absent from both truth and prediction) is NaN, and ``mean_iou`` is the mean over
the classes where it is defined; note that torchmetrics and scikit-learn report 0 there instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

#: The classes of ClimateNet's LABELS (0 background, 1 tropical cyclone, 2 atmospheric river), in label order; the
#: one definition (data, models and evaluation import it from here: metrics imports neither data nor models)
CLASS_NAMES = ("background", "tc", "ar")


def _values(a) -> np.ndarray:
    if isinstance(a, xr.DataArray):
        return a.values
    if hasattr(a, "detach"):  # a torch tensor, without importing torch here
        return a.detach().cpu().numpy()
    return np.asarray(a)


def confusion_matrix(pred, truth, n_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """Counts (n_classes, n_classes) int64: entry [i, j] is the number of pixels of true class i predicted j.

    ``pred`` and ``truth`` are integer label arrays of one shape (numpy, xarray, torch); two DataArrays
    are aligned on their coordinates first and must match exactly. Pixels whose truth is ``ignore_index``
    are skipped; any other label outside 0..n_classes-1 is an error. Add the matrices of successive
    batches to accumulate over an evaluation set.
    """
    if isinstance(pred, xr.DataArray) and isinstance(truth, xr.DataArray):
        pred, truth = xr.align(pred, truth, join="exact")
        pred = pred.transpose(*truth.dims)
    p, t = _values(pred).ravel(), _values(truth).ravel()
    if p.shape != t.shape:
        raise ValueError(f"pred has {p.size} values, truth {t.size}: shapes {np.shape(_values(pred))} and "
                         f"{np.shape(_values(truth))} differ")
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
    for name, a in (("pred", p), ("truth", t)):
        if a.size and (a.min() < 0 or a.max() >= n_classes):
            raise ValueError(f"{name} has labels outside 0..{n_classes - 1} (min {a.min()}, max {a.max()})")
    return np.bincount(t.astype(np.int64) * n_classes + p.astype(np.int64),
                       minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def scores_from_confusion(cm, class_names: Sequence[str] = CLASS_NAMES) -> dict[str, float]:
    """``iou_<name>``, ``precision_<name>``, ``recall_<name>`` per class, ``mean_iou`` and ``accuracy``.

    IoU = TP / (TP + FP + FN), precision = TP / (TP + FP), recall = TP / (TP + FN), computed from ``cm``
    accumulated over the whole evaluation set (not a mean of per-batch values). NaN where the denominator
    is 0; ``mean_iou`` averages the classes whose IoU is defined (NaN if none is).
    """
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(class_names):
        raise ValueError(f"confusion matrix of shape {cm.shape} does not match {len(class_names)} class names")
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    iou, precision, recall = _ratio(tp, tp + fp + fn), _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    out: dict[str, float] = {}
    for i, name in enumerate(class_names):
        out[f"iou_{name}"] = float(iou[i])
        out[f"precision_{name}"] = float(precision[i])
        out[f"recall_{name}"] = float(recall[i])
    out["mean_iou"] = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
    total = cm.sum()
    out["accuracy"] = float(tp.sum() / total) if total > 0 else float("nan")
    return out
