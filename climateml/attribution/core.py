"""``attribute()``: Captum attribution maps for any ``torch.nn.Module``, returned as xarray on the input's coordinates.

The input is an ``xarray.DataArray`` with the sample dim first, e.g. (sample, feature), (time, input),
(sample, channel, lat, lon) or (sample, time, y, x), or a ``Dataset`` of input variables sharing their
dims, stacked as channels (dim ``variable``, in the model's input order). The model sees exactly
``x.values`` as a float32 tensor (stacked variables for a Dataset), and the attribution comes back with
exactly ``x``'s dims, coordinates and variables, its name and attributes saying method, target and
baseline, ready for :func:`climateml.writers.write_cf`.

Every method explains one number per sample (:mod:`climateml.attribution.targets`): the model is wrapped
in a small module that reduces its output to that number, so all Captum methods are called alike.
Samples are never looped over one by one: they go through in chunks, and the methods that evaluate
the model many times per sample (integrated gradients, gradient SHAP, SmoothGrad, occlusion, DeepLift)
put at most ``internal_batch_size`` rows through the model at once (Captum's own batching where it has
it, chunking of samples and of random draws here where it does not), on the model's device. Unless
given, ``internal_batch_size`` is sized from the activations of one sample to fit a memory budget. The
gradients of a batch come from one backward pass of the summed per-row targets
(:func:`summed_gradients`), not Captum's one autograd root per row, which costs more than a small
model's arithmetic.
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from torch import nn

from climateml.attribution.targets import BoundTarget, TargetModule, as_target
from climateml.errors import ConfigError, DataError
from climateml.grid import coord_mismatch

METHODS = ("saliency", "input_x_gradient", "integrated_gradients", "deeplift", "gradient_shap", "smoothgrad",
           "occlusion", "grad_cam", "lrp")

#: options each method accepts (beyond target, baseline, internal_batch_size, device, seed) and their defaults
METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "saliency": {"abs": True},
    "input_x_gradient": {},
    "integrated_gradients": {"n_steps": 32, "integration": "gausslegendre"},
    "deeplift": {},
    "gradient_shap": {"n_samples": 32, "stdevs": 0.0, "max_baselines": 64},
    "smoothgrad": {"nt_samples": 32, "noise_level": 0.15, "abs": False},
    "occlusion": {"window": None, "strides": None},
    "grad_cam": {"layer": None, "relu": True},
    "lrp": {"rules": None},
}

#: what a method's numbers mean, stored in the result's attrs
METHOD_NOTES = {
    "saliency": "gradient of the target w.r.t. each input value (absolute value unless abs=False); "
                "target units per input unit",
    "input_x_gradient": "input times gradient; target units",
    "integrated_gradients": "path integral of gradients from the baseline (sums to target(x) - target(baseline)); "
                            "target units",
    "deeplift": "DeepLift rescale rule relative to the baseline (sums to target(x) - target(baseline)); target units",
    "gradient_shap": "expected gradients: input-minus-baseline times gradient at random points between, over the "
                     "baseline distribution; target units",
    "smoothgrad": "gradient averaged over noisy copies of the input (SmoothGrad); target units per input unit",
    "occlusion": "drop of the target when a window of the input is replaced by the baseline; target units",
    "grad_cam": "Grad-CAM of a convolutional layer (default: the last one before the output layer) upsampled to the "
                "input grid, the same map in every channel; arbitrary units",
    "lrp": "layer-wise relevance propagation (Captum's rules, epsilon for linear/conv layers); target units",
}


# ---------------------------------------------------------------------------------------------------
# xarray <-> tensor
# ---------------------------------------------------------------------------------------------------

VARIABLE_DIM = "variable"


@dataclass
class InputLayout:
    """How an xarray input became the model's tensor, and how to put numbers of that shape back."""

    template: xr.DataArray          # (sample, [variable], ...) the stacked input
    variables: list[str] | None     # Dataset variables in tensor order (None for a DataArray input)
    dataset: xr.Dataset | None      # the original Dataset (for its per-variable dims, coords, attrs)

    @property
    def sample_dim(self) -> str:
        return str(self.template.dims[0])

    def values(self) -> np.ndarray:
        return np.asarray(self.template.values, dtype=np.float32)

    def to_xarray(self, values: np.ndarray, name: str, attrs: Mapping[str, Any]) -> xr.DataArray | xr.Dataset:
        """``values`` shaped like the tensor, on the input's dims and coordinates (a Dataset for a Dataset input)."""
        if self.variables is None:
            out = self.template.copy(data=np.asarray(values, dtype=np.float32))
            out.name = name
            out.attrs = dict(attrs)
            return out
        out = xr.Dataset(attrs=dict(attrs))
        for i, v in enumerate(self.variables):
            src = self.dataset[v]
            arr = self.template.isel({VARIABLE_DIM: i}, drop=True).copy(data=np.asarray(values[:, i], dtype=np.float32))
            arr = arr.transpose(*src.dims)
            arr.attrs = {**dict(attrs), "variable": v}
            out[v] = arr
        return out


