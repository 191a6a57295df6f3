"""NowcastModel: a U-Net (as RainNet) from stacked past radar frames to the next frames' rain rate."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from climateml.data.radar import RainTransform
from climateml.errors import ConfigError, check_choice, check_fraction, check_positive
from climateml.models.base import ClimateTask
from climateml.models.blocks_unet import UNet

LOSSES = ("mse", "mae", "logcosh")


def pointwise_loss(err: torch.Tensor, kind: str) -> torch.Tensor:
    """mse: e^2, mae: |e|, logcosh: log(cosh(e)) computed stably as |e| + log1p(exp(-2|e|)) - log 2."""
    if kind == "mse":
        return err ** 2
    if kind == "mae":
        return err.abs()
    a = err.abs()
    return a + F.softplus(-2.0 * a) - torch.log(torch.tensor(2.0, device=err.device, dtype=err.dtype))


def masked_loss(pred: torch.Tensor, target: torch.Tensor, kind: str, weight: torch.Tensor | None = None,
                valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean of the pointwise loss over cells where the target is finite (NaN: outside the radar's
    range), and the number of such cells. ``valid``: ``isfinite(target)``, when the caller has it already."""
    if valid is None:
        valid = torch.isfinite(target)
    err = pred - torch.where(valid, target, pred.detach())
    point = pointwise_loss(err, kind)
    w = valid.to(point.dtype) if weight is None else torch.where(valid, weight.to(point.dtype), 0.0)
    n = valid.sum()
    return (point * w).sum() / w.sum().clamp(min=1e-12), n


