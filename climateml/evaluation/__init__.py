"""Evaluation as its own step: one generic evaluator, and one small file per task's scores, baselines and figures."""

from climateml.evaluation.base import Evaluation, predict
from climateml.evaluation.temperature import TemperatureEvaluation

__all__ = ["Evaluation", "TemperatureEvaluation", "predict"]
