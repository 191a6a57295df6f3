"""SegmentationModel: a U-Net that labels every grid cell background, tropical cyclone or atmospheric river."""

from __future__ import annotations

from typing import Literal

import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from climateml.errors import check_fraction, check_positive
from climateml.metrics.segmentation import scores_from_confusion
from climateml.models.base import ClimateTask
from climateml.models.blocks_unet import UNet
from climateml.models.losses import build_segmentation_loss


class ConfusionScores(MulticlassConfusionMatrix):
    """A confusion matrix over every pixel of an epoch (reduced across processes), computed as scores:
    ``mean_iou``, ``iou_<class>`` and, with ``precision_recall``, ``precision_<class>``, ``recall_<class>``; a
    score that is undefined (0/0) is 0."""

    def __init__(self, class_names, precision_recall: bool = True):
        # validate_args=False: the argument checks call torch.unique on every batch (slow on large grids)
        super().__init__(len(class_names), validate_args=False)
        self.class_names, self.precision_recall = list(class_names), precision_recall

    def compute(self) -> dict[str, float]:
        scores = scores_from_confusion(super().compute().cpu().numpy(), self.class_names)
        names = ["mean_iou", *[f"iou_{c}" for c in self.class_names]]
        if self.precision_recall:
            names += [f"{k}_{c}" for k in ("precision", "recall") for c in self.class_names]
        return {name: 0.0 if scores[name] != scores[name] else float(scores[name]) for name in names}


class SegmentationModel(ClimateTask):
    """U-Net segmentation of weather features; inputs in physical units, standardised with training statistics.

    Logs ``{stage}_loss`` and, from a confusion matrix accumulated over the whole epoch (not a mean of
    batch scores; torchmetrics reduces it over DDP processes), ``{stage}_iou_<class>`` and
    ``{stage}_mean_iou``, plus ``precision_<class>`` and ``recall_<class>`` for validation and test (a
    score that is undefined, 0/0, is logged as 0). Early stopping and checkpoints watch ``val_mean_iou``,
    and so does the plateau schedule (``monitor``, ``monitor_mode``). The loss is computed in float32
    also under mixed precision.

    Args:
        depth, width, norm, dropout, upsampling: the U-Net (see :class:`~climateml.models.blocks_unet.UNet`);
            any input size works, longitude wraps around (``circular_lon``).
        loss: a loss name or {name: weight} summed: cross_entropy (class-weighted), dice, jaccard, focal.
        loss_options: extra arguments per loss, e.g. {focal: {gamma: 2.0}}.
        use_class_weights: weight the losses by the training masks' class weights from the data spec.
    """

    def __init__(self, spec=None, depth: int = 3, width: int = 16, norm: Literal["batch", "group", "instance", "none"] = "batch",
                 dropout: float = 0.0, upsampling: Literal["transpose", "bilinear"] = "bilinear",
                 circular_lon: bool = True, loss: str | dict = {"cross_entropy": 1.0, "jaccard": 1.0},
                 loss_options: dict = {}, use_class_weights: bool = True, **task_options):
        task_options.setdefault("monitor", "val_mean_iou")
        task_options.setdefault("monitor_mode", "max")
        super().__init__(spec, **task_options)
        check_positive("model.depth", depth, allow_zero=True)
        check_positive("model.width", width)
        check_fraction("model.dropout", dropout)
        self._arch = dict(depth=depth, width=width, norm=norm, dropout=dropout, upsampling=upsampling,
                          circular_lon=circular_lon)
        self._loss = (loss, loss_options, use_class_weights)

    @property
    def class_names(self) -> list[str]:
        return list(self.spec.outputs)

    def configure_models(self) -> None:
        self.net = UNet(self.spec.input_shape[0], len(self.spec.outputs), **self._arch)

    def configure_losses(self) -> None:
        loss, options, use_weights = self._loss
        weights = self.class_weights if use_weights and "class_weights" in self.spec.statistics else None
        self.criterion = build_segmentation_loss(loss, class_weights=weights, options=options)

    def configure_metrics(self, stage: str) -> dict:
        """One confusion matrix per stage, over every pixel of the epoch: ``{stage}_mean_iou``, ``{stage}_iou_<class>``,
        and for validation and test ``precision_<class>``, ``recall_<class>``."""
        return {"confusion": ConfusionScores(self.class_names, precision_recall=stage != "train")}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fields (batch, channel, lat, lon) in physical units -> class logits (batch, class, lat, lon)."""
        return self.net(self.standardize(x))

    def shared_step(self, batch: dict, stage: str) -> torch.Tensor:
        logits = self(batch["x"])
        loss = self.criterion(logits.float(), batch["y"])
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=stage != "test", batch_size=len(logits))
        self.metrics(stage)["confusion"].update(logits.argmax(1), batch["y"])
        return loss
