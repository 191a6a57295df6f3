"""Datasets and LightningDataModules, one module per on-disk layout."""

from climateml.errors import DataError

__all__ = ["ClimateBenchDataModule", "DataError", "NowcastingDataModule", "SegmentationDataModule"]

_LAZY = {"ClimateBenchDataModule": "climateml.data.climatebench", "SegmentationDataModule": "climateml.data.climatenet",
         "NowcastingDataModule": "climateml.data.nowcasting"}


def __getattr__(name: str):
    # Lazy, so that `climateml synth` and the sample-data generators do not import Lightning.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'climateml.data' has no attribute {name!r}")
