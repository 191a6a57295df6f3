"""Does an attribution map depend on the model, and is it faithful to it? A sanity check and four scores.

- :func:`randomisation_check`: cascading model-parameter randomisation (Adebayo et al. 2018). A map that
  barely changes when the model's weights are replaced by random ones explains the input, not the model.
- :func:`faithfulness_correlation` (Bhatt et al. 2020), :func:`region_perturbation` (Samek et al. 2017),
  :func:`max_sensitivity` (Yeh et al. 2019) and :func:`sparseness` (Chalasani et al. 2020): small functions
  of numpy arrays and a target function, each tested against hand-computed numbers.
- :func:`attribution_scores`: all of them for one model, input, method and target, as the dict that
  ``climateml attribute`` writes to ``scores_<method>_<split>.json``.

Perturbations replace input values by a **reference field**: the training climatology the model carries
(:func:`climateml.attribution.baselines.default_baseline`), never zeros in physical units, so a perturbed input
stays a state the model could meet. A "region" is a tile of cells of one channel (the occlusion window:
about 1/12 of each horizontal dim, one cell along the others), so scores do not depend on single-cell noise.

Costs are bounded: scores use the first ``n_samples`` samples, a fixed number of random draws, and every
model evaluation is batched (perturbed copies of a sample go through the model together).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch
import xarray as xr
from torch import nn

from climateml.attribution.adapter import first_samples, input_layout, input_values
from climateml.attribution.baselines import default_baseline
from climateml.attribution.core import attribute
from climateml.attribution.methods import (
    channel_scale, eval_mode, model_device, model_dtype, occlusion_window, trial_forward,
)
from climateml.attribution.targets import TargetModule, as_target
from climateml.data.adapter import FieldLayout
from climateml.errors import ConfigError

#: a method passes the sanity check when |Spearman rho| between its maps of the trained and of the fully
#: randomised model is at most this (Adebayo et al. 2018 read "barely changes" off their figures; 0.5 is ours)
SANITY_THRESHOLD = 0.5

#: defaults of the scores (``climateml attribute --score_options`` overrides them)
SCORE_OPTIONS: dict[str, Any] = {
    "n_samples": 3,           # samples scored (the first ones of the attributed input)
    "n_draws": 32,            # faithfulness correlation: random subsets per sample
    "subset_fraction": 0.1,   # ... each holding this fraction of the regions
    "n_curve_steps": 16,      # region perturbation: points of the MoRF curve
    "n_sensitivity_draws": 2,  # max-sensitivity: perturbed copies of every sample (each one attribution run)
    "radius": 0.1,            # ... half-width of the uniform noise, in units of each channel's std
    "randomisation_steps": 3,  # cascading randomisation: steps from the output layer down to all layers
    "seed": 0,
}

SCORE_REFERENCES = {
    "faithfulness_correlation": "Bhatt, Weller & Moura 2020, IJCAI: Evaluating and aggregating feature-based model "
                                "explanations; higher is better (1: relevance sums predict the target's drop)",
    "region_perturbation_auc": "Samek et al. 2017, IEEE TNNLS: Evaluating the visualization of what a deep neural "
                               "network has learned (MoRF region perturbation); higher is better, target units",
    "max_sensitivity": "Yeh et al. 2019, NeurIPS: On the (in)fidelity and sensitivity of explanations; lower is "
                       "better (relative change of the map under small input noise)",
    "sparseness": "Chalasani et al. 2020, ICML: Concise explanations of neural networks using adversarial training "
                  "(Gini index of |attribution|); higher is more concentrated",
    "randomisation_spearman": "Adebayo et al. 2018, NeurIPS: Sanity checks for saliency maps (model-parameter "
                              "randomisation); closer to 0 is better, |rho| > 0.5 fails",
}
#: +1: higher is better, -1: lower is better, 0: closer to 0 is better
SCORE_DIRECTION = {"faithfulness_correlation": 1, "region_perturbation_auc": 1, "max_sensitivity": -1,
                   "sparseness": 1, "randomisation_spearman": 0}


# ---------------------------------------------------------------------------------------------------
# rank correlation
# ---------------------------------------------------------------------------------------------------

def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..d along the last axis; tied values share the mean of their ranks."""
    v = np.asarray(values, dtype=np.float64)
    flat = v.reshape(-1, v.shape[-1])
    out = np.empty_like(flat)
    for i, row in enumerate(flat):
        order = np.argsort(row, kind="stable")
        sorted_row = row[order]
        starts = np.r_[0, np.flatnonzero(np.diff(sorted_row)) + 1]
        ends = np.r_[starts[1:], len(row)]
        r = np.empty(len(row))
        for s, e in zip(starts, ends):
            r[s:e] = 0.5 * (s + e - 1) + 1.0
        out[i, order] = r
    return out.reshape(v.shape)


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``a`` with the same row of ``b``; NaN where a row is constant."""
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each sample's map in ``a`` with the same sample's map in ``b`` (arrays
    (n, ...), every value of a sample counts once): the Pearson correlation of their ranks. NaN for a
    constant map."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    return _pearson_rows(ranks(a), ranks(b))


# ---------------------------------------------------------------------------------------------------
# the four scores, on numpy arrays
# ---------------------------------------------------------------------------------------------------

TargetFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _flat(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(len(a), -1)


def region_sums(attr: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """(n, R) relevance summed over each region; ``regions`` labels every cell of a sample 0..R-1."""
    lab = np.asarray(regions).ravel()
    n_regions = int(lab.max()) + 1
    a = _flat(attr)
    out = np.zeros((len(a), n_regions))
    for i in range(len(a)):
        out[i] = np.bincount(lab, weights=a[i], minlength=n_regions)
    return out


def _replace(x_i: np.ndarray, reference_i: np.ndarray, cell_masks: np.ndarray) -> np.ndarray:
    """(m, ...) copies of one sample ``x_i`` with the cells of each mask (m, cells) set to the reference."""
    flat_x, flat_r = x_i.reshape(-1), np.broadcast_to(reference_i, x_i.shape).reshape(-1)
    out = np.where(cell_masks, flat_r[None], flat_x[None])
    return out.reshape(len(cell_masks), *x_i.shape).astype(np.float32)


def faithfulness_correlation(f: TargetFn, x: np.ndarray, attr: np.ndarray, reference: np.ndarray, regions: np.ndarray,
                             n_draws: int = 32, subset_fraction: float = 0.1, seed: int = 0,
                             subsets: np.ndarray | None = None) -> np.ndarray:
    """Faithfulness correlation (Bhatt, Weller & Moura 2020), per sample.

    For each of ``n_draws`` random subsets S of the regions (each ``subset_fraction`` of them, at least one),
    the cells of S are replaced by the reference field, and two numbers are recorded: the relevance in S,
    sum_{i in S} a_i, and the target's drop, f(x) - f(x with S replaced). The score is their Pearson
    correlation over the draws: 1 when the map's sums predict exactly how much the target falls (as integrated
    gradients do for a linear model, relative to the same reference), 0 for a map unrelated to the model,
    negative when the map points the wrong way. NaN when either number is the same in every draw.

    Args:
        f: the target, ``f(values (m, ...), rows (m,)) -> (m,)``; ``rows`` says which sample each row copies
            (for per-sample targets).
        x, attr: (n, ...) inputs and their attribution maps.
        reference: the field perturbed cells take, broadcasting to (n, ...) (the training climatology).
        regions: integer label 0..R-1 of every cell of one sample (shape ``x.shape[1:]``).
        subsets: optional boolean (n_draws, R) draws to use instead of random ones (for tests).
    """
    x = np.asarray(x, dtype=np.float32)
    ref = np.broadcast_to(np.asarray(reference, dtype=np.float32), x.shape)
    lab = np.asarray(regions).ravel()
    sums = region_sums(attr, regions)
    n_regions = sums.shape[1]
    if subsets is None:
        rng = np.random.default_rng(seed)
        k = max(1, int(round(subset_fraction * n_regions)))
        subsets = np.zeros((n_draws, n_regions), bool)
        for d in range(n_draws):
            subsets[d, rng.choice(n_regions, size=k, replace=False)] = True
    subsets = np.asarray(subsets, bool)
    cell_masks = subsets[:, lab]
    out = np.empty(len(x))
    for i in range(len(x)):  # one batch per sample: its draws together
        base = f(x[i:i + 1], np.array([i]))[0]
        drop = base - f(_replace(x[i], ref[i], cell_masks), np.full(len(subsets), i))
        relevance = subsets.astype(np.float64) @ sums[i]
        out[i] = _pearson_rows(relevance[None], np.asarray(drop, np.float64)[None])[0]
    return out


@dataclass
class PerturbationCurve:
    """Region perturbation: ``curve`` (n, K+1) of the target after removing the ``removed`` (K+1,) fractions of
    regions in order of relevance, the per-sample ``auc``, and ``auc_random`` for a random order."""

    removed: np.ndarray
    curve: np.ndarray
    auc: np.ndarray
    curve_random: np.ndarray
    auc_random: np.ndarray


def _drop_auc(curve: np.ndarray, removed: np.ndarray) -> np.ndarray:
    drop = curve[:, :1] - curve
    return ((drop[:, 1:] + drop[:, :-1]) * 0.5 * np.diff(removed)[None]).sum(1)


def region_perturbation(f: TargetFn, x: np.ndarray, attr: np.ndarray, reference: np.ndarray, regions: np.ndarray,
                        n_steps: int = 16, seed: int = 0) -> PerturbationCurve:
    """Region perturbation, most relevant first (MoRF; Samek et al. 2017), per sample.

    Regions are ranked by their summed relevance, highest first, and replaced cumulatively by the reference
    field: after step k (k = 0..K, K = ``n_steps``) the first round(k R / K) of the R regions are replaced, and
    the target f_k is recorded (f_0 = f(x)). The score is the area under the drop curve f_0 - f_k over the
    removed fraction k / K in [0, 1] (trapezoids), in the target's units: large when the regions a map ranks
    first are the ones whose removal lowers the target most. ``auc_random`` is the same area for a random order
    of the regions (one per sample), the score of a map that knows nothing.
    """
    x = np.asarray(x, dtype=np.float32)
    ref = np.broadcast_to(np.asarray(reference, dtype=np.float32), x.shape)
    lab = np.asarray(regions).ravel()
    sums = region_sums(attr, regions)
    n_regions = sums.shape[1]
    removed = np.arange(n_steps + 1) / n_steps
    counts = np.round(removed * n_regions).astype(int)
    rng = np.random.default_rng(seed)
    curves, randoms = np.empty((len(x), n_steps + 1)), np.empty((len(x), n_steps + 1))
    for i in range(len(x)):
        orders = [np.argsort(-sums[i], kind="stable"), rng.permutation(n_regions)]
        masks = []
        for order in orders:
            position = np.empty(n_regions, int)
            position[order] = np.arange(n_regions)
            masks.append(position[None, :] < counts[:, None])  # (K+1, R): regions removed at each step
        cell_masks = np.concatenate(masks)[:, lab]
        values = f(_replace(x[i], ref[i], cell_masks), np.full(len(cell_masks), i))
        curves[i], randoms[i] = values[: n_steps + 1], values[n_steps + 1:]
    return PerturbationCurve(removed, curves, _drop_auc(curves, removed), randoms, _drop_auc(randoms, removed))


def max_sensitivity(explain: Callable[[np.ndarray], np.ndarray], x: np.ndarray, attr: np.ndarray, radius: float = 0.1,
                    scale: np.ndarray | float = 1.0, n_draws: int = 4, seed: int = 0,
                    perturbations: np.ndarray | None = None) -> np.ndarray:
    """Max-sensitivity (Yeh et al. 2019), per sample: max over draws of ||Phi(x + delta) - Phi(x)|| / ||Phi(x)||.

    Phi is the attribution method (``explain``: (n, ...) inputs -> (n, ...) maps), ``attr`` = Phi(x), norms are
    Frobenius norms over a sample's whole map, and delta is uniform noise in [-radius * scale, radius * scale]
    at every value (``scale`` broadcasts to one sample, e.g. each channel's std). Yeh et al. take the
    supremum over the ball; ``n_draws`` Monte-Carlo draws bound it from below. 0 for a map that does not
    change; lower is better (a robust explanation). ``perturbations`` (n_draws, *x.shape[1:]) replaces the
    random draws (for tests); draw d is added to every sample.
    """
    x = np.asarray(x, dtype=np.float32)
    a0 = _flat(attr)
    if perturbations is None:
        rng = np.random.default_rng(seed)
        perturbations = rng.uniform(-1.0, 1.0, (n_draws, *x.shape[1:])) * radius * np.asarray(scale)
    norm0 = np.linalg.norm(a0, axis=1)
    worst = np.zeros(len(x))
    for delta in np.asarray(perturbations, dtype=np.float32):  # each draw: one attribution run over all samples
        a1 = _flat(explain((x + delta[None]).astype(np.float32)))
        worst = np.maximum(worst, np.linalg.norm(a1 - a0, axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm0 > 0, worst / np.where(norm0 > 0, norm0, 1.0), np.nan)


def sparseness(attr: np.ndarray) -> np.ndarray:
    """Sparseness (Chalasani et al. 2020), per sample: the Gini index of the sample's |attribution| values.

    With the d values sorted ascending, a_(1) <= ... <= a_(d): G = sum_k (2k - d - 1) a_(k) / (d sum_k a_(k)).
    0 when every value carries the same relevance, (d - 1) / d when one value carries all of it; NaN for a
    map that is zero everywhere.
    """
    a = np.sort(np.abs(_flat(attr)), axis=1)
    d = a.shape[1]
    k = np.arange(1, d + 1)
    total = a.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, ((2 * k - d - 1)[None] * a).sum(1) / (d * np.where(total > 0, total, 1.0)), np.nan)


# ---------------------------------------------------------------------------------------------------
# model access
# ---------------------------------------------------------------------------------------------------

def target_function(model: nn.Module, x: xr.DataArray | xr.Dataset, target: Any = None, batch_size: int = 64) -> TargetFn:
    """``f(values, rows) -> (m,)``: the target (as :func:`~climateml.attribution.core.attribute` explains it)
    of the model on (m, ...) input values, in batches, no gradients; ``rows`` are the samples of the input ``x``
    each row stands for (a per-sample target, such as a class score over each sample's mask, uses theirs)."""
    dev, dtype = model_device(model), model_dtype(model)
    layout = input_layout(x, None, model)
    xs = layout.stack(x)
    values = np.asarray(xs.values, dtype=np.float32)
    with eval_mode(model):
        trial = trial_forward(model, torch.as_tensor(values[:1], device=dev, dtype=dtype))
    bound = as_target(target).bind(trial.output_shape, x, values.shape[0], layout.sample_dim)
    fwd = TargetModule(model, bound.reducer).to(dev)

    def f(batch: np.ndarray, rows: np.ndarray) -> np.ndarray:
        out = []
        rows = np.asarray(rows)
        with eval_mode(fwd), torch.no_grad():
            for lo in range(0, len(batch), batch_size):
                xb = torch.as_tensor(batch[lo:lo + batch_size], device=dev, dtype=dtype)
                extra = tuple(torch.as_tensor(e[rows[lo:lo + batch_size]], device=dev, dtype=dtype) for e in bound.extra)
                out.append(fwd(xb, *extra).float().cpu().numpy().reshape(-1))
        return np.concatenate(out)

    return f


def perturbation_regions(xs: xr.DataArray) -> np.ndarray:
    """Integer region label of every cell of one sample of the stacked input ``xs``: tiles of the occlusion window
    (about 1/12 of each horizontal dim, one cell along the others, e.g. channels)."""
    window, _ = occlusion_window(xs, None, None)
    shape = xs.shape[1:]
    idx = np.indices(shape)
    tiles = [np.asarray(i) // w for i, w in zip(idx, window)]
    n_tiles = [math.ceil(s / w) for s, w in zip(shape, window)]
    return np.ravel_multi_index(tiles, n_tiles)


# ---------------------------------------------------------------------------------------------------
# cascading model-parameter randomisation
# ---------------------------------------------------------------------------------------------------

def cascade_layers(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the model's layers that hold parameters, from the output layer down to the input (the reverse
    of the order the forward pass runs them)."""
    with eval_mode(model):
        trial = trial_forward(model, x[:1])
    named = [n for n, m in trial.order if any(True for _ in m.parameters(recurse=False))]
    return named[::-1]


def reinitialise(module: nn.Module, generator: torch.Generator) -> None:
    """Random weights for one layer: its own ``reset_parameters`` (PyTorch's initialisation; a norm layer's
    running statistics too) when it has one, else each parameter's values shuffled."""
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
        return
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            flat = p.view(-1)
            flat.copy_(flat[torch.randperm(flat.numel(), generator=generator).to(flat.device)])


@dataclass
class SanityResult:
    """Cascading randomisation of one method: ``spearman[k]`` (mean over samples) between the maps of the
    trained model and those with the top ``n_randomised[k]`` layers (``layers`` from the output down)
    re-initialised; ``per_sample`` (steps, samples)."""

    method: str
    layers: list[str]
    n_randomised: list[int]
    spearman: list[float]
    per_sample: np.ndarray = field(repr=False)
    threshold: float = SANITY_THRESHOLD

    @property
    def final(self) -> float:
        """Spearman rho with every layer randomised."""
        return self.spearman[-1]

    @property
    def passed(self) -> bool:
        return bool(abs(self.final) <= self.threshold)

    def summary(self) -> str:
        """One line saying whether the method passes, and why."""
        verdict = "passes" if self.passed else "FAILS (its maps barely change when the model is randomised: they " \
                                               "explain the input, not the model)"
        return (f"sanity check (model-parameter randomisation, Adebayo et al. 2018): {self.method} {verdict}; "
                f"Spearman rho with all {len(self.layers)} layers randomised {self.final:+.2f} "
                f"(threshold |rho| <= {self.threshold:g})")

    def to_dict(self) -> dict:
        return {"method": self.method, "passed": self.passed, "threshold": self.threshold,
                "spearman_all_layers": self.final, "layers_top_down": self.layers,
                "n_randomised": self.n_randomised, "spearman": self.spearman}


def randomisation_check(model: nn.Module, x: xr.DataArray | xr.Dataset, method: str, target: Any = None,
                        baseline: Any = None, cascade_steps: int | None = None, seed: int = 0,
                        attr: xr.DataArray | xr.Dataset | None = None,
                        explain: Callable[[nn.Module, xr.DataArray | xr.Dataset], Any] | None = None,
                        **options) -> SanityResult:
    """Cascading model-parameter randomisation (Adebayo et al. 2018, *Sanity checks for saliency maps*).

    Layers holding parameters are re-initialised (:func:`reinitialise`) cumulatively from the output layer
    down, on a copy of the model (the model itself is untouched); after each step the maps are computed again
    and compared with the trained model's by the Spearman rank correlation of each sample's signed map
    (every value counts once), averaged over samples. A method whose maps depend on the model falls towards 0;
    one whose maps barely change (|rho| > 0.5 with every layer randomised) explains the input, not the model,
    and fails. Buffers outside the layers (e.g. the training statistics a model standardises with) are kept.

    Args:
        model, x, method, target, baseline, options: as for :func:`~climateml.attribution.attribute`.
        cascade_steps: number of cascade steps (evenly spaced counts of randomised layers, the last one all
            of them); default: one step per layer.
        attr: the trained model's maps of ``x`` (computed if not given).
        explain: ``explain(model, x) -> maps`` instead of ``attribute`` (to check any explanation function, e.g.
            one that returns the input itself).
    """
    if explain is None:
        def explain(m, inputs):
            return attribute(m, inputs, method, target=target, baseline=baseline, seed=seed, **options)
    layout = input_layout(x, None, model)
    variables = layout.variables
    original = input_values(attr if attr is not None else explain(model, x), variables)
    dev, dtype = model_device(model), model_dtype(model)
    layers = cascade_layers(model, torch.as_tensor(input_values(x, variables)[:1], device=dev, dtype=dtype))
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no layer with parameters to randomise")
    steps = len(layers) if cascade_steps is None else max(1, min(int(cascade_steps), len(layers)))
    counts = sorted({int(c) for c in np.round(np.linspace(1, len(layers), steps))} | {len(layers)})
    randomised = copy.deepcopy(model)
    modules = dict(randomised.named_modules())
    generator = torch.Generator().manual_seed(seed)
    rhos, done = [], 0
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        for c in counts:
            for name in layers[done:c]:
                reinitialise(modules[name], generator)
            done = c
            rhos.append(spearman(original, input_values(explain(randomised, x), variables)))
    per_sample = np.stack(rhos)
    return SanityResult(method, layers, counts, [float(np.nanmean(r)) for r in per_sample], per_sample)


# ---------------------------------------------------------------------------------------------------
# all scores of one method
# ---------------------------------------------------------------------------------------------------

def attribution_scores(model: nn.Module, x: xr.DataArray | xr.Dataset, method: str, target: Any = None,
                       baseline: Any = None, attr: xr.DataArray | xr.Dataset | None = None,
                       sanity: SanityResult | None = None, score_options: Mapping[str, Any] | None = None,
                       **options) -> dict[str, Any]:
    """The faithfulness and robustness scores of ``method`` on the first ``n_samples`` samples of ``x``.

    Returns ``{"faithfulness_correlation", "region_perturbation_auc", "max_sensitivity", "sparseness",
    "randomisation_spearman"}`` (each the mean over the scored samples, NaN samples left out) and
    ``"details"``: the references, the MoRF curve's random-order AUC, the sanity cascade, the settings.
    ``randomisation_spearman`` comes from ``sanity`` when given (a full cascade), else from one run with
    every layer randomised. Perturbations use the reference field :func:`default_baseline` (the training
    climatology), whatever ``baseline`` the maps were computed from.

    Args:
        model, x, method, target, baseline, options: as for :func:`~climateml.attribution.attribute`.
        attr: the maps of ``x`` (only its first ``n_samples`` are used; computed if not given).
        score_options: overrides of :data:`SCORE_OPTIONS`.
    """
    opts = {**SCORE_OPTIONS, **dict(score_options or {})}
    unknown = set(opts) - set(SCORE_OPTIONS)
    if unknown:
        raise ConfigError(f"score options {sorted(unknown)} unknown; known: {sorted(SCORE_OPTIONS)}")
    seed = int(opts["seed"])
    xs = first_samples(x, int(opts["n_samples"]))
    layout: FieldLayout = input_layout(xs, None, model)
    variables, stacked = layout.variables, layout.stack(xs)

    def explain(m: nn.Module, inputs) -> Any:
        return attribute(m, inputs, method, target=target, baseline=baseline, seed=seed, **options)

    a = first_samples(attr, int(opts["n_samples"])) if attr is not None else explain(model, xs)
    values, maps = np.asarray(stacked.values, dtype=np.float32), input_values(a, variables)
    reference, reference_desc = default_baseline(model, stacked)
    regions = perturbation_regions(stacked)
    f = target_function(model, xs, target)
    faith = faithfulness_correlation(f, values, maps, reference, regions, int(opts["n_draws"]),
                                     float(opts["subset_fraction"]), seed)
    morf = region_perturbation(f, values, maps, reference, regions, int(opts["n_curve_steps"]), seed)

    def explain_values(v: np.ndarray) -> np.ndarray:
        return input_values(explain(model, layout.unstack(v, xs)), variables)

    sens = max_sensitivity(explain_values, values, maps, float(opts["radius"]), channel_scale(values),
                           int(opts["n_sensitivity_draws"]), seed)
    if sanity is None:
        sanity = randomisation_check(model, xs, method, cascade_steps=1, seed=seed, attr=a,
                                     explain=explain)

    def mean(v: np.ndarray) -> float:
        return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")

    return {
        "faithfulness_correlation": mean(faith),
        "region_perturbation_auc": mean(morf.auc),
        "max_sensitivity": mean(sens),
        "sparseness": mean(sparseness(maps)),
        "randomisation_spearman": float(sanity.final),
        "details": {
            "method": method, "target": str(a.attrs.get("target", "")), "baseline": str(a.attrs.get("baseline", "")),
            "perturbation_reference": reference_desc, "n_samples": int(values.shape[0]),
            "n_regions": int(regions.max()) + 1, "region_perturbation_auc_random_order": mean(morf.auc_random),
            "region_perturbation_curve": {"removed_fraction": morf.removed.tolist(),
                                          "target": morf.curve.mean(0).tolist(),
                                          "target_random_order": morf.curve_random.mean(0).tolist()},
            "sanity": sanity.to_dict(), "options": opts,
            "directions": {k: {1: "higher is better", -1: "lower is better", 0: "closer to 0 is better"}[d]
                           for k, d in SCORE_DIRECTION.items()},
            "references": SCORE_REFERENCES,
        },
    }
