"""ClimateTask: what every task's LightningModule shares — spec, statistics as buffers, one optimiser setup.

A task subclasses :class:`ClimateTask`: its ``__init__`` calls ``super().__init__(spec, **task_options)`` first,
then sets its own attributes; it defines :meth:`configure_models` and :meth:`shared_step` (abstract: a subclass
without them fails at instantiation, naming them) and, when it needs them, :meth:`configure_losses` and
:meth:`configure_metrics`. The three ``configure_*`` hooks run once the outermost ``__init__`` has returned, so
they see every attribute the subclass set; the arguments of that ``__init__`` are then saved as hyperparameters
(``load_from_checkpoint`` rebuilds the model from them). Training, validation and test steps, epoch metrics
(:meth:`log_stage_metrics`), prediction, input standardisation (:meth:`standardize`) and ``configure_optimizers``
(optimiser, learning rate and schedule from the config) are written once here.

Under DDP every logged tensor is reduced across processes by default (``sync_dist=True``), so an epoch's
``val_loss`` is the mean over all ranks' samples, not rank 0's shard; torchmetrics objects reduce themselves.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, Literal, Mapping

import lightning as L
import numpy as np
import torch
import torchmetrics

from climateml.contracts import PostInit
from climateml.data.base import DataSpec
from climateml.errors import ConfigError, check_choice, check_positive
from climateml.resume import ResumableSchedules, internal

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
              "rmsprop": torch.optim.RMSprop}
SCHEDULERS = ("none", "plateau", "cosine", "step", "onecycle")
#: the stages with epoch metrics (see :meth:`ClimateTask.configure_metrics`)
STAGES = ("train", "val", "test")


class SampleMean(torchmetrics.Metric):
    """The mean of a per-batch value over every sample of the epoch (each batch weighted by its samples), in float64;
    summed across processes under DDP."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor, n: int) -> None:
        """Adds ``value`` (a batch's mean) x ``n`` samples."""
        self.total += value.detach().double() * n
        self.n += n

    def compute(self) -> torch.Tensor:
        return (self.total / self.n.clamp(min=1)).float()


