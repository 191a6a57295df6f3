"""ClimateNet labels: one mask from several expert labellings, and class weights from pixel counts."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from climateml.metrics.segmentation import CLASS_NAMES


def merge_labellings(labellings: Sequence[np.ndarray], n_classes: int = len(CLASS_NAMES)) -> np.ndarray:
    """One mask from several expert labellings: the per-pixel majority; ties go to the feature class
    (TC before AR before background), so a feature one expert of two marked is kept."""
    stack = np.stack(labellings)
    votes = np.stack([(stack == c).sum(0) for c in range(n_classes)])  # (class, lat, lon)
    priority = np.array([0, 2, 1])[:n_classes] if n_classes == 3 else np.arange(n_classes)
    # highest vote, ties broken by priority (TC=2 > AR=1 > background=0)
    score = votes * (n_classes + 1) + priority[:, None, None]
    return score.argmax(0).astype(np.int64)


def class_weights_from_counts(counts: Sequence[float] | np.ndarray | torch.Tensor,
                              method: str = "inverse_frequency") -> torch.Tensor:
    """Class weights from pixel counts per class, scaled so the pixel-averaged weight is 1.

    ``inverse_frequency``: w_c = N / (C n_c) (scikit-learn's "balanced"); ``inverse_sqrt``: w_c proportional to
    1 / sqrt(n_c), a milder correction. A class with no pixels gets weight 0.
    """
    n = torch.as_tensor(np.asarray(counts, dtype=np.float64))
    if n.ndim != 1 or (n < 0).any() or n.sum() <= 0:
        raise ValueError(f"counts must be a 1-d sequence of non-negative numbers with a positive sum, got {counts!r}")
    present = n > 0
    if method == "inverse_frequency":
        raw = torch.where(present, 1.0 / n.clamp_min(1e-300), torch.zeros_like(n))
    elif method == "inverse_sqrt":
        raw = torch.where(present, 1.0 / n.clamp_min(1e-300).sqrt(), torch.zeros_like(n))
    else:
        raise ValueError(f"method={method!r}: expected 'inverse_frequency' or 'inverse_sqrt'")
    freq = n / n.sum()
    return (raw / (freq * raw).sum()).to(torch.float32)
