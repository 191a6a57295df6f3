"""climateml: machine learning on climate data with PyTorch and Lightning, xarray in and out."""

__version__ = "0.1.0"