class EpochSums(torchmetrics.Metric):
    """Running sums of a tensor of fixed ``shape`` over the epoch, float64, summed across processes under DDP: the
    sufficient statistics of a task's own epoch scores (``compute`` returns the sums; the task derives its scores)."""

    full_state_update = False

    def __init__(self, *shape: int):
        super().__init__()
        self.add_state("total", default=torch.zeros(*shape, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor) -> None:
        self.total += value.detach().double()

    def compute(self) -> torch.Tensor:
        return self.total


class ClimateTask(PostInit, ResumableSchedules, L.LightningModule, ABC):
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
        # what this __init__ was given (a subclass may have set defaults, e.g. its monitor): saved as hyperparameters
        self._task_arguments = dict(optimizer=optimizer, lr=lr, weight_decay=weight_decay, lr_scheduler=lr_scheduler,
                                    lr_scheduler_options=lr_scheduler_options, monitor=monitor, monitor_mode=monitor_mode)
        check_choice("model.optimizer", optimizer, OPTIMIZERS)
        check_positive("model.lr", lr)
        check_positive("model.weight_decay", weight_decay, allow_zero=True)
        check_choice("model.lr_scheduler", lr_scheduler, SCHEDULERS)
        check_choice("model.monitor_mode", monitor_mode, ("min", "max"))
        self.spec = DataSpec.coerce(spec)
        if self.spec is None:
            raise ConfigError(f"{type(self).__name__} needs a data spec: run it through `climateml` with a data "
                              "module, or pass spec=datamodule.spec")
        for name, value in self.spec.statistics.items():
            self.register_buffer(name, value.detach().clone().float())

    def _post_init(self, init, args: tuple, kwargs: dict) -> None:
        """After the outermost ``__init__``: save its arguments as hyperparameters (the ones a LightningCLI config
        gave, else the call's, defaults filled in and ``**task_options`` spread out, plus what ClimateTask itself
        received; ``spec`` as plain types, its statistics' values live in the state dict), then build networks,
        loss and the stages' metrics."""
        # what LightningCLI gave (its config's init_args), which it needs to rebuild the model from a checkpoint
        given = internal("lightning.pytorch.core.mixins.hparams_mixin._given_hyperparameters").get()
        if given is not None:
            hp = dict(given)
        else:
            bound = inspect.signature(init).bind(self, *args, **kwargs)
            bound.apply_defaults()
            hp = {}
            for name, param in list(bound.signature.parameters.items())[1:]:
                if param.kind is inspect.Parameter.VAR_KEYWORD:
                    hp.update(bound.arguments.get(name, {}))
                elif param.kind is not inspect.Parameter.VAR_POSITIONAL:
                    hp[name] = bound.arguments[name]
        hp.update(self.__dict__.pop("_task_arguments"))
        hp["spec"] = self.spec.describe()
        self.save_hyperparameters(hp)
        self.configure_models()
        self.configure_losses()
        self.stage_metrics = torch.nn.ModuleDict({f"{stage}_metrics": torch.nn.ModuleDict(self.configure_metrics(stage) or {})
                                                  for stage in STAGES})

    # ---- what a task fills in ----
    @abstractmethod
    def configure_models(self) -> None:
        """Build the networks (``self.net`` ...) from ``self.spec`` and the task's attributes."""

    def configure_losses(self) -> None:
        """Build the loss (``self.criterion``)."""

    def configure_metrics(self, stage: str) -> Mapping[str, torchmetrics.Metric] | None:
        """The epoch metrics of one stage ("train", "val" or "test"): {name: a torchmetrics Metric}, built once per
        stage. They accumulate over the whole epoch (never a mean of batch means) and reduce themselves across
        processes; :meth:`shared_step` updates them (``self.metrics(stage)[name].update(...)``) and
        :meth:`log_stage_metrics` logs them at the stage's epoch end as ``{stage}_{name}``, or, for a metric
        whose ``compute`` returns a dict, ``{stage}_{key}`` for each of its keys. None: no epoch metrics."""
        return None

    @abstractmethod
    def shared_step(self, batch: dict, stage: str) -> torch.Tensor:
        """Loss of one batch; logs ``{stage}_loss`` and updates the stage's metrics."""

    # ---- epoch metrics and inputs, the same for every task ----
    def metrics(self, stage: str) -> torch.nn.ModuleDict:
        """The epoch metrics of ``stage``, by name (see :meth:`configure_metrics`)."""
        return self.stage_metrics[f"{stage}_metrics"]

    def log_stage_metrics(self, stage: str) -> None:
        """Log every epoch metric of ``stage`` that was updated this epoch, then reset it. The monitored one
        (``monitor``) is shown on the progress bar."""
        for name, metric in self.metrics(stage).items():
            if not metric.update_count:
                continue
            value = metric.compute()
            for key, v in (value.items() if isinstance(value, Mapping) else [(name, value)]):
                logged = f"{stage}_{key}"
                self.log(logged, v, prog_bar=logged == self.hparams.get("monitor"), sync_dist=False)
            metric.reset()

    def standardize(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """``(x - x_mean) / x_std`` with the spec's training statistics, one value per index of ``x``'s ``dim``
        (the channel or feature axis) broadcast over the dims after it."""
        shape = (-1,) + (1,) * (x.ndim - dim - 1)
        return (x - self.x_mean.view(shape)) / self.x_std.view(shape)

    def on_test_epoch_end(self) -> None:
        self.log_stage_metrics("test")

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
        if scratch:
            ignore = internal("torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model")
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

    def on_train_epoch_end(self) -> None:
        self.log_stage_metrics("train")
        super().on_train_epoch_end()

    def on_validation_epoch_end(self) -> None:
        self.log_stage_metrics("val")
        super().on_validation_epoch_end()

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