def input_layout(x: xr.DataArray | xr.Dataset, variables: Sequence[str] | None = None,
                 model: nn.Module | None = None) -> InputLayout:
    """The :class:`InputLayout` of ``x``; a Dataset's variables are taken in the order of ``variables``, else
    of the model's ``spec.inputs`` when it names them all, else of the Dataset."""
    if isinstance(x, xr.DataArray):
        if x.ndim < 1:
            raise DataError("the input needs a sample dim first; got a 0-d DataArray")
        return InputLayout(x, None, None)
    if not isinstance(x, xr.Dataset):
        raise DataError(f"the input must be an xarray.DataArray or Dataset, got {type(x).__name__}")
    if variables is None:
        spec_inputs = list(getattr(getattr(model, "spec", None), "inputs", None) or [])
        variables = spec_inputs if spec_inputs and all(v in x.data_vars for v in spec_inputs) else list(x.data_vars)
    variables = [str(v) for v in variables]
    missing = [v for v in variables if v not in x.data_vars]
    if missing or not variables:
        raise DataError(f"input variables {missing or variables} not in the Dataset (it has {list(x.data_vars)})")
    first = x[variables[0]]
    for v in variables:
        if set(x[v].dims) != set(first.dims):
            raise DataError(f"input variable {v!r} has dims {x[v].dims}, expected those of {variables[0]!r}: {first.dims}")
    stacked = xr.concat([x[v].transpose(*first.dims) for v in variables], dim=VARIABLE_DIM, coords="minimal",
                        compat="override")
    stacked = stacked.assign_coords({VARIABLE_DIM: variables}).transpose(first.dims[0], VARIABLE_DIM, *first.dims[1:])
    stacked.attrs = {}
    return InputLayout(stacked, variables, x)


