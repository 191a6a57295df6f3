"""Lightning callbacks that are ours: best weights, predictions as NetCDF, atomic checkpoints, training speed.

- :class:`RestoreBestWeights`, :class:`NetCDFPredictionWriter`: the end of a fit and ``climateml predict``.
- Exact resume (the resume checkpoint and what Lightning does not restore itself) lives apart, in
  :mod:`climateml.resume` (:class:`~climateml.resume.ResumeCheckpoint`).
- :class:`AtomicCheckpointIO`: every checkpoint is written to a temporary file beside its target, flushed
  and renamed, so a kill never leaves a truncated checkpoint (the CLI installs it).
- :class:`TrainingSpeed`: samples per second and the share of a step spent waiting for data.
- :class:`TorchThreads`: torch's CPU threads for the run (one is fastest on a small, shared machine).
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from climateml.errors import ConfigError
from climateml.resume import ResumeCheckpoint
from climateml.writers import PredictionParts, atomic_path


class RestoreBestWeights(L.Callback):
    """At the end of fit, load the best checkpoint's weights back into the module (like Keras' restore_best_weights):
    the best of the first ModelCheckpoint that keeps a best (the resume checkpoint keeps none)."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        paths = [cb.best_model_path for cb in trainer.checkpoint_callbacks
                 if isinstance(cb, ModelCheckpoint) and not isinstance(cb, ResumeCheckpoint) and cb.best_model_path]
        path = paths[0] if paths else ""
        if path and Path(path).exists():
            state = torch.load(path, map_location=pl_module.device, weights_only=True)["state_dict"]
            pl_module.load_state_dict(state)


class NetCDFPredictionWriter(BasePredictionWriter):
    """Writes the predict split as ``predictions_<group>.nc`` (one file per scenario, period ...), on the
    input's coordinates with CF attributes, through the DataModule's ``batch_to_xarray(values, "predict", ...)``.

    Files go to ``output_dir`` or, if that is empty, to ``<trainer.log_dir>/predictions``. Every task writes through
    this one writer: what the model's ``predict_step`` returns for the predict split, in order, becomes the task's
    variables on the input's coordinates (temperature: ``tas`` (time, lat, lon) in K; segmentation: ``LABELS``
    (time, lat, lon) and ``probability`` (time, class, lat, lon); nowcasting: ``rain_rate`` (time, lead_time, y,
    x) in mm/h with ``valid_time``). Batch by batch: each batch is appended to a part store
    (:class:`~climateml.writers.PredictionParts`, under ``<output dir>/.parts``) as soon as it is
    predicted, and the parts become the NetCDF files chunk by chunk at the end, so a split larger than memory is
    never held (``climateml predict`` asks Lightning to keep no predictions either). Under DDP every process
    predicts the whole split and global rank 0 writes.
    """

    def __init__(self, output_dir: str = ""):
        super().__init__(write_interval="batch")
        self.output_dir = output_dir

    def _out_dir(self, trainer) -> Path:
        return Path(self.output_dir or Path(trainer.log_dir or ".") / "predictions")

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self._parts = PredictionParts(self._out_dir(trainer) / ".parts") if trainer.is_global_zero else None
        if self._parts is not None:
            self._parts.clear()  # what a killed run left

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx) -> None:
        if self._parts is None:
            return
        for group, ds in trainer.datamodule.batch_to_xarray(prediction.float().cpu(), "predict", list(batch_indices),
                                                            batch).items():
            self._parts.append(group, ds)

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        parts, self._parts = self._parts, None
        if parts is None:
            return
        for group in parts.groups():
            path = parts.merge(group, self._out_dir(trainer) / f"predictions_{group}.nc",
                               title=f"{type(pl_module).__name__} predictions for {group}")
            print(f"wrote {path}")
        parts.remove()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written atomically on a local or shared filesystem: into a temporary file in the target's
    folder, flushed to disk, then renamed over the target. (Lightning's own writer goes through a temporary
    file in the system's temporary folder and a copy, which is not atomic when that is another filesystem.)
    Remote URLs (s3://, gs:// ...) are left to Lightning."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class TrainingSpeed(L.Callback):
    """Logs training speed per epoch: ``samples_per_s`` (this process), ``data_share`` (the fraction of a
    step's wall time spent waiting for the next batch and copying it to the device: near 0 when the
    accelerator is fed, near 1 when it starves) and ``peak_rss_gib`` (this process's peak resident memory).

    On CUDA the step is synchronised before it is timed, so the share is the real one (at a small cost).
    """

    def __init__(self):
        self._t_end: float | None = None
        self._t_start = 0.0
        self._wait = self._busy = 0.0
        self._samples = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t_end, self._wait, self._busy, self._samples = time.perf_counter(), 0.0, 0.0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t_start = time.perf_counter()
        if self._t_end is not None:
            self._wait += self._t_start - self._t_end

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self._t_end = time.perf_counter()
        self._busy += self._t_end - self._t_start
        x = batch.get("x") if isinstance(batch, dict) else None
        self._samples += len(x) if x is not None else 1

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        total = self._wait + self._busy
        if total <= 0:
            return
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
        pl_module.log_dict({"samples_per_s": self._samples / total, "data_share": self._wait / total,
                            "peak_rss_gib": float(rss)}, sync_dist=False, rank_zero_only=False)


class TorchThreads(L.Callback):
    """Sets torch's CPU threads for the run (``threads`` > 0; 0 leaves torch's default, one per core), and
    gives back the previous count when the run (fit, validate, test or predict) ends.

    On a small machine shared with other jobs, one thread is much faster than two: torch's threads wait
    for each other at every operation, and a descheduled one stalls the rest (measured on the 2-core
    development machine under a load of 9: 0.3 s against 5 s per training step of the default U-Net).
    """

    def __init__(self, threads: int = 1):
        super().__init__()
        if threads < 0:
            raise ConfigError(f"TorchThreads.threads must be >= 0, got {threads}")
        self.threads = int(threads)
        self._previous: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.threads > 0:
            if self._previous is None:
                self._previous = torch.get_num_threads()
            torch.set_num_threads(self.threads)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous is not None:
            torch.set_num_threads(self._previous)
            self._previous = None
