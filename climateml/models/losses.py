"""Segmentation losses on logits (B, C, H, W) and integer targets (B, H, W), all with ``ignore_index``.

Weighted cross-entropy, soft Dice and soft Jaccard (multiclass, from softmax probabilities; ClimateNet's
CGNet is trained with the Jaccard loss because TC and AR pixels are rare), focal loss, and a weighted sum
of any of them built from a config entry such as ``{"cross_entropy": 1.0, "jaccard": 1.0}``.
Pixels whose target equals ``ignore_index`` contribute nothing to any loss.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100  # torch's default for cross_entropy


def _check(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.ndim != target.ndim + 1 or logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match: "
                         "expected (B, C, H, W) and (B, H, W)")


def _probs_onehot(logits: torch.Tensor, target: torch.Tensor, ignore_index: int):
    """Softmax probabilities and one-hot target, both zeroed on ignored pixels, as (B, C, N)."""
    _check(logits, target)
    n_classes = logits.shape[1]
    valid = target != ignore_index
    probs = logits.softmax(dim=1).flatten(2) * valid.flatten(1)[:, None]
    safe = torch.where(valid, target, torch.zeros_like(target)).flatten(1)
    onehot = F.one_hot(safe.long(), n_classes).permute(0, 2, 1).to(probs.dtype) * valid.flatten(1)[:, None]
    return probs, onehot


def _class_mean(score: torch.Tensor, class_weights: torch.Tensor | None) -> torch.Tensor:
    """Mean over classes of a per-class score, weighted by ``class_weights`` if given."""
    if class_weights is None:
        return score.mean()
    w = class_weights.to(score)
    return (score * w).sum() / w.sum()


def cross_entropy_loss(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor | None = None,
                       ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(Weighted) cross-entropy, averaged over valid pixels with weight w[target] (torch's convention)."""
    _check(logits, target)
    w = None if class_weights is None else class_weights.to(logits)
    return F.cross_entropy(logits, target.long(), weight=w, ignore_index=ignore_index)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor | None = None,
                   ignore_index: int = IGNORE_INDEX, smooth: float = 1e-6) -> torch.Tensor:
    """1 - mean over classes of (2 I_c + s) / (P_c + T_c + s); I, P, T summed over the batch and the grid.

    I_c = sum p_c y_c, P_c = sum p_c, T_c = sum y_c. ``smooth`` s [pixels] makes a class absent from both
    target and prediction score 1 instead of 0/0. Summing over the whole batch (not per image) follows
    ClimateNet and keeps rare-class images from dominating.
    """
    probs, onehot = _probs_onehot(logits, target, ignore_index)
    inter = (probs * onehot).sum(dim=(0, 2))
    card = probs.sum(dim=(0, 2)) + onehot.sum(dim=(0, 2))
    return 1.0 - _class_mean((2.0 * inter + smooth) / (card + smooth), class_weights)


def soft_jaccard_loss(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor | None = None,
                      ignore_index: int = IGNORE_INDEX, smooth: float = 1e-6) -> torch.Tensor:
    """1 - mean over classes of (I_c + s) / (P_c + T_c - I_c + s): the soft IoU loss ClimateNet's CGNet uses."""
    probs, onehot = _probs_onehot(logits, target, ignore_index)
    inter = (probs * onehot).sum(dim=(0, 2))
    union = probs.sum(dim=(0, 2)) + onehot.sum(dim=(0, 2)) - inter
    return 1.0 - _class_mean((inter + smooth) / (union + smooth), class_weights)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor | None = None,
               ignore_index: int = IGNORE_INDEX, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017): -w[y] (1 - p_y)^gamma log p_y, mean over valid pixels weighted by w[y].

    With ``gamma=0`` it equals :func:`cross_entropy_loss` with the same class weights.
    """
    _check(logits, target)
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target)).long()
    logp = logits.log_softmax(dim=1).gather(1, safe[:, None])[:, 0]
    w = torch.ones_like(logp) if class_weights is None else class_weights.to(logp)[safe]
    w = w * valid
    loss = -w * (1.0 - logp.exp()).pow(gamma) * logp
    return loss.sum() / w.sum().clamp_min(torch.finfo(logp.dtype).tiny)


LOSSES = {"cross_entropy": cross_entropy_loss, "dice": soft_dice_loss, "jaccard": soft_jaccard_loss,
          "focal": focal_loss}


class SegmentationLoss(nn.Module):
    """Weighted sum of named losses; class weights live in a buffer so they follow the module's device."""

    def __init__(self, terms: Mapping[str, float], class_weights: torch.Tensor | None = None,
                 ignore_index: int = IGNORE_INDEX, options: Mapping[str, Mapping] | None = None):
        super().__init__()
        unknown = set(terms) - set(LOSSES)
        if unknown or not terms:
            raise ValueError(f"unknown loss {sorted(unknown) or '(none given)'}: expected names from {sorted(LOSSES)}")
        self.terms = {k: float(v) for k, v in terms.items()}
        self.ignore_index = ignore_index
        self.options = {k: dict(v) for k, v in (options or {}).items()}
        self.register_buffer("class_weights", None if class_weights is None
                             else torch.as_tensor(class_weights, dtype=torch.float32))

    def components(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each named loss, unweighted (for logging)."""
        return {name: LOSSES[name](logits, target, self.class_weights, self.ignore_index, **self.options.get(name, {}))
                for name in self.terms}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        parts = self.components(logits, target)
        return sum(self.terms[name] * value for name, value in parts.items())


def build_segmentation_loss(spec: str | Mapping[str, float], class_weights=None, ignore_index: int = IGNORE_INDEX,
                            options: Mapping[str, Mapping] | None = None) -> SegmentationLoss:
    """A loss from a config entry: a name (``"jaccard"``) or a {name: weight} mapping summed with those weights.

    ``class_weights`` (length C) weight cross-entropy and focal per pixel and Dice / Jaccard per class;
    ``options`` passes extra arguments per loss, e.g. ``{"focal": {"gamma": 1.0}}``.
    """
    terms = {spec: 1.0} if isinstance(spec, str) else dict(spec)
    return SegmentationLoss(terms, class_weights, ignore_index, options)
