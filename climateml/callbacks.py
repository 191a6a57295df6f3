"""Lightning callbacks that are ours: restoring the best weights and writing predictions as NetCDF."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from climateml.writers import write_cf


class RestoreBestWeights(L.Callback):
    """At the end of fit, load the best checkpoint's weights back into the module (like Keras' restore_best_weights)."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ckpt = trainer.checkpoint_callback
        path = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
        if path and Path(path).exists():
            state = torch.load(path, map_location=pl_module.device, weights_only=True)["state_dict"]
            pl_module.load_state_dict(state)


class NetCDFPredictionWriter(BasePredictionWriter):
    """Writes the predict split as ``predictions_<group>.nc`` (one file per scenario, period ...), on the
    input's coordinates with CF attributes, through the DataModule's ``to_xarray(values, "predict")``.

    Files go to ``output_dir`` or, if that is empty, to ``<trainer.log_dir>/predictions``.
    """

    def __init__(self, output_dir: str = ""):
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        out_dir = Path(self.output_dir or Path(trainer.log_dir or ".") / "predictions")
        flat = predictions if isinstance(predictions[0], torch.Tensor) else [p for group in predictions for p in group]
        values = torch.cat([p.float() for p in flat])
        for group, ds in trainer.datamodule.to_xarray(values, "predict").items():
            path = write_cf(ds, out_dir / f"predictions_{group}.nc",
                            title=f"{type(pl_module).__name__} predictions for {group}")
            print(f"wrote {path}")
