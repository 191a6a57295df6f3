"""NowcastModel: a U-Net (as RainNet) from stacked past radar frames to the next frames' rain rate."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from climateml.data.radar import RainTransform
from climateml.errors import check_choice, check_fraction, check_positive
from climateml.models.base import ClimateTask
from climateml.models.blocks_unet import UNet

LOSSES = ("mse", "mae", "logcosh")


def masked_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the pointwise loss over cells where the target is finite (NaN: outside the radar's range),
    and the number of such cells."""
    valid = torch.isfinite(target)
    err = pred - torch.where(valid, target, pred.detach())
    if kind == "mse":
        point = err ** 2
    elif kind == "mae":
        point = err.abs()
    else:  # log(cosh(e)) computed stably: |e| + log1p(exp(-2|e|)) - log 2
        a = err.abs()
        point = a + F.softplus(-2.0 * a) - torch.log(torch.tensor(2.0, device=err.device, dtype=err.dtype))
    n = valid.sum()
    return (point * valid).sum() / n.clamp(min=1), n


class NowcastModel(ClimateTask):
    """Radar nowcasting CNN on the transformed rain scale; inputs and outputs in mm/h.

    ``forward`` takes past frames (batch, n_in, y, x) [mm/h] and returns (batch, n_out, y, x) [mm/h]:
    the frames are transformed with the training statistics (log1p or dBR, standardised; NaN read as
    dry), passed through the U-Net and transformed back. The loss is computed on the transformed scale
    with cells outside the radar's range masked out. Logs ``{stage}_loss`` and ``{stage}_mae_mm_h``
    (mean absolute error in mm/h over every valid cell and lead time of the epoch).

    Args:
        mode: "direct" predicts every lead time at once; "recursive" predicts one frame and feeds it
            back n_out times (RainNet's way).
        loss: mse, mae or logcosh on the transformed scale.
        depth, width, norm, dropout, upsampling: the U-Net (shared with segmentation; no longitude wrap).
    """

    def __init__(self, spec=None, mode: Literal["direct", "recursive"] = "direct",
                 loss: Literal["mse", "mae", "logcosh"] = "logcosh", depth: int = 3, width: int = 16,
                 norm: Literal["batch", "group", "instance", "none"] = "batch", dropout: float = 0.0,
                 upsampling: Literal["transpose", "bilinear"] = "bilinear", **task_options):
        check_choice("model.mode", mode, ("direct", "recursive"))
        check_choice("model.loss", loss, LOSSES)
        check_positive("model.width", width)
        check_positive("model.depth", depth, allow_zero=True)
        check_fraction("model.dropout", dropout)
        self._arch = dict(depth=depth, width=width, norm=norm, dropout=dropout, upsampling=upsampling)
        self.mode, self.loss_kind = mode, loss
        super().__init__(spec, **task_options)

    @property
    def n_in(self) -> int:
        return self.spec.input_shape[0]

    @property
    def n_out(self) -> int:
        return self.spec.output_shape[0]

    def configure_models(self) -> None:
        out = self.n_out if self.mode == "direct" else 1
        self.net = UNet(self.n_in, out, circular_lon=False, edge_padding="replicate", **self._arch)
        options = self.spec.options
        self.transform = RainTransform(options.get("transform", "log1p"), options.get("rain_threshold", 0.1))

    def _sync_transform(self) -> None:
        self.transform.mean.copy_(self.rain_mean)
        self.transform.std.copy_(self.rain_std)

    def to_network(self, rain: torch.Tensor) -> torch.Tensor:
        """mm/h -> standardised transformed values, NaN (no radar) read as dry."""
        self._sync_transform()
        return self.transform(torch.nan_to_num(rain, nan=0.0).clamp(min=0.0)).float()

    def predict_network(self, z: torch.Tensor) -> torch.Tensor:
        """Transformed past frames (batch, n_in, y, x) -> transformed future frames (batch, n_out, y, x)."""
        if self.mode == "direct":
            return self.net(z)
        frames, out = z, []
        for _ in range(self.n_out):
            nxt = self.net(frames)
            out.append(nxt)
            frames = torch.cat([frames[:, 1:], nxt], dim=1)
        return torch.cat(out, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Past frames [mm/h] -> nowcast [mm/h] for every lead time."""
        z = self.predict_network(self.to_network(x))
        return self.transform.inverse(z.double()).float()

    def shared_step(self, batch: dict, stage: str) -> torch.Tensor:
        x, y = batch["x"], batch["y"]
        z_pred = self.predict_network(self.to_network(x))
        z_true = torch.where(torch.isfinite(y), self.transform(y.clamp(min=0.0)).float(), y)
        loss, n = masked_loss(z_pred.float(), z_true, self.loss_kind)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=stage != "test", batch_size=len(x))
        with torch.no_grad():  # mm/h error over valid cells, weighted by their count: exact over the epoch
            rain = self.transform.inverse(z_pred.detach().double()).float()
            mae, n_valid = masked_loss(rain, y, "mae")
        self.log(f"{stage}_mae_mm_h", mae, on_step=False, on_epoch=True, prog_bar=stage == "val",
                 batch_size=int(n_valid))
        return loss