# ---------------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Run the block with ``model`` in eval mode, then give every submodule back its own training flag."""
    was_training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, t in was_training.items():
            m.train(t)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without either)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (float32 for a model without one)."""
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def check_input(model: nn.Module, layout: InputLayout, expected_coords: Mapping[str, Any] | None = None) -> None:
    """DataError unless the input fits the model: per-sample shape and channel names against the model's
    ``spec`` (a :class:`~climateml.data.base.DataSpec`, when it has one), coordinates against
    ``expected_coords`` (or ``spec.options["coords"]``)."""
    x = layout.template
    spec = getattr(model, "spec", None)
    per_sample = tuple(x.shape[1:])
    dims = ", ".join(map(str, x.dims[1:]))
    if spec is not None and getattr(spec, "input_shape", None):
        # the channel axis must match; a fully convolutional model may take other grid sizes (the trial
        # forward pass then tells whether it can)
        expected = tuple(int(v) for v in spec.input_shape)
        if len(per_sample) != len(expected) or per_sample[:1] != expected[:1]:
            raise DataError(f"input has shape {per_sample} per sample ({dims}), but {type(model).__name__} expects "
                            f"{expected} (its data spec); inputs {list(spec.inputs)}")
        names = list(getattr(spec, "inputs", []) or [])
        if x.ndim > 1 and len(names) == x.shape[1] and x.dims[1] in x.coords:
            have = [str(v) for v in np.asarray(x[x.dims[1]].values).tolist()]
            if all(isinstance(v, str) for v in np.asarray(x[x.dims[1]].values).tolist()) and have != names:
                raise DataError(f"input {x.dims[1]!r} coordinate {have} does not match {type(model).__name__}'s inputs {names}")
    coords = dict(expected_coords or (getattr(spec, "options", {}) or {}).get("coords", {}) or {})
    for dim, values in coords.items():
        if dim not in x.dims:
            raise DataError(f"input has no {dim!r} dim, which the model expects (input dims {tuple(x.dims)})")
        have, want = np.asarray(x[dim].values), np.asarray(values)
        same = have.shape == want.shape and (coord_mismatch(have, want) is None if np.issubdtype(have.dtype, np.number) and
                                              np.issubdtype(want.dtype, np.number) else np.array_equal(have, want))
        if not same:
            raise DataError(f"input {dim!r} coordinate ({have.size} values, {have.min() if have.size else ''}.."
                            f"{have.max() if have.size else ''}) does not match the model's ({want.size} values)")


@dataclass
class TrialPass:
    """What one forward pass on one sample tells: output shape, layers in the order they ran, the output
    layer(s), and the numbers of activations one row of a batch needs."""

    output_shape: tuple[int, ...]
    order: list[tuple[str, nn.Module]]
    final: set[int]
    activations_per_row: int


def _trial_forward(model: nn.Module, x: torch.Tensor) -> TrialPass:
    """Run ``model`` on one sample with hooks on its leaf modules; DataError if it cannot run on the input."""
    order: list[tuple[str, nn.Module]] = []
    outputs: dict[int, Any] = {}
    names = {m: n for n, m in model.named_modules()}
    numel = [int(x[:1].numel())]

    def hook(mod, i, o):
        order.append((names[mod], mod))
        outputs[id(mod)] = o
        if isinstance(o, torch.Tensor):
            numel.append(int(o.numel()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            out = model(x[:1])
    except Exception as err:  # noqa: BLE001  any failure here means the input does not fit the model
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{type(model).__name__} cannot run on an input of shape {tuple(x.shape[1:])} per sample: "
                        f"{type(err).__name__}: {msg}") from None
    finally:
        for h in handles:
            h.remove()
    if not isinstance(out, torch.Tensor):
        raise DataError(f"{type(model).__name__} returns {type(out).__name__}; attribution needs a tensor output "
                        "(wrap the model to return one)")
    seen, unique = set(), []
    for n, m in order:
        if id(m) not in seen:
            seen.add(id(m))
            unique.append((n, m))
    final = {k for k, o in outputs.items() if o is out}
    return TrialPass(tuple(out.shape[1:]), unique, final, sum(numel))


#: activation memory per forward pass when internal_batch_size is not given [MiB]: small on a CPU, where
#: passes that stay in cache are fastest (measured: a 3-layer CNN is ~3x slower per row at 512 rows than
#: at 32), large on a GPU, where big batches keep it busy
DEFAULT_BUDGET_MIB = {"cpu": 16.0, "cuda": 2048.0}


def auto_batch_size(activations_per_row: int, device: torch.device, budget_mib: float | None = None) -> int:
    """Rows per forward pass so that activations, their gradients and workspace (x3, float32) fit ``budget_mib``."""
    budget = budget_mib if budget_mib is not None else DEFAULT_BUDGET_MIB.get(device.type, DEFAULT_BUDGET_MIB["cuda"])
    per_row = 3 * 4 * max(1, activations_per_row)
    return int(min(65536, max(1, budget * 2**20 // per_row)))


# ---------------------------------------------------------------------------------------------------
# baselines
# ---------------------------------------------------------------------------------------------------

#: variable names (lower case) whose zero is no physical state: absolute temperature [K], pressure [Pa] and
#: geopotential [m2 s-2] or geopotential height [m] (CMIP / CF, ERA5 and CAM5 / ClimateNet spellings)
UNPHYSICAL_ZERO_NAMES = {
    "temperature": re.compile(r"^(t|ta|tas|tasmax|tasmin|ts|t2m?|skt|sst|trefht|tbot|t\d+|air_temperature)$"),
    "pressure": re.compile(r"^(p|ps|psl|msl|mslp|slp|sp|pres|pressure|pbot|air_pressure)$"),
    "geopotential": re.compile(r"^(z|zg|phi|phis|zbot|z\d+|gh|geopotential)$"),
}
#: units whose zero is no physical state (spelled without blanks, '**' or '^', lower case)
UNPHYSICAL_ZERO_UNITS = {"k": "temperature", "degk": "temperature", "kelvin": "temperature",
                         "pa": "pressure", "hpa": "pressure", "kpa": "pressure", "mbar": "pressure",
                         "millibar": "pressure", "bar": "pressure", "atm": "pressure",
                         "m2s-2": "geopotential", "m2/s2": "geopotential", "gpm": "geopotential"}


def _zero_kind(name: str, attrs: Mapping[str, Any]) -> str | None:
    """"temperature", "pressure" or "geopotential" when 0 in this variable's units is no physical state, from its
    ``standard_name``, ``units`` and name; None for anomalies (``anomaly`` in its names) and other quantities."""
    names = " ".join(str(attrs.get(k, "")) for k in ("standard_name", "long_name")).lower()
    if "anomal" in names or "anomal" in name.lower():
        return None
    std = str(attrs.get("standard_name", "")).lower()
    for kind in ("geopotential", "pressure", "temperature"):
        if kind in std:
            return kind
    units = str(attrs.get("units", "")).lower().replace(" ", "").replace("**", "").replace("^", "")
    if units in UNPHYSICAL_ZERO_UNITS:
        return UNPHYSICAL_ZERO_UNITS[units]
    return next((k for k, pattern in UNPHYSICAL_ZERO_NAMES.items() if pattern.match(name.lower())), None)


def unphysical_zero_channels(layout: InputLayout) -> list[tuple[str, str, float]]:
    """(name, kind, distance) of each input channel whose zero is no physical state (:func:`_zero_kind`):
    ``distance`` is how far 0 lies from the channel's mean over the input, in its standard deviations."""
    x = layout.template
    values = layout.values()
    if layout.variables is not None:
        channels = [(v, dict(layout.dataset[v].attrs), i) for i, v in enumerate(layout.variables)]
    elif x.ndim > 1 and x.dims[1] in x.coords and all(isinstance(v, str) for v in np.asarray(x[x.dims[1]].values).tolist()):
        channels = [(str(v), dict(x.attrs) if x.shape[1] == 1 else {}, i) for i, v in enumerate(x[x.dims[1]].values)]
    else:
        channels = [(str(x.name or "input"), dict(x.attrs), None)]
    out = []
    for name, attrs, i in channels:
        kind = _zero_kind(name, attrs)
        if kind is None:
            continue
        v = values if i is None else values[:, i]
        std = float(v.std()) or 1.0
        out.append((name, kind, abs(float(v.mean())) / std))
    return out


def _warn_zeros(layout: InputLayout) -> None:
    """One warning line when a zeros baseline is no physical state of some channel."""
    bad = unphysical_zero_channels(layout)
    if bad:
        which = ", ".join(f"{n} ({k}, 0 lies {d:.0f} std from its mean)" for n, k, d in bad)
        warnings.warn(f"baseline 'zeros' is no physical state of {which}: path methods then measure the distance "
                      "from an impossible input, not what the model uses; leave the baseline at its default, the "
                      "training climatology", UserWarning, stacklevel=4)


