"""Attribution maps on the input's coordinates, and Clever-Hans diagnostics.

``attribute(model, x, method, target=None, baseline=None, **options)`` wraps Captum for any
``torch.nn.Module`` and returns xarray on ``x``'s dims and coordinates (:mod:`.core`, the entry point; :mod:`.adapter`
xarray <-> tensors through :class:`~climateml.data.adapter.FieldLayout`; :mod:`.methods` the method registry;
:mod:`.baselines`); targets reduce map
outputs to one number per sample (:mod:`.targets`); :mod:`.diagnostics` holds relevance mass / rank
accuracy, cue ablation, permutation importance and backwards optimisation; :mod:`.spray` spectral
relevance analysis; :mod:`.plots` figures; :mod:`.callbacks` the Lightning callback; :mod:`.confounded` the
Clever-Hans demonstration data and run; :mod:`.fidelity` the Mamalakis et al. (2022) benchmark;
:mod:`.faithfulness` the randomisation sanity check (Adebayo et al. 2018) and faithfulness / robustness scores.
The default baseline is the training climatology the model carries (:func:`.baselines.training_climatology`).
"""

from climateml.attribution.core import attribute, predict  # noqa: F401
from climateml.attribution.diagnostics import (  # noqa: F401
    ablate, accuracy_skill, climatology, cue_ablation, optimise_input, permutation_importance,
    r2_skill, relevance_mass_accuracy, relevance_rank_accuracy,
)
from climateml.attribution.faithfulness import SanityResult, attribution_scores, randomisation_check  # noqa: F401
from climateml.attribution.methods import METHOD_OPTIONS, METHODS  # noqa: F401
from climateml.attribution.regions import region_mask  # noqa: F401
from climateml.attribution.spray import SprayResult, spray  # noqa: F401
from climateml.attribution.targets import (  # noqa: F401
    OutputIndex, RegionMean, Target, as_target, class_score, global_mean, nowcast_rain, region_mean,
)
