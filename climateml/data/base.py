"""What every task's DataModule shares: loaders, public datasets, dict batches, the data->model spec.

A task's DataModule subclasses :class:`ClimateDataModule` and fills in :meth:`~ClimateDataModule.build`
(read, split, fit statistics on training data only, set the four public datasets) and the xarray hooks;
batch size, workers, pinned memory and the loaders live here once. Samples are dicts of tensors
(``{"x": ..., "y": ...}``), so a task can add keys (masks, weights) without changing the loop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import lightning as L
import torch
import xarray as xr
from torch.utils.data import DataLoader, Dataset

from climateml.errors import check_positive


@dataclass
class DataSpec:
    """What a model must know about its data, linked once from the DataModule to the model by the CLI.

    Args:
        inputs: names of the input features or channels, in tensor order.
        outputs: names of the output variables (or classes), in tensor order.
        input_shape: shape of one sample's input tensor.
        output_shape: shape of one sample's output tensor.
        statistics: tensors fitted on training data only (e.g. x_mean, x_std, y_mean, y_std, class
            weights, area weights); the model keeps them as buffers, so checkpoints carry them.
        options: plain task-specific facts (e.g. the grid's spacing in km).
    """

    inputs: list[str]
    outputs: list[str]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    statistics: dict[str, torch.Tensor] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict:
        """Plain types only (no tensors): what a checkpoint's hyperparameters store to rebuild the model."""
        d = asdict(self)
        d["statistics"] = {k: list(v.shape) for k, v in self.statistics.items()}
        d["input_shape"], d["output_shape"] = list(self.input_shape), list(self.output_shape)
        return d

    @classmethod
    def coerce(cls, spec: "DataSpec | Mapping | None") -> "DataSpec | None":
        """A DataSpec from itself, from :meth:`describe`'s dict (statistics as zeros of the saved shapes), or None."""
        if spec is None or isinstance(spec, DataSpec):
            return spec
        spec = dict(spec)
        stats = {k: torch.zeros(*shape) for k, shape in dict(spec.get("statistics", {})).items()}
        return cls(list(spec["inputs"]), list(spec["outputs"]), tuple(spec["input_shape"]),
                   tuple(spec["output_shape"]), stats, dict(spec.get("options", {})))


class TensorDictDataset(Dataset):
    """In-memory samples: a dict of tensors sharing their first dim; serves whole batches by slicing.

    ``__getitems__`` returns one already-batched dict for a list of indices, so a DataLoader with
    :func:`batched_collate` indexes memory once per batch instead of once per sample.
    """

    def __init__(self, **tensors: torch.Tensor):
        lengths = {k: len(v) for k, v in tensors.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"tensors differ in length: {lengths}")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, i) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}

    def __getitems__(self, indices) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {k: v[idx] for k, v in self.tensors.items()}


def batched_collate(batch):
    """Collate for datasets whose ``__getitems__`` already returns a batch (a dict); otherwise torch's default."""
    if isinstance(batch, Mapping):
        return batch
    return torch.utils.data.default_collate(batch)


class ClimateDataModule(L.LightningDataModule):
    """Base of every task's DataModule: loaders, public datasets, normalisation kept in the checkpoint.

    Subclasses implement :meth:`build` (set ``train_dataset``, ``val_dataset``, ``test_dataset``,
    ``predict_dataset`` and ``statistics``), :attr:`spec`, and the xarray hooks :meth:`to_xarray` and
    :meth:`truth` used by evaluation and prediction writers.

    Args:
        batch_size: samples per batch.
        num_workers: DataLoader worker processes (0 loads in the main process).
        pin_memory: page-locked host memory for faster copies to a GPU.
    """

    def __init__(self, batch_size: int = 64, num_workers: int = 0, pin_memory: bool = False):
        super().__init__()
        check_positive("data.batch_size", batch_size)
        check_positive("data.num_workers", num_workers, allow_zero=True)
        self.batch_size, self.num_workers, self.pin_memory = int(batch_size), int(num_workers), bool(pin_memory)
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        self.predict_dataset: Dataset | None = None
        self.statistics: dict[str, torch.Tensor] = {}

    # ---- what a subclass fills in ----
    def build(self) -> None:
        """Read the data, split it, fit statistics on the training split, set the four datasets."""
        raise NotImplementedError

    @property
    def spec(self) -> DataSpec:
        """The data->model spec (sizes, names, training statistics)."""
        raise NotImplementedError

    def to_xarray(self, values: torch.Tensor, split: str) -> dict[str, xr.Dataset]:
        """Model outputs for every sample of ``split``, in order, as xarray on the data's coordinates,
        one Dataset per group (scenario, period)."""
        raise NotImplementedError

    def truth(self, split: str) -> dict[str, xr.Dataset]:
        """The targets of ``split`` as xarray, grouped like :meth:`to_xarray`."""
        raise NotImplementedError

    # ---- shared ----
    @property
    def is_built(self) -> bool:
        return self.train_dataset is not None

    def setup(self, stage: str | None = None) -> None:
        if not self.is_built:
            self.build()

    def dataset(self, split: str) -> Dataset:
        self.setup()
        ds = getattr(self, f"{split}_dataset")
        if ds is None:
            raise ValueError(f"{type(self).__name__} has no {split} dataset")
        return ds

    def dataloader(self, split: str, shuffle: bool = False) -> DataLoader:
        ds = self.dataset(split)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0,
                          collate_fn=batched_collate if hasattr(ds, "__getitems__") else None)

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.dataloader("predict")

    def state_dict(self) -> dict:
        """Training statistics, saved in every checkpoint beside the model's copy of them."""
        return {"statistics": {k: v.clone() for k, v in self.statistics.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        self.statistics = dict(state_dict.get("statistics", {}))
