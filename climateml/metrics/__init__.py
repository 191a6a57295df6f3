"""Scores as small pure functions of xarray objects with explicit ``dim=`` and ``weights=``.

``continuous``: RMSE, MAE, bias, R², ClimateBench NRMSE; ``categorical``: contingency scores (CSI, POD,
FAR) and the fractions skill score for precipitation; ``segmentation``: IoU, precision and recall from a
confusion matrix accumulated over the whole evaluation set.
"""

from climateml.metrics.continuous import (  # noqa: F401
    bias, cell_area, global_mean, global_std, lat_weights, mae, mse, nrmse, r2, rmse, weighted_mean,
)
from climateml.metrics.categorical import (  # noqa: F401
    contingency, csi, far, fss, fss_scales_km, pod,
)
from climateml.metrics.segmentation import confusion_matrix, scores_from_confusion  # noqa: F401