def training_climatology(model: nn.Module, per_sample_shape: Sequence[int]) -> np.ndarray | None:
    """The training climatology of the model's inputs, shaped (1, *per_sample_shape), in the input's units; None
    if the model carries none.

    Taken from ``model.input_climatology()`` when the model defines it (a tensor that broadcasts to one
    sample, e.g. the nowcasting model's rain rate at its training mean), else from the training mean the
    model standardises with (its ``x_mean`` buffer, fitted on training data by the DataModule and saved in
    the checkpoint): one value per channel (axis 1 of the input), or one per cell when it has a sample's
    full shape. Either way it is zero in the model's standardised space.
    """
    shape = tuple(int(s) for s in per_sample_shape)
    fn = getattr(model, "input_climatology", None)
    mean = fn() if callable(fn) else getattr(model, "x_mean", None)
    if not isinstance(mean, torch.Tensor):
        return None
    m = mean.detach().float().cpu().numpy()
    if m.size == int(np.prod(shape)):
        return m.reshape(1, *shape)
    if shape and m.size == shape[0]:
        return np.broadcast_to(m.reshape(1, shape[0], *([1] * (len(shape) - 1))), (1, *shape)).copy()
    return None


#: descriptions of the default baseline stored in the maps' ``baseline`` attribute
TRAINING_CLIMATOLOGY = "training climatology (the training mean the model standardises with; 0 in its standardised space)"
SAMPLE_CLIMATOLOGY = "climatology of the input (mean over its {n} samples; the model carries no training mean)"


def default_baseline(model: nn.Module, layout: InputLayout) -> tuple[np.ndarray, str]:
    """(values (1, ...), description) of the default baseline: the training climatology the model carries
    (:func:`training_climatology`), else the mean over the input's samples at every cell."""
    clim = training_climatology(model, layout.template.shape[1:])
    if clim is not None:
        return clim.astype(np.float32), TRAINING_CLIMATOLOGY
    return layout.values().mean(axis=0, keepdims=True), SAMPLE_CLIMATOLOGY.format(n=layout.template.shape[0])


def _baseline_array(baseline: Any, layout: InputLayout, method: str, max_baselines: int, seed: int,
                    model: nn.Module) -> tuple[np.ndarray | float, str]:
    """(values, description): a float, an array (1, ...) broadcast over samples, (n, ...) one per sample,
    or for gradient SHAP a distribution (m, ...)."""
    x = layout.template
    n = x.shape[0]
    if baseline is None:
        if method == "gradient_shap":
            idx = np.random.default_rng(seed).permutation(n)[:max_baselines]
            return layout.values()[np.sort(idx)], f"{min(n, max_baselines)} input samples (the input's distribution)"
        return default_baseline(model, layout)
    if isinstance(baseline, str):
        if baseline == "zeros":
            _warn_zeros(layout)
            return 0.0, "zeros"
        if baseline == "climatology":
            return default_baseline(model, layout)
        if baseline == "sample_mean":
            return layout.values().mean(axis=0, keepdims=True), f"mean over the input's {n} samples"
        raise ConfigError(f"baseline must be 'climatology', 'sample_mean', 'zeros', a number or an array/xarray, "
                          f"got {baseline!r}")
    if isinstance(baseline, (int, float, np.integer, np.floating)):
        if float(baseline) == 0.0:
            _warn_zeros(layout)
        return float(baseline), f"constant {float(baseline):g}"
    if isinstance(baseline, (xr.DataArray, xr.Dataset)):
        b = input_layout(baseline, layout.variables).template if isinstance(baseline, xr.Dataset) else baseline
        sample = layout.sample_dim
        field_dims = list(x.dims[1:])
        if sample in b.dims:
            if set(b.dims) != set(x.dims):
                raise DataError(f"baseline dims {tuple(b.dims)} do not match the input's {tuple(x.dims)}")
            b = b.transpose(*x.dims)
            if method != "gradient_shap" and b.shape[0] not in (1, n):
                raise DataError(f"baseline has {b.shape[0]} samples, the input {n} (give one, one per sample, or none)")
            desc = "given baseline per sample" if method != "gradient_shap" else f"{b.shape[0]} given baseline samples"
        else:
            if set(b.dims) != set(field_dims):
                raise DataError(f"baseline dims {tuple(b.dims)} do not match the input's field dims {tuple(field_dims)}")
            b = b.transpose(*field_dims).expand_dims({sample: 1})
            desc = "given baseline field"
        for d in field_dims:
            if d in b.coords and d in x.coords and b[d].shape == x[d].shape and not np.array_equal(b[d].values, x[d].values):
                raise DataError(f"baseline {d!r} coordinate does not match the input's")
        return np.asarray(b.values, dtype=np.float32), desc
    arr = np.asarray(baseline.detach().cpu() if isinstance(baseline, torch.Tensor) else baseline, dtype=np.float32)
    if arr.shape == tuple(x.shape[1:]):
        arr = arr[None]
    if arr.shape[1:] != tuple(x.shape[1:]) or (method != "gradient_shap" and arr.shape[0] not in (1, n)):
        raise DataError(f"baseline of shape {arr.shape} does not fit the input's {tuple(x.shape)}")
    return arr, "given baseline array"


# ---------------------------------------------------------------------------------------------------
# the methods
# ---------------------------------------------------------------------------------------------------

def _expand_baseline(base, xc: torch.Tensor, lo: int, hi: int, device) -> torch.Tensor | float:
    if isinstance(base, float):
        return base
    b = torch.as_tensor(base[lo:hi] if base.shape[0] > 1 else base, device=device)
    return b.expand_as(xc).contiguous() if b.shape[0] == 1 else b