def soft_csi(pred_event: torch.Tensor, obs_event: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Differentiable critical success index: sum(p o) / sum(p + o - p o) over valid cells, ``pred_event``
    a probability-like value in [0, 1], ``obs_event`` 0 or 1."""
    p, o = pred_event * valid, obs_event * valid
    hits = (p * o).sum()
    return hits / (p.sum() + o.sum() - hits).clamp(min=1e-6)


class NowcastModel(ClimateTask):
    """Radar nowcasting CNN on the transformed rain scale; inputs and outputs in mm/h.

    ``forward`` takes past frames (batch, n_in, y, x) [mm/h] and returns (batch, n_out, y, x) [mm/h]:
    the frames are transformed with the training statistics (log1p or dBR, standardised; NaN read as
    dry), passed through the U-Net and transformed back. The loss is computed on the transformed scale
    with cells outside the radar's range masked out. Logs ``{stage}_loss`` and ``{stage}_mae_mm_h``
    (mean absolute error in mm/h over every valid cell and lead time of the epoch).

    Args:
        mode: "direct" predicts every lead time at once; "recursive" predicts one frame and feeds it
            back n_out times (RainNet's way; the loss covers every fed-back step).
        loss: mse, mae or logcosh on the transformed scale.
        rain_weight, weight_threshold: cells whose observed rain is >= ``weight_threshold`` [mm/h] weigh
            ``rain_weight`` times a dry cell in the loss (1: no weighting), against the blur towards
            "dry" that an average loss learns where rain is uncertain.
        csi_weight, csi_thresholds, csi_temperature: adds ``csi_weight`` x mean over the thresholds
            [mm/h] of (1 - soft CSI), the event "rain >= threshold" predicted as a sigmoid of the
            transformed prediction's distance to the transformed threshold over ``csi_temperature``
            (standardised units). 0: off.
        space_to_depth: the U-Net sees the frames folded into ``space_to_depth``^2 channels at
            1/``space_to_depth`` resolution (and its output unfolded back): about that squared cheaper.
            A 3 x 3 convolution at full resolution, starting as the binomial filter [1, 2, 1] x [1, 2, 1]
            / 16 (which cancels a pattern of period 2 cells), then smooths the seams between the
            unfolded cells, which would otherwise show as a checkerboard.
        depth, width, norm, dropout, upsampling: the U-Net (shared with segmentation; no longitude wrap).
    """

    def __init__(self, spec=None, mode: Literal["direct", "recursive"] = "direct",
                 loss: Literal["mse", "mae", "logcosh"] = "logcosh", rain_weight: float = 1.0,
                 weight_threshold: float = 1.0, csi_weight: float = 0.0, csi_thresholds: list[float] = [1.0],
                 csi_temperature: float = 0.1, space_to_depth: int = 1, depth: int = 3, width: int = 16,
                 norm: Literal["batch", "group", "instance", "none"] = "batch", dropout: float = 0.0,
                 upsampling: Literal["transpose", "bilinear"] = "bilinear", **task_options):
        check_choice("model.mode", mode, ("direct", "recursive"))
        check_choice("model.loss", loss, LOSSES)
        check_positive("model.width", width)
        check_positive("model.depth", depth, allow_zero=True)
        check_fraction("model.dropout", dropout)
        check_positive("model.rain_weight", rain_weight)
        check_positive("model.weight_threshold", weight_threshold)
        check_positive("model.csi_weight", csi_weight, allow_zero=True)
        check_positive("model.csi_temperature", csi_temperature)
        check_positive("model.space_to_depth", space_to_depth)
        if csi_weight > 0 and (not csi_thresholds or min(csi_thresholds) <= 0):
            raise ConfigError(f"model.csi_thresholds must be rain rates > 0 [mm/h] when csi_weight > 0, got {csi_thresholds}")
        self._arch = dict(depth=depth, width=width, norm=norm, dropout=dropout, upsampling=upsampling)
        self.mode, self.loss_kind = mode, loss
        self.rain_weight, self.weight_threshold = float(rain_weight), float(weight_threshold)
        self.csi_weight, self.csi_thresholds = float(csi_weight), [float(t) for t in csi_thresholds]
        self.csi_temperature, self.space_to_depth = float(csi_temperature), int(space_to_depth)
        super().__init__(spec, **task_options)

    @property
    def n_in(self) -> int:
        return self.spec.input_shape[0]

    @property
    def n_out(self) -> int:
        return self.spec.output_shape[0]

    def configure_models(self) -> None:
        out = self.n_out if self.mode == "direct" else 1
        s2 = self.space_to_depth ** 2
        self.net = UNet(self.n_in * s2, out * s2, circular_lon=False, edge_padding="replicate", **self._arch)
        if self.space_to_depth > 1:
            self.refine = torch.nn.Conv2d(out, out, 3, padding=1, padding_mode="replicate")
            with torch.no_grad():
                self.refine.weight.zero_()
                self.refine.bias.zero_()
                binomial = torch.tensor([1.0, 2.0, 1.0])
                self.refine.weight[torch.arange(out), torch.arange(out)] = torch.outer(binomial, binomial) / 16.0
        options = self.spec.options
        self.transform = RainTransform(options.get("transform", "log1p"), options.get("rain_threshold", 0.1))

    def _sync_transform(self) -> None:
        self.transform.mean.copy_(self.rain_mean)
        self.transform.std.copy_(self.rain_std)

    def to_network(self, rain: torch.Tensor) -> torch.Tensor:
        """mm/h -> standardised transformed values, NaN (no radar) read as dry."""
        self._sync_transform()
        return self.transform(torch.nan_to_num(rain, nan=0.0).clamp(min=0.0)).float()

    def _step(self, z: torch.Tensor) -> torch.Tensor:
        """One U-Net pass, folding space into channels first when ``space_to_depth`` > 1 (the grid is
        padded up to a multiple by replicating the edge, and the output cropped back)."""
        s = self.space_to_depth
        if s == 1:
            return self.net(z)
        h, w = z.shape[-2:]
        ph, pw = (-h) % s, (-w) % s
        if ph or pw:
            z = F.pad(z, (0, pw, 0, ph), mode="replicate")
        out = self.refine(F.pixel_shuffle(self.net(F.pixel_unshuffle(z, s)), s))
        return out[..., :h, :w]

    def predict_network(self, z: torch.Tensor) -> torch.Tensor:
        """Transformed past frames (batch, n_in, y, x) -> transformed future frames (batch, n_out, y, x)."""
        if self.mode == "direct":
            return self._step(z)
        frames, out = z, []
        for _ in range(self.n_out):
            nxt = self._step(frames)
            out.append(nxt)
            frames = torch.cat([frames[:, 1:], nxt], dim=1)
        return torch.cat(out, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Past frames [mm/h] -> nowcast [mm/h] for every lead time."""
        z = self.predict_network(self.to_network(x))
        return self.transform.inverse(z.double()).float()

    def _transformed_thresholds(self, like: torch.Tensor) -> torch.Tensor:
        """``csi_thresholds`` on the transformed scale, one small tensor on ``like``'s device and dtype."""
        rates = torch.tensor(self.csi_thresholds, dtype=torch.float64, device=like.device)
        return self.transform(rates).to(like.dtype)

    def compute_loss(self, z_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of transformed predictions ``z_pred`` against observed rain ``y`` [mm/h] (NaN masked)."""
        self._sync_transform()  # as to_network does (a no-op after it): targets and thresholds on the model's scale
        valid = torch.isfinite(y)
        z_true = torch.where(valid, self.transform(y.clamp(min=0.0)).float(), y)
        weight = None
        if self.rain_weight != 1.0:
            weight = torch.where(y >= self.weight_threshold, self.rain_weight, 1.0)
        loss, _ = masked_loss(z_pred, z_true, self.loss_kind, weight, valid=valid)
        if self.csi_weight > 0:
            valid_f = valid.to(z_pred.dtype)
            terms = [1.0 - soft_csi(torch.sigmoid((z_pred - zt) / self.csi_temperature), (y >= t).to(z_pred.dtype),
                                    valid_f)
                     for t, zt in zip(self.csi_thresholds, self._transformed_thresholds(z_pred))]
            loss = loss + self.csi_weight * torch.stack(terms).mean()
        return loss

    def shared_step(self, batch: dict, stage: str) -> torch.Tensor:
        x, y = batch["x"], batch["y"]
        z_pred = self.predict_network(self.to_network(x)).float()
        loss = self.compute_loss(z_pred, y)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=stage != "test", batch_size=len(x))
        with torch.no_grad():  # mm/h error over valid cells, weighted by their count: exact over the epoch
            rain = self.transform.inverse(z_pred.detach().double()).float()
            mae, n_valid = masked_loss(rain, y, "mae")
        self.log(f"{stage}_mae_mm_h", mae, on_step=False, on_epoch=True, prog_bar=stage == "val",
                 batch_size=int(n_valid))
        return loss
