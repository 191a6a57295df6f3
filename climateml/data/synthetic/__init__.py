"""Generators that write sample data in the on-disk layouts of the real data sets."""

from climateml.data.synthetic.climatebench import Grid, generate_climatebench
from climateml.data.synthetic.climatenet import generate_climatenet

__all__ = ["Grid", "generate_climatebench", "generate_climatenet"]