def _conv_layer(model: nn.Module, order: list[tuple[str, nn.Module]], layer: Any, final: set[int] = frozenset()) -> tuple[str, nn.Module]:
    """The layer Grad-CAM explains: ``layer`` (a module or a dotted name), else the last conv layer that ran,
    passing over the output head (a conv whose output is the model's output, or a trailing 1x1 conv such as a
    U-Net's class head): Grad-CAM of a head only redraws the output map."""
    if isinstance(layer, nn.Module):
        return next((n for n, m in model.named_modules() if m is layer), type(layer).__name__), layer
    if isinstance(layer, str):
        modules = dict(model.named_modules())
        if layer not in modules:
            raise ConfigError(f"grad_cam layer {layer!r} is not a module of {type(model).__name__}")
        return layer, modules[layer]
    convs = [(n, m) for n, m in order if isinstance(m, nn.modules.conv._ConvNd)]
    if not convs:
        raise ConfigError(f"grad_cam needs a convolutional layer, and {type(model).__name__} has none "
                          f"(layers: {', '.join(type(m).__name__ for _, m in order[:6])}...); use another method")
    inner = list(convs)
    while len(inner) > 1 and (id(inner[-1][1]) in final or all(k == 1 for k in inner[-1][1].kernel_size)):
        inner.pop()
    return inner[-1]


def _lrp_rules_check(model: nn.Module, order: list[tuple[str, nn.Module]], rules: Mapping[str, Any] | None,
                     reducer: nn.Module) -> None:
    """Attach the user's ``rules``, and pass-through rules to shape-only layers and to the target's reduction
    (whose weighted sum, if any, is a Linear with the epsilon rule); ConfigError naming the first layer (in
    the order the forward pass runs them) that Captum's LRP rules do not cover."""
    from captum.attr._core.lrp import SUPPORTED_LAYERS_WITH_RULES, SUPPORTED_NON_LINEAR_LAYERS
    from captum.attr._utils.lrp_rules import PropagationRule

    class PassThroughRule(PropagationRule):
        """Relevance passes unchanged through a layer that only reshapes (Flatten, Unflatten, Identity)."""

        def forward_hook(self, module, inputs, outputs):
            return None

        def _manipulate_weights(self, module, inputs, outputs):
            return None

    for m in reducer.modules():
        if not list(m.children()) and not hasattr(m, "rule") and type(m) not in SUPPORTED_LAYERS_WITH_RULES:
            m.rule = PassThroughRule()
    modules = dict(model.named_modules())
    for name, rule in dict(rules or {}).items():
        if name not in modules:
            raise ConfigError(f"lrp rule for {name!r}: no such layer in {type(model).__name__}")
        modules[name].rule = rule() if isinstance(rule, type) else rule
    names = {m: n for n, m in model.named_modules()}
    ran = {id(m) for _, m in order}
    leaves = [(n, m) for n, m in order] + [(names[m], m) for m in model.modules()
                                           if not list(m.children()) and id(m) not in ran]
    for name, m in leaves:
        if hasattr(m, "rule") or type(m) in SUPPORTED_LAYERS_WITH_RULES or type(m) in SUPPORTED_NON_LINEAR_LAYERS:
            continue
        if isinstance(m, (nn.Flatten, nn.Unflatten, nn.Identity)):
            m.rule = PassThroughRule()
            continue
        raise ConfigError(f"lrp: Captum has no rule for layer {name!r} ({type(m).__name__}); supported: "
                          f"{', '.join(sorted({t.__name__ for t in [*SUPPORTED_LAYERS_WITH_RULES, *SUPPORTED_NON_LINEAR_LAYERS]}))}"
                          " (or pass rules={layer name: rule})")


def _clean_lrp(model: nn.Module, had_rule: set[int]) -> None:
    for m in model.modules():
        if id(m) not in had_rule and hasattr(m, "rule"):
            del m.rule
        for attr in ("activations",):
            if hasattr(m, attr) and id(m) not in had_rule:
                delattr(m, attr)


def summed_gradients(forward_fn: Callable, inputs, target_ind=None, additional_forward_args=None) -> tuple[torch.Tensor, ...]:
    """Captum's ``compute_gradients`` with one backward pass of the **sum** of the per-row outputs.

    Captum takes the gradient of ``torch.unbind(outputs)``, one autograd root per row: for 65 536 rows of a
    small MLP that costs ~20 us per row in Python, 50 times the model's own arithmetic. Rows do not interact
    in eval mode, so the gradient of the sum w.r.t. each row is that row's gradient, the same numbers.
    Installed as ``gradient_func`` on every Captum attribution object this module builds.
    """
    from captum._utils.common import _run_forward

    with torch.autograd.set_grad_enabled(True):
        outputs = _run_forward(forward_fn, inputs, target_ind, additional_forward_args)
        if outputs[0].numel() != 1:
            raise ConfigError("the attribution target must give one number per row")
        return torch.autograd.grad(outputs.sum(), inputs)


def _fast(obj):
    """A Captum attribution object whose gradients come from :func:`summed_gradients`."""
    obj.gradient_func = summed_gradients
    return obj


