"""Datasets and LightningDataModules, one module per on-disk layout."""

from climateml.data.climatebench import ClimateBenchDataModule
from climateml.data.io import DataError

__all__ = ["ClimateBenchDataModule", "DataError"]
