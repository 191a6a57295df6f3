"""``attribute()``: Captum attribution maps for any ``torch.nn.Module``, returned as xarray on the input's coordinates.

The entry point of the package: the input becomes the model's tensor through the one adapter
(:mod:`climateml.attribution.adapter`, a :class:`~climateml.data.adapter.FieldLayout`), the method comes from the
registry (:mod:`climateml.attribution.methods`), the baseline from :mod:`climateml.attribution.baselines`, and the
attribution comes back with exactly ``x``'s dims, coordinates and variables, its name and attributes saying
method, target and baseline, ready for :func:`climateml.writers.write_cf`.

Samples are never looped over one by one: they go through in chunks of at most ``internal_batch_size`` rows,
on the model's device. Unless given, ``internal_batch_size`` is sized from the activations of one sample to fit
a memory budget.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from torch import nn

from climateml.attribution.adapter import check_input, input_layout, input_values
from climateml.attribution.baselines import baseline_array
from climateml.attribution.methods import (
    METHOD_NOTES, METHOD_OPTIONS, METHODS, auto_batch_size, channel_scale, clean_lrp, conv_layer, eval_mode,
    lrp_rules_check, model_device, model_dtype, occlusion_window, run_chunk, trial_forward,
)
from climateml.attribution.targets import BoundTarget, TargetModule, as_target
from climateml.errors import ConfigError


def _plain(value: Any) -> Any:
    """An attribute value NetCDF can store."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float, str)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return list(value)
    return str(value)


def attribute(model: nn.Module, x: xr.DataArray | xr.Dataset, method: str, target: Any = None, baseline: Any = None, *,
              variables: Sequence[str] | None = None, internal_batch_size: int | None = None,
              memory_budget_mib: float | None = None, device: str | torch.device | None = None,
              seed: int = 0, expected_coords: Mapping[str, Any] | None = None, **options) -> xr.DataArray | xr.Dataset:
    """Attribution map of ``method`` for ``target`` on every sample of ``x``, on ``x``'s dims and coordinates.

    Args:
        model: any ``torch.nn.Module`` taking ``x.values`` (float32, sample axis first); it is put in eval
            mode for the call and restored after.
        x: DataArray (sample dim first) or Dataset of input variables (stacked on ``variable`` after the sample dim).
        method: one of :data:`.methods.METHODS`.
        target: what to explain, one number per sample: None (the output is one value per sample), an output
            index, a :class:`~climateml.attribution.targets.Target` (region means, class scores, nowcast rain),
            a callable ``f(output) -> (n,)`` or a config mapping (see :func:`~climateml.attribution.targets.as_target`).
            A region target's grid defaults to ``x``'s lat/lon or y/x coordinates.
        baseline: reference input of integrated gradients, DeepLift, occlusion and gradient SHAP. None (the
            default) or "climatology": the **training climatology** the model carries
            (:func:`.baselines.training_climatology`: the training mean per channel, or per cell, that it
            standardises its inputs with, i.e. zero in its standardised space); for a model that carries none,
            the mean over ``x``'s samples at every cell.
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
        **options: the method's options (:data:`.methods.METHOD_OPTIONS`): ``n_steps`` and ``integration`` (integrated
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
    xs = layout.stack(x)
    check_input(model, xs, expected_coords)
    values = np.asarray(xs.values, dtype=np.float32)
    n = values.shape[0]
    dev = torch.device(device) if device is not None else model_device(model)
    if dev != model_device(model):
        raise ConfigError(f"device {dev} differs from the model's ({model_device(model)}); move the model first")

    with eval_mode(model):
        dtype = model_dtype(model)
        trial = trial_forward(model, torch.as_tensor(values[:1], device=dev, dtype=dtype))
        out_shape, order, final = trial.output_shape, trial.order, trial.final
        ibs = int(internal_batch_size) if internal_batch_size is not None else \
            auto_batch_size(trial.activations_per_row, dev, memory_budget_mib)
        tgt = as_target(target)
        bound: BoundTarget = tgt.bind(out_shape, x, n, layout.sample_dim)
        fwd = TargetModule(model, bound.reducer).to(dev)
        fwd.eval()
        base, base_desc = baseline_array(baseline, layout, xs, method, int(opts.get("max_baselines", 64)), seed, model)
        cam_layer, cam_name = None, ""
        if method == "grad_cam":
            cam_name, cam_layer = conv_layer(model, order, opts["layer"], final)
        had_rule = {id(m) for m in fwd.modules() if hasattr(m, "rule")}
        if method == "lrp":
            lrp_rules_check(model, order, opts["rules"], bound.reducer)
        if method == "occlusion":
            opts["window"], opts["strides"] = occlusion_window(xs, opts["window"], opts["strides"])
        scale = torch.as_tensor(channel_scale(values), device=dev, dtype=dtype) if method == "smoothgrad" else None
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
                        lrp_rules_check(model, order, opts["rules"], bound.reducer)
                    xc = torch.as_tensor(values[lo:hi], device=dev, dtype=dtype).requires_grad_()
                    extra = tuple(torch.as_tensor(e[lo:hi], device=dev, dtype=dtype) for e in bound.extra)
                    a = run_chunk(method, fwd, xc, extra, base, opts, ibs, lo, hi, scale, cam_layer, values.shape)
                    result[lo:hi] = a.detach().float().cpu().numpy()
            except RuntimeError as err:
                if method == "lrp" and "more than once" in str(err):
                    raise ConfigError(f"lrp: {str(err).splitlines()[0]}") from None
                raise
            finally:
                if method == "lrp":
                    clean_lrp(fwd, had_rule)

    shown = {k: v for k, v in opts.items() if k not in ("rules",)}
    if method == "grad_cam":
        shown["layer"] = cam_name
    if method == "occlusion":
        shown["window"] = {d: w for d, w in zip(xs.dims[1:], opts["window"])}
        shown["strides"] = {d: s for d, s in zip(xs.dims[1:], opts["strides"])}
    attrs = {"method": method, "target": bound.description, "meaning": METHOD_NOTES[method],
             "sign_convention": "positive: the input value raises the target",
             **({"baseline": base_desc} if method in ("integrated_gradients", "deeplift", "occlusion", "gradient_shap") else {}),
             **{f"option_{k}": _plain(v) for k, v in shown.items() if v is not None},
             "model": type(model).__name__}
    return layout.unstack(result, x, f"attribution_{method}", attrs)


def predict(model: nn.Module, x: xr.DataArray | xr.Dataset | np.ndarray | torch.Tensor, batch_size: int = 1024,
            variables: Sequence[str] | None = None, device: str | torch.device | None = None) -> np.ndarray:
    """The model's outputs on every sample of ``x`` as a numpy array (n, *output), in eval mode, in batches."""
    if isinstance(x, (xr.DataArray, xr.Dataset)):
        values = input_values(x, variables, model)
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