def _run_chunk(method: str, fwd: TargetModule, xc: torch.Tensor, extra: tuple, base, opts: dict,
               ibs: int, lo: int, hi: int, scale: torch.Tensor | None, cam_layer, x_shape) -> torch.Tensor:
    import captum.attr as ca

    device = xc.device
    n = xc.shape[0]
    extra_args = extra if extra else None
    if method == "saliency":
        return _fast(ca.Saliency(fwd)).attribute(xc, abs=bool(opts["abs"]), additional_forward_args=extra_args)
    if method == "input_x_gradient":
        return _fast(ca.InputXGradient(fwd)).attribute(xc, additional_forward_args=extra_args)
    if method == "integrated_gradients":
        return _fast(ca.IntegratedGradients(fwd)).attribute(
            xc, baselines=_expand_baseline(base, xc, lo, hi, device), n_steps=int(opts["n_steps"]),
            method=opts["integration"], internal_batch_size=max(ibs, n), additional_forward_args=extra_args)
    if method == "deeplift":
        return _fast(ca.DeepLift(fwd)).attribute(xc, baselines=_expand_baseline(base, xc, lo, hi, device),
                                          additional_forward_args=extra_args)
    if method == "gradient_shap":
        dist = torch.as_tensor(base if not isinstance(base, float) else np.full((1, *xc.shape[1:]), base, np.float32),
                               device=device)
        total = int(opts["n_samples"])
        per_pass = max(1, ibs // n)
        acc, done = torch.zeros_like(xc), 0
        gs = _fast(ca.GradientShap(fwd))
        while done < total:  # groups of random draws (not samples), each a batch of at most ibs rows
            k = min(per_pass, total - done)
            acc += k * gs.attribute(xc, baselines=dist, n_samples=k, stdevs=float(opts["stdevs"]),
                                    additional_forward_args=extra_args)
            done += k
        return acc / total
    if method == "smoothgrad":
        # noise in units of each channel's std (Smilkov et al. 2017 use 10-20 % of the range): attribute w.r.t.
        # u = x / s and divide the gradient by s, so channels in different units get comparable noise
        scaled = TargetModule(_Scaled(fwd.model, scale), fwd.reducer)
        nt = ca.NoiseTunnel(_fast(ca.Saliency(scaled)))
        g = nt.attribute(xc / scale, nt_type="smoothgrad", nt_samples=int(opts["nt_samples"]),
                         nt_samples_batch_size=max(1, ibs // n), stdevs=float(opts["noise_level"]),
                         abs=bool(opts["abs"]), additional_forward_args=extra_args)
        return g / scale
    if method == "occlusion":
        window, strides = opts["window"], opts["strides"]
        n_pos = int(np.prod([math.ceil((s - w) / st) + 1 for s, w, st in zip(xc.shape[1:], window, strides)]))
        return ca.Occlusion(fwd).attribute(xc, sliding_window_shapes=tuple(window), strides=tuple(strides),
                                           baselines=_expand_baseline(base, xc, lo, hi, device),
                                           perturbations_per_eval=max(1, min(n_pos, ibs // n)),
                                           additional_forward_args=extra_args)
    if method == "grad_cam":
        cam = ca.LayerGradCam(fwd, cam_layer).attribute(xc, additional_forward_args=extra_args,
                                                        relu_attributions=bool(opts["relu"]))
        n_sp = cam.ndim - 2
        if n_sp < 1 or n_sp > len(x_shape) - 1:
            raise ConfigError(f"grad_cam: layer output of shape {tuple(cam.shape[1:])} has no spatial axes to map onto "
                              f"the input's {tuple(x_shape[1:])}")
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[n_sp]
        up = torch.nn.functional.interpolate(cam, size=tuple(x_shape[-n_sp:]), mode=mode, align_corners=False)
        up = up.sum(1)  # (n, *spatial)
        return up.reshape(n, *([1] * (len(x_shape) - 1 - n_sp)), *x_shape[-n_sp:]).expand(n, *x_shape[1:])
    if method == "lrp":
        return _fast(ca.LRP(fwd)).attribute(xc, additional_forward_args=extra_args)
    raise AssertionError(method)


class _Scaled(nn.Module):
    """``model(u * scale)``: lets SmoothGrad add noise in units of each channel's std."""

    def __init__(self, model: nn.Module, scale: torch.Tensor):
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, u):
        return self.model(u * self.scale)


def _channel_scale(values: np.ndarray) -> np.ndarray:
    """Std of each index along axis 1 (over samples and the other axes), shaped to broadcast; 1 where 0."""
    if values.ndim < 2:
        s = np.array(values.std() or 1.0, dtype=np.float32).reshape(1)
        return s
    axes = tuple(i for i in range(values.ndim) if i != 1)
    s = values.std(axis=axes, keepdims=True).astype(np.float32)
    s[~(s > 0)] = 1.0
    return s


def _occlusion_window(layout: InputLayout, window: Any, strides: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Sliding window and strides in cells along each per-sample dim, from {dim: cells} (default: 1 along every
    dim except the horizontal ones, which get about 1/12 of their length)."""
    dims = list(layout.template.dims[1:])
    sizes = [layout.template.sizes[d] for d in dims]
    hor = {"lat", "lon", "y", "x"}
    if window is None:
        window = {d: (max(1, round(s / 12)) if d in hor else 1) for d, s in zip(dims, sizes)}
    if isinstance(window, Mapping):
        bad = [d for d in window if d not in dims]
        if bad:
            raise ConfigError(f"occlusion window dims {bad} are not per-sample dims of the input {dims}")
        win = tuple(int(window.get(d, 1)) for d in dims)
    else:
        win = tuple(int(w) for w in np.broadcast_to(np.asarray(window), (len(dims),)))
    if strides is None:
        st = win
    elif isinstance(strides, Mapping):
        st = tuple(int(strides.get(d, w)) for d, w in zip(dims, win))
    else:
        st = tuple(int(s) for s in np.broadcast_to(np.asarray(strides), (len(dims),)))
    if any(w < 1 or w > s for w, s in zip(win, sizes)) or any(s < 1 for s in st):
        raise ConfigError(f"occlusion window {win} / strides {st} must be >= 1 and fit the per-sample shape {tuple(sizes)}")
    return win, st


def _plain(value: Any) -> Any:
    """An attribute value NetCDF can store."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float, str)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return list(value)
    return str(value)


# ---------------------------------------------------------------------------------------------------
# the entry point
# ---------------------------------------------------------------------------------------------------

def attribute(model: nn.Module, x: xr.DataArray | xr.Dataset, method: str, target: Any = None, baseline: Any = None, *,
              variables: Sequence[str] | None = None, internal_batch_size: int | None = None,
              memory_budget_mib: float | None = None, device: str | torch.device | None = None,
              seed: int = 0, expected_coords: Mapping[str, Any] | None = None, **options) -> xr.DataArray | xr.Dataset:
    """Attribution map of ``method`` for ``target`` on every sample of ``x``, on ``x``'s dims and coordinates.

    Args:
        model: any ``torch.nn.Module`` taking ``x.values`` (float32, sample axis first); it is put in eval
            mode for the call and restored after.
        x: DataArray (sample dim first) or Dataset of input variables (stacked on ``variable`` after the sample dim).
        method: one of :data:`METHODS`.
        target: what to explain, one number per sample: None (the output is one value per sample), an output
            index, a :class:`~climateml.attribution.targets.Target` (region means, class scores, nowcast rain),
            a callable ``f(output) -> (n,)`` or a config mapping (see :func:`~climateml.attribution.targets.as_target`).
            A region target's grid defaults to ``x``'s lat/lon or y/x coordinates.
        baseline: reference input of integrated gradients, DeepLift, occlusion and gradient SHAP. None (the
            default) or "climatology": the **training climatology** the model carries (:func:`training_climatology`:
            the training mean per channel, or per cell, that it standardises its inputs with, i.e. zero in its
            standardised space); for a model that carries none, the mean over ``x``'s samples at every cell.
            Gradient SHAP's default is a random subset of ``x``'s samples (its baseline is a distribution).
            Also "sample_mean" (mean over ``x``'s samples), "zeros", a number, an xarray field (with or without
            the sample dim) or an array. Zeros in physical units are rarely a neutral state: 0 Pa of pressure
            or 0 K lie ~100 standard deviations from any real state, and path methods then measure the distance
            from that impossible input; a zeros baseline on such a channel (pressure, temperature in K,
            geopotential, from its standard_name, units or name) warns in one line.
        variables: a Dataset's variables in the model's channel order (default: ``model.spec.inputs`` if it names
            them, else the Dataset's order).
        internal_batch_size: at most this many rows go through the model at once (memory bound): samples
            are chunked, and multi-evaluation methods split their steps / draws / windows to fit. Default:
            as many rows as fit ``memory_budget_mib`` of activations (measured on one sample).
        memory_budget_mib: activation memory per pass when ``internal_batch_size`` is not given [MiB];
            default 16 on a CPU (cache-sized passes are fastest there) and 2048 on a GPU.
        device: where to compute (default: the model's device); ``x`` is moved there chunk by chunk.
        seed: seeds the random draws of gradient SHAP and SmoothGrad (reproducible maps).
        expected_coords: {dim: values} the input must have (default: ``model.spec.options["coords"]`` if set).
        **options: the method's options (:data:`METHOD_OPTIONS`): ``n_steps`` and ``integration`` (integrated
            gradients), ``n_samples``, ``stdevs``, ``max_baselines`` (gradient SHAP), ``nt_samples``,
            ``noise_level`` (noise std as a fraction of each channel's std) and ``abs`` (SmoothGrad),
            ``abs`` (saliency), ``window`` and ``strides`` ({dim: cells}, occlusion), ``layer`` (module or
            dotted name; default the last conv layer that is not the output layer) and ``relu`` (Grad-CAM),
            ``rules`` ({layer name: Captum rule}, LRP). LRP sees modules only: a functional step inside
            ``forward`` (input standardisation, ``x * scale``, ``F.relu``) passes relevance on as a plain
            gradient, which can change the maps' magnitude; shape-only layers (Flatten, Unflatten,
            Identity) pass relevance through unchanged.

    Returns:
        A DataArray like ``x`` (a Dataset like ``x`` for a Dataset input) named ``attribution_<method>``, with
        attrs ``method``, ``target``, ``baseline``, ``meaning`` and the options used.

    Raises:
        ConfigError: unknown method or option, a method the model cannot support (Grad-CAM without a conv
            layer, LRP on a layer without a rule), a target region outside the grid.
        DataError: an input whose shape, variables or coordinates do not fit the model.
    """
    if method not in METHODS:
        raise ConfigError(f"attribution method must be one of {list(METHODS)}, got {method!r}")
    unknown = set(options) - set(METHOD_OPTIONS[method])
    if unknown:
        raise ConfigError(f"{method} has no option(s) {sorted(unknown)}; it takes {sorted(METHOD_OPTIONS[method]) or 'none'}")
    if internal_batch_size is not None and int(internal_batch_size) < 1:
        raise ConfigError(f"internal_batch_size must be >= 1, got {internal_batch_size}")
    opts = {**METHOD_OPTIONS[method], **options}
    layout = input_layout(x, variables, model)
    check_input(model, layout, expected_coords)
    values = layout.values()
    n = values.shape[0]
    dev = torch.device(device) if device is not None else model_device(model)
    if dev != model_device(model):
        raise ConfigError(f"device {dev} differs from the model's ({model_device(model)}); move the model first")

    with eval_mode(model):
        dtype = model_dtype(model)
        trial = _trial_forward(model, torch.as_tensor(values[:1], device=dev, dtype=dtype))
        out_shape, order, final = trial.output_shape, trial.order, trial.final
        ibs = int(internal_batch_size) if internal_batch_size is not None else \
            auto_batch_size(trial.activations_per_row, dev, memory_budget_mib)
        tgt = as_target(target)
        bound: BoundTarget = tgt.bind(out_shape, layout.dataset if layout.dataset is not None else layout.template,
                                      n, layout.sample_dim)
        fwd = TargetModule(model, bound.reducer).to(dev)
        fwd.eval()
        base, base_desc = _baseline_array(baseline, layout, method, int(opts.get("max_baselines", 64)), seed,
                                           model)
        cam_layer, cam_name = None, ""
        if method == "grad_cam":
            cam_name, cam_layer = _conv_layer(model, order, opts["layer"], final)
        had_rule = {id(m) for m in fwd.modules() if hasattr(m, "rule")}
        if method == "lrp":
            _lrp_rules_check(model, order, opts["rules"], bound.reducer)
        if method == "occlusion":
            opts["window"], opts["strides"] = _occlusion_window(layout, opts["window"], opts["strides"])
        scale = torch.as_tensor(_channel_scale(values), device=dev, dtype=dtype) if method == "smoothgrad" else None
        chunk = max(1, ibs // 2) if method == "deeplift" else ibs
        result = np.empty(values.shape, dtype=np.float32)
        rng_devices = [dev] if dev.type == "cuda" else []
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode(False))
            stack.enter_context(torch.enable_grad())
            stack.enter_context(torch.random.fork_rng(devices=rng_devices))
            stack.enter_context(warnings.catch_warnings())
            # DeepLift announces its temporary hooks on every call; they are removed after it
            warnings.filterwarnings("ignore", message=r"\s*Setting forward, backward hooks", category=UserWarning)
            torch.manual_seed(seed)
            numpy_state = np.random.get_state()  # Captum's gradient SHAP draws its points with np.random
            stack.callback(np.random.set_state, numpy_state)
            np.random.seed(seed)
            try:
                for lo in range(0, n, chunk):  # chunks of samples, never one sample at a time
                    hi = min(n, lo + chunk)
                    if method == "lrp" and lo > 0:  # Captum removes every layer's rule after each call
                        _lrp_rules_check(model, order, opts["rules"], bound.reducer)
                    xc = torch.as_tensor(values[lo:hi], device=dev, dtype=dtype).requires_grad_()
                    extra = tuple(torch.as_tensor(e[lo:hi], device=dev, dtype=dtype) for e in bound.extra)
                    a = _run_chunk(method, fwd, xc, extra, base, opts, ibs, lo, hi, scale, cam_layer, values.shape)
                    result[lo:hi] = a.detach().float().cpu().numpy()
            except RuntimeError as err:
                if method == "lrp" and "more than once" in str(err):
                    raise ConfigError(f"lrp: {str(err).splitlines()[0]}") from None
                raise
            finally:
                if method == "lrp":
                    _clean_lrp(fwd, had_rule)

    shown = {k: v for k, v in opts.items() if k not in ("rules",)}
    if method == "grad_cam":
        shown["layer"] = cam_name
    if method == "occlusion":
        shown["window"] = {d: w for d, w in zip(layout.template.dims[1:], opts["window"])}
        shown["strides"] = {d: s for d, s in zip(layout.template.dims[1:], opts["strides"])}
    attrs = {"method": method, "target": bound.description, "meaning": METHOD_NOTES[method],
             "sign_convention": "positive: the input value raises the target",
             **({"baseline": base_desc} if method in ("integrated_gradients", "deeplift", "occlusion", "gradient_shap") else {}),
             **{f"option_{k}": _plain(v) for k, v in shown.items() if v is not None},
             "model": type(model).__name__}
    return layout.to_xarray(result, f"attribution_{method}", attrs)


def predict(model: nn.Module, x: xr.DataArray | xr.Dataset | np.ndarray | torch.Tensor, batch_size: int = 1024,
            variables: Sequence[str] | None = None, device: str | torch.device | None = None) -> np.ndarray:
    """The model's outputs on every sample of ``x`` as a numpy array (n, *output), in eval mode, in batches."""
    if isinstance(x, (xr.DataArray, xr.Dataset)):
        values = input_layout(x, variables, model).values()
    else:
        values = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
    dev = torch.device(device) if device is not None else model_device(model)
    dtype = model_dtype(model)
    with eval_mode(model):
        outs = []
        with torch.no_grad():
            for lo in range(0, len(values), batch_size):
                xb = torch.as_tensor(values[lo:lo + batch_size], device=dev, dtype=dtype)
                outs.append(model(xb).float().cpu().numpy())
    return np.concatenate(outs) if outs else np.empty((0,), np.float32)
