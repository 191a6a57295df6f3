"""The attribution methods: which Captum methods there are, their options and what their numbers mean (the
registry), how the model is run for them (eval mode, a trial pass, the rows per pass), and one chunk of samples
through each method (:func:`run_chunk`), with the LRP rules and Grad-CAM layer it needs.

Every method explains one number per sample (:mod:`climateml.attribution.targets`): the model is wrapped
in a small module that reduces its output to that number, so all Captum methods are called alike.
The methods that evaluate the model many times per sample (integrated gradients, gradient SHAP, SmoothGrad,
occlusion, DeepLift) put at most ``internal_batch_size`` rows through the model at once (Captum's own batching
where it has it, chunking of random draws here where it does not). The gradients of a batch come from one
backward pass of the summed per-row targets (:func:`summed_gradients`), not Captum's one autograd root per row,
which costs more than a small model's arithmetic.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
import xarray as xr
from torch import nn

from climateml.attribution.targets import TargetModule
from climateml.errors import ConfigError, DataError

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
# running the model
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


@dataclass
class TrialPass:
    """What one forward pass on one sample tells: output shape, layers in the order they ran, the output
    layer(s), and the numbers of activations one row of a batch needs."""

    output_shape: tuple[int, ...]
    order: list[tuple[str, nn.Module]]
    final: set[int]
    activations_per_row: int


def trial_forward(model: nn.Module, x: torch.Tensor) -> TrialPass:
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
# the methods
# ---------------------------------------------------------------------------------------------------

def _expand_baseline(base, xc: torch.Tensor, lo: int, hi: int, device) -> torch.Tensor | float:
    if isinstance(base, float):
        return base
    b = torch.as_tensor(base[lo:hi] if base.shape[0] > 1 else base, device=device)
    return b.expand_as(xc).contiguous() if b.shape[0] == 1 else b


def conv_layer(model: nn.Module, order: list[tuple[str, nn.Module]], layer: Any, final: set[int] = frozenset()) -> tuple[str, nn.Module]:
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


def lrp_rules_check(model: nn.Module, order: list[tuple[str, nn.Module]], rules: Mapping[str, Any] | None,
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


def clean_lrp(model: nn.Module, had_rule: set[int]) -> None:
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


def run_chunk(method: str, fwd: TargetModule, xc: torch.Tensor, extra: tuple, base, opts: dict,
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


def channel_scale(values: np.ndarray) -> np.ndarray:
    """Std of each index along axis 1 (over samples and the other axes), shaped to broadcast; 1 where 0."""
    if values.ndim < 2:
        s = np.array(values.std() or 1.0, dtype=np.float32).reshape(1)
        return s
    axes = tuple(i for i in range(values.ndim) if i != 1)
    s = values.std(axis=axes, keepdims=True).astype(np.float32)
    s[~(s > 0)] = 1.0
    return s


def occlusion_window(x: xr.DataArray, window: Any, strides: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Sliding window and strides in cells along each per-sample dim, from {dim: cells} (default: 1 along every
    dim except the horizontal ones, which get about 1/12 of their length); ``x``: the input stacked."""
    dims = list(x.dims[1:])
    sizes = [x.sizes[d] for d in dims]
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
