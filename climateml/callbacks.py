"""Lightning callbacks that are ours: restoring the best weights and writing predictions as NetCDF."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from climateml.data.io import write_dataset


class RestoreBestWeights(L.Callback):
    """At the end of fit, load the best checkpoint's weights back into the module (like Keras' restore_best_weights)."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ckpt = trainer.checkpoint_callback
        path = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
        if path and Path(path).exists():
            state = torch.load(path, map_location=pl_module.device, weights_only=True)["state_dict"]
            pl_module.load_state_dict(state)


class NetCDFPredictionWriter(BasePredictionWriter):
    """Writes one ``predictions_<scenario>.nc`` per predict scenario, with coordinates and CF attributes.

    The data module must offer ``split_predictions(tensor) -> {scenario: xarray.Dataset}``. Files go
    to ``output_dir`` or, if that is empty, to ``<trainer.log_dir>/predictions``.
    """

    def __init__(self, output_dir: str = ""):
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        out_dir = Path(self.output_dir or Path(trainer.log_dir or ".") / "predictions")
        values = torch.cat([p for p in predictions]) if isinstance(predictions[0], torch.Tensor) else \
            torch.cat([p for group in predictions for p in group])
        for scenario, ds in trainer.datamodule.split_predictions(values).items():
            ds.attrs.update(Conventions="CF-1.8", title=f"{type(pl_module).__name__} predictions for {scenario}",
                            source="climateml")
            ds["time"].attrs.update(long_name="year", units="year")
            ds["lat"].attrs.update(standard_name="latitude", units="degrees_north")
            ds["lon"].attrs.update(standard_name="longitude", units="degrees_east")
            path = write_dataset(ds, out_dir / f"predictions_{scenario}.nc")
            print(f"wrote {path}")
