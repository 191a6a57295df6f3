"""Datasets and LightningDataModules, one module per on-disk layout."""

from climateml.data.io import DataError

__all__ = ["ClimateBenchDataModule", "DataError"]


def __getattr__(name: str):
    # Lazy, so that `climateml synth` and the sample-data generators do not import Lightning.
    if name == "ClimateBenchDataModule":
        from climateml.data.climatebench import ClimateBenchDataModule

        return ClimateBenchDataModule
    raise AttributeError(f"module 'climateml.data' has no attribute {name!r}")
