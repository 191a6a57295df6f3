"""NowcastModel: a U-Net (as RainNet) from stacked past radar frames to the next frames' rain rate, by default as a
learned correction of the optical-flow extrapolation (zero at initialisation, kept only where it helps)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
import torchmetrics

from climateml.errors import ConfigError, check_choice, check_fraction, check_positive
from climateml.models.base import ClimateTask, EpochSums
from climateml.models.blocks_unet import UNet
from climateml.models.extrapolation import gaussian_blur, optical_flow_nowcast
from climateml.models.rain_transform import RainTransform

LOSSES = ("mse", "mae", "logcosh")
BASES = ("optical_flow", "none")


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


class MaskedMAE(torchmetrics.Metric):
    """Mean absolute error over every cell of the epoch where the target is finite (NaN: outside the radar's
    range), in float64, summed across processes under DDP."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("abs_error", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("cells", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        valid = torch.isfinite(target)
        self.abs_error += torch.where(valid, (pred - target).abs(), 0.0).double().sum()
        self.cells += valid.sum()

    def compute(self) -> torch.Tensor:
        return (self.abs_error / self.cells.clamp(min=1)).float()


class NowcastModel(ClimateTask):
    """Radar nowcasting CNN on the transformed rain scale; inputs and outputs in mm/h.

    ``forward`` takes past frames (batch, n_in, y, x) [mm/h] and returns (batch, n_out, y, x) [mm/h]:
    the frames are transformed with the training statistics (log1p or dBR, standardised; NaN read as
    dry), passed through the U-Net and transformed back. The loss is computed on the transformed scale
    with cells outside the radar's range masked out. Logs ``{stage}_loss`` and ``{stage}_mae_mm_h``
    (mean absolute error in mm/h over every valid cell and lead time of the epoch).

    With ``base="optical_flow"`` (the default) the model stands on the field's strong simple method: the
    optical-flow extrapolation of the past frames (:func:`~climateml.models.extrapolation.optical_flow_nowcast`,
    the same function the evaluation's baseline uses; rain advected in from outside the domain taken as
    dry) is computed inside ``forward``, given to the U-Net with the past frames, and the U-Net's output is a
    correction added to it on the transformed scale. The U-Net's last convolution starts at zero, so the
    untrained model IS optical flow. At every validation the corrected nowcast is compared with optical flow
    alone on MAE and CSI at ``gate_threshold``, lead time by lead time; the buffer ``correction_gate`` is set
    to 1 at the lead times where the correction helps, else 0, and the best checkpoint (``val_selection``), restored at the end of fit, is optical flow itself unless a
    correction beat it on validation (see :meth:`on_validation_epoch_end`). Nowcasts are clamped to [0,
    ``rain_cap``], the cap taken from the training data (the spec's ``rain_cap`` statistic).

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
        base: "optical_flow" (learn a correction of the optical-flow extrapolation; direct mode only) or
            "none" (the U-Net maps past frames to the nowcast alone).
        flow_options: options of the Lucas-Kanade motion estimate (see
            :func:`~climateml.models.extrapolation.estimate_motion`); keep them equal to the evaluation's.
        gate_threshold: rain rate [mm/h] of the CSI the correction gate compares (the evaluation's headline CSI).
        smoothing_scales: Gaussian widths [grid cells] of a learned scale filter of the optical-flow nowcast, before
            the U-Net: at each lead time the base becomes sum_j w_j G(s_j) * base, with s_0 = 0 (the base itself) and
            the weights starting at (1, 0, ...), so the filter starts as the identity and can learn how much small-
            scale detail stays predictable at each lead time (and a gain); clamped at 0. Empty: no filter.
        loss_scale: "transformed" (the loss on the network's scale) or "rain" (on mm/h, the scale MAE is scored on).
        coarsen: the correction is computed on a grid ``coarsen`` times coarser (frames averaged over
            ``coarsen`` x ``coarsen`` cells) and brought back by bilinear interpolation: about ``coarsen``^2
            cheaper, and smooth by construction (no checkerboard); the optical-flow base keeps full resolution.
        depth, width, norm, dropout, upsampling: the U-Net (shared with segmentation; no longitude wrap).
    """

    def __init__(self, spec=None, mode: Literal["direct", "recursive"] = "direct",
                 loss: Literal["mse", "mae", "logcosh"] = "logcosh", rain_weight: float = 1.0,
                 weight_threshold: float = 1.0, csi_weight: float = 0.0, csi_thresholds: list[float] = [1.0],
                 csi_temperature: float = 0.1, space_to_depth: int = 1, depth: int = 3, width: int = 16,
                 norm: Literal["batch", "group", "instance", "none"] = "batch", dropout: float = 0.0,
                 upsampling: Literal["transpose", "bilinear"] = "bilinear",
                 base: Literal["optical_flow", "none"] = "optical_flow", flow_options: dict = {}, coarsen: int = 1,
                 gate_threshold: float = 1.0, smoothing_scales: list[float] = [], loss_scale: str = "transformed",
                 **task_options):
        super().__init__(spec, **task_options)
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
        check_choice("model.base", base, BASES)
        check_positive("model.coarsen", coarsen)
        if base == "optical_flow" and mode != "direct":
            raise ConfigError("model.base optical_flow corrects a nowcast of every lead time at once: use model.mode "
                              "direct, or model.base none with mode recursive")
        check_positive("model.gate_threshold", gate_threshold)
        check_choice("model.loss_scale", loss_scale, ("transformed", "rain"))
        if any(not float(v) > 0 for v in smoothing_scales):
            raise ConfigError(f"model.smoothing_scales must be Gaussian widths > 0 [grid cells], got {smoothing_scales}")
        self.smoothing_scales, self.loss_scale = [float(v) for v in smoothing_scales], loss_scale
        self.base, self.flow_options, self.coarsen = base, dict(flow_options), int(coarsen)
        self.gate_threshold = float(gate_threshold)
        if csi_weight > 0 and (not csi_thresholds or min(csi_thresholds) <= 0):
            raise ConfigError(f"model.csi_thresholds must be rain rates > 0 [mm/h] when csi_weight > 0, got {csi_thresholds}")
        self._arch = dict(depth=depth, width=width, norm=norm, dropout=dropout, upsampling=upsampling)
        self.mode, self.loss_kind = mode, loss
        self.rain_weight, self.weight_threshold = float(rain_weight), float(weight_threshold)
        self.csi_weight, self.csi_thresholds = float(csi_weight), [float(t) for t in csi_thresholds]
        self.csi_temperature, self.space_to_depth = float(csi_temperature), int(space_to_depth)

    @property
    def n_in(self) -> int:
        return self.spec.input_shape[0]

    @property
    def n_out(self) -> int:
        return self.spec.output_shape[0]

    def configure_models(self) -> None:
        out = self.n_out if self.mode == "direct" else 1
        s2 = self.space_to_depth ** 2
        n_in = self.n_in + (self.n_out if self.base == "optical_flow" else 0)
        self.net = UNet(n_in * s2, out * s2, circular_lon=False, edge_padding="replicate", **self._arch)
        if self.base == "optical_flow":  # the correction starts at zero: the untrained model is optical flow
            with torch.no_grad():
                self.net.head.weight.zero_()
                self.net.head.bias.zero_()
        self.register_buffer("correction_gate", torch.ones(self.n_out))  # per lead time: 1 correction on, 0 off
        if self.base == "optical_flow" and self.smoothing_scales:
            weights = torch.zeros(self.n_out, 1 + len(self.smoothing_scales))
            weights[:, 0] = 1.0
            self.scale_weights = torch.nn.Parameter(weights)
        # the gate's validation sums (see _gate_sums): the corrected nowcast's and optical flow's, and [samples, loss x
        # samples]; summed over the validation run and every process
        self.gate_sums, self.gate_loss_sums = EpochSums(2, 5, self.n_out), EpochSums(2)
        if self.space_to_depth > 1:
            self.refine = torch.nn.Conv2d(out, out, 3, padding=1, padding_mode="replicate")
            with torch.no_grad():
                self.refine.weight.zero_()
                self.refine.bias.zero_()
                binomial = torch.tensor([1.0, 2.0, 1.0])
                self.refine.weight[torch.arange(out), torch.arange(out)] = torch.outer(binomial, binomial) / 16.0
        options = self.spec.options
        self.transform = RainTransform(options.get("transform", "log1p"), options.get("rain_threshold", 0.1))

    def configure_metrics(self, stage: str) -> dict:
        """``{stage}_mae_mm_h``: mean absolute error [mm/h] over every valid cell and lead time of the epoch; for
        validation with the optical-flow base it is logged by :meth:`on_validation_epoch_end` instead."""
        return {} if stage == "val" and self.base == "optical_flow" else {"mae_mm_h": MaskedMAE()}

    def _sync_transform(self) -> None:
        self.transform.mean.copy_(self.rain_mean)
        self.transform.std.copy_(self.rain_std)

    def to_network(self, rain: torch.Tensor) -> torch.Tensor:
        """mm/h -> standardised transformed values, NaN (no radar) read as dry."""
        self._sync_transform()
        return self.transform(torch.nan_to_num(rain, nan=0.0).clamp(min=0.0)).to(self.dtype)  # float64 under 64-true

    def input_climatology(self) -> torch.Tensor:
        """(n_in, 1, 1) rain rate [mm/h] at the training mean of the transformed scale (zero in the network's
        space), every input frame: attribution's default baseline (:func:`climateml.attribution.attribute`)."""
        self._sync_transform()
        return self.transform.inverse(torch.zeros(self.n_in, 1, 1, dtype=self.rain_mean.dtype, device=self.rain_mean.device)).float()

    def _step(self, z: torch.Tensor) -> torch.Tensor:
        """One U-Net pass, folding space into channels first when ``space_to_depth`` > 1 (the grid is
        padded up to a multiple by replicating the edge, and the output cropped back), on a grid ``coarsen``
        times coarser (averaged, then the output interpolated back bilinearly) when ``coarsen`` > 1."""
        c = self.coarsen
        if c > 1:
            h, w = z.shape[-2:]
            ph, pw = (-h) % c, (-w) % c
            zc = F.avg_pool2d(F.pad(z, (0, pw, 0, ph), mode="replicate") if ph or pw else z, c)
            out = F.interpolate(self._fold_step(zc), scale_factor=c, mode="bilinear", align_corners=False)
            return out[..., :h, :w]
        return self._fold_step(z)

    def _fold_step(self, z: torch.Tensor) -> torch.Tensor:
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

    def extrapolate(self, x: torch.Tensor) -> torch.Tensor:
        """The optical-flow nowcast (batch, n_out, y, x) [mm/h] of past frames ``x`` [mm/h], as the evaluation's
        baseline computes it (NaN-aware motion; rain from outside the grid or from NaN taken as dry)."""
        base = optical_flow_nowcast(x.float(), self.n_out, fill_value=0.0, **self.flow_options)
        return torch.nan_to_num(base, nan=0.0)

    @staticmethod
    def _loss_dtype(z: torch.Tensor) -> torch.Tensor:
        """float32 under bf16 autocast (the loss in float32), float64 under 64-true precision."""
        return z.to(torch.promote_types(z.dtype, torch.float32))

    def predict_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(transformed nowcast with the correction on, transformed optical-flow base, optical-flow base [mm/h]) of
        past frames [mm/h]; the last two None without the base."""
        z_in = self.to_network(x)
        if self.base == "none":
            return self._loss_dtype(self.predict_network(z_in)), None, None
        base = self.extrapolate(x)
        z_base = self.to_network(base)
        z_start = z_base
        if self.smoothing_scales:
            filtered = [base] + [gaussian_blur(base, s) for s in self.smoothing_scales]
            mixed = torch.einsum("kj,jbkhw->bkhw", self.scale_weights, torch.stack(filtered))
            self._sync_transform()
            z_start = self.transform(mixed.clamp(min=0.0)).to(self.dtype)
        return self._loss_dtype(z_start + self.predict_network(torch.cat([z_in, z_start], dim=1))), z_base, base

    def to_rain(self, z: torch.Tensor, transformed: bool = True) -> torch.Tensor:
        """Transformed values (or, with ``transformed=False``, rain rates) -> rain rate [mm/h] in [0, rain_cap]."""
        cap = self.rain_cap if "rain_cap" in self.spec.statistics else None  # a buffer, as every statistic
        rain = self.transform.inverse(z.double()).float() if transformed else z.float().clamp(min=0.0)
        return rain if cap is None else rain.clamp(max=float(cap))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Past frames [mm/h] -> nowcast [mm/h] for every lead time (optical flow alone while the correction is
        switched off, see ``correction_gate``)."""
        z, _, base = self.predict_parts(x)
        if base is None:
            return self.to_rain(z)
        on = self.correction_gate.view(1, -1, 1, 1) > 0  # off: exactly the optical-flow nowcast (no round trip)
        return torch.where(on, self.to_rain(z), self.to_rain(base, transformed=False))

    def _transformed_thresholds(self, like: torch.Tensor) -> torch.Tensor:
        """``csi_thresholds`` on the transformed scale, one small tensor on ``like``'s device and dtype."""
        rates = torch.tensor(self.csi_thresholds, dtype=torch.float64, device=like.device)
        return self.transform(rates).to(like.dtype)

    def compute_loss(self, z_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of transformed predictions ``z_pred`` against observed rain ``y`` [mm/h] (NaN masked)."""
        self._sync_transform()  # as to_network does (a no-op after it): targets and thresholds on the model's scale
        valid = torch.isfinite(y)
        z_true = torch.where(valid, self.transform(y.clamp(min=0.0)).to(z_pred.dtype), y)
        weight = None
        if self.rain_weight != 1.0:
            weight = torch.where(y >= self.weight_threshold, self.rain_weight, 1.0)
        if self.loss_scale == "rain":  # the error in mm/h: the scale MAE is scored on
            loss, _ = masked_loss(self.transform.inverse(z_pred), y, self.loss_kind, weight, valid=valid)
        else:
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
        z_pred, z_base, base = self.predict_parts(x)
        if stage == "test" and z_base is not None:
            z_pred = torch.where(self.correction_gate.view(1, -1, 1, 1) > 0, z_pred, z_base)
        loss = self.compute_loss(z_pred, y)
        if stage == "val" and z_base is not None:  # val_loss is logged per validation run, see on_validation_epoch_end
            with torch.no_grad():
                self.gate_sums.update(torch.stack([self._gate_sums(self.to_rain(z_pred), y),
                                                   self._gate_sums(self.to_rain(base, transformed=False), y)]))
                self.gate_loss_sums.update(torch.stack([loss.new_tensor(float(len(x))), loss.detach() * len(x)]))
        else:
            self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=stage != "test", batch_size=len(x))
        metrics = self.metrics(stage)
        if "mae_mm_h" in metrics:
            with torch.no_grad():  # mm/h error over valid cells, weighted by their count: exact over the epoch
                metrics["mae_mm_h"].update(self.to_rain(z_pred.detach()), y)
        if stage == "val" and z_base is None:
            self.log("val_selection", loss, on_step=False, on_epoch=True, batch_size=len(x))
        return loss

    def _gate_sums(self, rain: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(5, lead time): valid cells, sum |error| [mm/h], hits, misses, false alarms at ``gate_threshold`` of one
        validation batch's nowcast ``rain`` [mm/h], float64: what the gate compares."""
        valid = torch.isfinite(y)
        event, observed = (rain >= self.gate_threshold) & valid, (y >= self.gate_threshold) & valid
        dims = (0, 2, 3)
        return torch.stack([valid.sum(dims), torch.where(valid, (rain - y).abs(), 0.0).double().sum(dims),
                            (event & observed).sum(dims), (~event & observed).sum(dims),
                            (event & ~observed).sum(dims)]).double()

    def on_validation_epoch_end(self) -> None:
        """With the optical-flow base, per lead time: switch the correction on only at the lead times where, over
        this whole validation run (every sample of every process), it beat optical flow alone on both headline
        scores, MAE [mm/h] (lower) and CSI at ``gate_threshold`` (higher, event: rain >= threshold).

        Logged: ``val_loss``, the corrected nowcast's loss (what the network learns; early stopping and the
        learning-rate schedule watch it), and ``val_selection`` (what the best checkpoint watches, lower is
        better): minus the mean over lead times of the gain, at a lead time where the correction is on its
        relative MAE improvement plus its relative CSI improvement over optical flow, 0 where it is off. The
        checkpoint kept is therefore optical flow itself unless a correction beat it on both scores at some lead
        time; without the base, ``val_selection`` is ``val_loss``. Also logged: MAE and CSI (pooled over lead
        times) of the correction, of optical flow and of the nowcast given (``val_mae_correction``,
        ``val_csi_optical_flow``, ``val_mae_mm_h``, ``val_csi``), and ``val_correction_on``, the fraction of
        lead times where the correction is on."""
        if self.base == "optical_flow":
            sums, losses = self.gate_sums.compute(), self.gate_loss_sums.compute()  # every process's
            self.gate_sums.reset()
            self.gate_loss_sums.reset()

            def scores(part):  # part (5, ...): MAE and CSI
                cells, abs_err, hits, misses, false_alarms = part
                return abs_err / cells.clamp(min=1.0), hits / (hits + misses + false_alarms).clamp(min=1.0)

            (mae_c, csi_c), (mae_b, csi_b) = scores(sums[0]), scores(sums[1])
            on = (mae_c <= mae_b) & (csi_c >= csi_b) & ((mae_c < mae_b) | (csi_c > csi_b))
            self.correction_gate.copy_(on.to(self.correction_gate.dtype))
            gain = torch.where(on, (mae_b - mae_c) / mae_b.clamp(min=1e-12) + (csi_c - csi_b) / csi_b.clamp(min=1e-12), 0.0)
            chosen = torch.where(on.view(1, -1), sums[0], sums[1])
            pooled = {name: scores(part.sum(-1)) for name, part in (("correction", sums[0]), ("optical_flow", sums[1]),
                                                                    ("given", chosen))}
            logged = {"val_loss": float(losses[1] / losses[0].clamp(min=1.0)), "val_selection": -float(gain.mean()),
                      "val_mae_mm_h": float(pooled["given"][0]), "val_csi": float(pooled["given"][1]),
                      "val_correction_on": float(on.double().mean()),
                      **{f"val_{k}_{name}": float(v) for name in ("correction", "optical_flow")
                         for k, v in zip(("mae", "csi"), pooled[name])}}
            for name, value in logged.items():
                self.log(name, torch.tensor(value), prog_bar=name in ("val_loss", "val_mae_mm_h"), sync_dist=False)
        super().on_validation_epoch_end()
