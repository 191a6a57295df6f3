"""Plain nn.Module building blocks and one LightningModule per task."""

from climateml.models.baselines import LinearRegression
from climateml.models.temperature import TemperatureEmulator

__all__ = ["LinearRegression", "TemperatureEmulator"]
