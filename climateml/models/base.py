"""ClimateTask: what every task's LightningModule shares — spec, statistics as buffers, one optimiser setup.

A task subclasses :class:`ClimateTask` and fills in :meth:`configure_models`, :meth:`configure_losses`,
:meth:`configure_metrics` and :meth:`shared_step`; training, validation and test steps, prediction and
``configure_optimizers`` (optimiser, learning rate and schedule from the config) are written once here.

Under DDP every logged tensor is reduced across processes by default (``sync_dist=True``), so an epoch's
``val_loss`` is the mean over all ranks' samples, not rank 0's shard; torchmetrics objects reduce themselves.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torchmetrics

from climateml.data.base import DataSpec
from climateml.errors import ConfigError, check_choice, check_positive
from climateml.resume import ResumableSchedules

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
              "rmsprop": torch.optim.RMSprop}
SCHEDULERS = ("none", "plateau", "cosine", "step", "onecycle")


class ClimateTask(ResumableSchedules, L.LightningModule):
    """Base LightningModule of every task (plateau schedules once per validation and across a resume:
    :class:`~climateml.resume.ResumableSchedules`).

    Args:
        spec: the data->model spec (linked from the DataModule by the CLI; a dict when reloaded from a
            checkpoint). Its statistics become buffers, so a checkpoint predicts on its own.
        optimizer: "adam", "adamw", "sgd" or "rmsprop".
        lr: learning rate (> 0).
        weight_decay: L2 penalty (>= 0).
        lr_scheduler: "none", "plateau" (ReduceLROnPlateau on ``monitor``), "cosine", "step" or "onecycle"
            (stepped every optimiser step); ``lr_scheduler_options`` go to the torch scheduler.
        monitor: the logged quantity a plateau schedule watches, and its ``monitor_mode``.
    """

    def __init__(
        self,
        spec: Any = None,
        optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_scheduler: Literal["none", "plateau", "cosine", "step", "onecycle"] = "none",
        lr_scheduler_options: dict | None = None,
        monitor: str = "val_loss",
        monitor_mode: Literal["min", "max"] = "min",
    ):
        super().__init__()
        check_choice("model.optimizer", optimizer, OPTIMIZERS)
        check_positive("model.lr", lr)
        check_positive("model.weight_decay", weight_decay, allow_zero=True)
        check_choice("model.lr_scheduler", lr_scheduler, SCHEDULERS)
        check_choice("model.monitor_mode", monitor_mode, ("min", "max"))
        self.spec = DataSpec.coerce(spec)
        if self.spec is None:
            raise ConfigError(f"{type(self).__name__} needs a data spec: run it through `climateml` with a data "
                              "module, or pass spec=datamodule.spec")
        # called here, while the subclass's __init__ is still on the stack, so its arguments are saved too
        self.save_hyperparameters(ignore=["spec"])
        self.hparams["spec"] = self.spec.describe()  # plain types; the statistics' values live in the state dict
        for name, value in self.spec.statistics.items():
            self.register_buffer(name, value.detach().clone().float())
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()

    # ---- what a task fills in ----
    def configure_models(self) -> None:
        """Build the networks (``self.net`` ...) from ``self.spec`` and the hyperparameters."""

    def configure_losses(self) -> None:
        """Build the loss (``self.criterion``)."""

    def configure_metrics(self) -> None:
        """Build torchmetrics that accumulate over a whole epoch (never a mean of batch means)."""

    def shared_step(self, batch: dict, stage: str) -> torch.Tensor:
        """Loss of one batch; logs ``{stage}_loss`` and updates the stage's metrics."""
        raise NotImplementedError

    # ---- shared ----
    def log(self, name: str, value, *args, sync_dist: bool | None = None, **kwargs) -> None:
        """LightningModule.log, with ``sync_dist`` on by default for tensors: epoch values are reduced over every
        process (a no-op on one device). A torchmetrics Metric syncs its own state when computed.

        A given ``batch_size`` is passed on as a float: Lightning averages the epoch's sample counts over the
        processes in the count's own dtype, and an integer count truncates (151 samples on 2 processes would
        count as 150 and bias the epoch mean by 0.7%).
        """
        if sync_dist is None:
            sync_dist = not isinstance(value, torchmetrics.Metric)
        if sync_dist and kwargs.get("batch_size") is not None:
            kwargs["batch_size"] = float(kwargs["batch_size"])
        super().log(name, value, *args, sync_dist=sync_dist, **kwargs)

    def log_dict(self, dictionary, *args, sync_dist: bool | None = None, **kwargs) -> None:
        """LightningModule.log_dict with the same default as :meth:`log`."""
        if sync_dist is None:
            sync_dist = not any(isinstance(v, torchmetrics.Metric) for v in dictionary.values())
        super().log_dict(dictionary, *args, sync_dist=sync_dist, **kwargs)

    def setup(self, stage: str) -> None:
        """Before DDP wraps the module: keep non-persistent buffers (per-process working state, e.g. an epoch's
        running sums, never saved in checkpoints) out of DDP's buffer broadcast, which would overwrite every
        rank's copy with rank 0's at each forward pass. Persistent buffers (statistics, BatchNorm) still sync."""
        super().setup(stage)
        scratch = [f"{prefix}.{name}" if prefix else name for prefix, module in self.named_modules()
                   for name in module._non_persistent_buffers_set]
        ignore = getattr(torch.nn.parallel.DistributedDataParallel, "_set_params_and_buffers_to_ignore_for_model", None)
        if scratch and ignore is not None:
            ignore(self, sorted(set(scratch) | set(getattr(self, "_ddp_params_and_buffers_to_ignore", []))))

    def on_fit_start(self) -> None:
        """Check the training settings a user types that Lightning takes silently (one clear line each)."""
        from lightning.pytorch.callbacks import EarlyStopping

        for cb in self.trainer.callbacks:
            if isinstance(cb, EarlyStopping):
                if isinstance(cb.patience, bool) or not isinstance(cb.patience, int) or cb.patience < 1:
                    raise ConfigError(f"trainer.callbacks: EarlyStopping patience must be a whole number >= 1 "
                                      f"(validations without improvement), got {cb.patience}")
                # Lightning flips the sign of min_delta for mode "min"
                given = float(cb.min_delta) * (1.0 if cb.monitor_op == torch.gt else -1.0)
                if not (np.isfinite(given) and given >= 0):
                    raise ConfigError(f"trainer.callbacks: EarlyStopping min_delta must be >= 0, got {given:g}")

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        """A dict of tensors moves key by key (``Tensor.to`` is free when it is already there), instead of
        Lightning's generic traversal of any collection at every step."""
        if isinstance(batch, dict) and all(isinstance(v, torch.Tensor) for v in batch.values()):
            return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def training_step(self, batch, batch_idx):
        return self.shared_step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self.shared_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self.shared_step(batch, "test")

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(batch["x"])

    def configure_optimizers(self):
        hp = self.hparams
        opt = OPTIMIZERS[hp.optimizer](self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        kw = dict(hp.lr_scheduler_options or {})
        if hp.lr_scheduler == "none":
            return opt
        if hp.lr_scheduler == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=hp.monitor_mode,
                                                               **{"factor": 0.5, "patience": 5, **kw})
            # strict=False: with validation every N steps an epoch can end before the first validation: skip it
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": hp.monitor, "strict": False}}
        if hp.lr_scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, **{"T_max": self.trainer.max_epochs, **kw})
        elif hp.lr_scheduler == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, **{"step_size": 10, "gamma": 0.5, **kw})
        else:
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, **{"max_lr": hp.lr * 10, "total_steps": int(self.trainer.estimated_stepping_batches), **kw})
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
