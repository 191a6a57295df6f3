"""Plain nn.Module building blocks, baselines, and one LightningModule per task."""

from climateml.models.baselines import LinearRegression, PatternScaling
from climateml.models.sklearn_baselines import EOFRegressionBaseline
from climateml.models.temperature import TemperatureEmulator

__all__ = ["EOFRegressionBaseline", "LinearRegression", "PatternScaling", "TemperatureEmulator", "NowcastModel", "SegmentationModel"]


def __getattr__(name: str):
    # the task modules import their blocks lazily, so `import climateml.models` stays light
    if name == "SegmentationModel":
        from climateml.models.segmentation import SegmentationModel

        return SegmentationModel
    if name == "NowcastModel":
        from climateml.models.nowcasting import NowcastModel

        return NowcastModel
    raise AttributeError(f"module 'climateml.models' has no attribute {name!r}")
