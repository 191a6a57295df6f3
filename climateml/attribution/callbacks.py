"""AttributionSnapshot: attribution maps of fixed validation samples every N epochs, written as NetCDF, with the
relevance mass in configured regions logged, so one sees during training whether (and when) a model starts
to lean on a cue.

From a task YAML (LightningCLI)::

    trainer:
      callbacks:
        - class_path: climateml.attribution.callbacks.AttributionSnapshot
          init_args:
            method: integrated_gradients
            every_n_epochs: 5
            n_samples: 16
            target: {kind: global_mean, index: 0}
            regions: {cue: {variable: station_density, lat: [60, 70], lon: [22.5, 37.5]}}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import lightning as L
import xarray as xr

from climateml.attribution.adapter import first_samples
from climateml.attribution.commands import inputs_from_datamodule
from climateml.attribution.core import attribute
from climateml.attribution.diagnostics import relevance_mass_accuracy
from climateml.errors import ConfigError


class AttributionSnapshot(L.Callback):
    """Every ``every_n_epochs`` validation epochs, attribute ``n_samples`` fixed validation samples and write
    ``<output_dir>/attribution_epoch<NNNN>.nc`` (the maps and the inputs, CF metadata, atomic write); log
    ``attribution/relevance_mass_<region>`` (mean relevance mass accuracy, positive relevance) per region.

    Args:
        method, target, baseline, method_options, internal_batch_size: as in
            :func:`climateml.attribution.attribute` (target/baseline/regions may come from YAML).
        every_n_epochs: attribute after validation epochs N, 2N, ... (and never in the sanity check).
        n_samples: the first ``n_samples`` samples of ``split``, the same every time.
        regions: {name: region spec} whose relevance mass is logged (:mod:`climateml.attribution.regions`).
        output_dir: where files go; default ``<trainer.log_dir>/attribution``.
        split: the DataModule split the samples come from.
        samples: the inputs as xarray (sample dim first) instead of taking them from the DataModule.

    Samples come from ``samples``, else ``datamodule.inputs_xarray(split)`` (inputs with their coordinates, a
    member every :class:`~climateml.data.base.ClimateDataModule` declares).
    """

    def __init__(self, method: str = "integrated_gradients", every_n_epochs: int = 5, n_samples: int = 8,
                 target: Any = None, baseline: Any = None, regions: Mapping[str, Any] | None = None,
                 output_dir: str = "", method_options: Mapping[str, Any] | None = None, split: str = "val",
                 samples: xr.DataArray | xr.Dataset | None = None, internal_batch_size: int | None = None):
        super().__init__()
        if every_n_epochs < 1 or n_samples < 1:
            raise ConfigError(f"AttributionSnapshot every_n_epochs and n_samples must be >= 1, got {every_n_epochs}, {n_samples}")
        self.method, self.every_n_epochs, self.n_samples = method, int(every_n_epochs), int(n_samples)
        self.target, self.baseline = target, baseline
        self.regions = dict(regions or {})
        self.output_dir, self.method_options, self.split = output_dir, dict(method_options or {}), split
        self.samples, self.internal_batch_size = samples, internal_batch_size
        self.history: list[dict[str, Any]] = []
        self.paths: list[Path] = []
        self._x: xr.DataArray | xr.Dataset | None = None  # the samples, read once: the same at every snapshot

    def _inputs(self, trainer: L.Trainer) -> xr.DataArray | xr.Dataset:
        if self.samples is not None:
            return first_samples(self.samples, self.n_samples)
        if trainer.datamodule is None:
            raise ConfigError("AttributionSnapshot needs samples= or a DataModule")
        return inputs_from_datamodule(trainer.datamodule, self.split, self.n_samples)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        if not trainer.is_global_zero:
            return
        if self._x is None:
            self._x = self._inputs(trainer)
        x = self._x
        attr = attribute(pl_module, x, self.method, target=self.target, baseline=self.baseline,
                         internal_batch_size=self.internal_batch_size, **self.method_options)
        epoch = int(trainer.current_epoch)
        masses = {name: float(relevance_mass_accuracy(attr, region).attrs["mean"]) for name, region in self.regions.items()}
        for name, value in masses.items():
            pl_module.log(f"attribution/relevance_mass_{name}", value, rank_zero_only=True)
        ds = attr.to_dataset() if isinstance(attr, xr.DataArray) else attr.rename({v: f"attribution_{v}" for v in attr.data_vars})
        if isinstance(x, xr.DataArray):
            ds["input"] = x
        else:
            ds = ds.merge(x)
        ds.attrs = {**attr.attrs, "epoch": epoch, **{f"relevance_mass_{k}": v for k, v in masses.items()}}
        from climateml.writers import write_cf

        out_dir = Path(self.output_dir or Path(trainer.log_dir or trainer.default_root_dir) / "attribution")
        path = write_cf(ds, out_dir / f"attribution_epoch{epoch:04d}.nc",
                        title=f"{self.method} attribution of fixed {self.split} samples after epoch {epoch}")
        self.paths.append(path)
        self.history.append({"epoch": epoch, "path": str(path), **{f"relevance_mass_{k}": v for k, v in masses.items()}})
