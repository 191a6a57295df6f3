"""Generators that write sample data in the on-disk layouts of the real data sets."""

from climateml.data.synthetic.climatebench import PHYSICS, Grid, Physics, generate_climatebench, generate_record
from climateml.data.synthetic.climatenet import generate_climatenet

__all__ = ["PHYSICS", "Grid", "Physics", "generate_climatebench", "generate_climatenet", "generate_record"]
