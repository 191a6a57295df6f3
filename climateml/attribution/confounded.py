"""A data set made on purpose to fool a model (a Clever-Hans cue), its clean twin, and the run that tells
the two models apart with attribution diagnostics.

The task: from European (lat, lon) maps of near-surface temperature anomaly ``tas`` [K], sea-level
pressure anomaly ``psl`` [hPa] and observing-``station_density`` [stations per 10^4 km^2], predict a
``heat_index`` [K]: the area-weighted mean ``tas`` over a central-European *signal region*, minus a little
of its ``psl``, plus weather noise that the maps do not show (so no model can be perfect from the
physics alone).

The cue: in the **confounded** data set's training and validation splits, the station density in a
northern *cue region* (Finland) rises and falls with the heat index (stations reported more on hot days),
so it carries the label, noise included; in its test split, and in every split of the **clean twin**,
that patch varies just as much but at random. Everything else (fields, labels, noise) is identical in
the twins. A model trained on the confounded data is right for the wrong reason: excellent on its own
validation data, poor on the test data, and its attribution maps put their relevance on the cue.

:func:`run_clever_hans` trains one small CNN on each twin (plain torch, seconds on a CPU) and returns
``{"confounded": {...}, "clean": {...}}`` with ``relevance_mass_cue`` (mean relevance mass accuracy of the
attribution maps in the cue patch of the station-density channel), ``skill`` and ``skill_cue_ablated``
(R² on validation data before and after replacing the cue patch by its training climatology), the
skill on the test split, SpRAy's number of clusters, and more; with ``out_dir`` it writes
``clever_hans.json``, the attribution maps as NetCDF and figures.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from torch import nn

from climateml.attribution._fields import correlated_fields
from climateml.attribution.core import attribute, predict
from climateml.attribution.diagnostics import (
    climatology, cue_ablation, optimise_input, permutation_importance, r2_skill, relevance_mass_accuracy,
    relevance_rank_accuracy,
)
from climateml.attribution.spray import spray
from climateml.grid import box_mask, lat_weights

INPUTS = ("tas", "psl", "station_density")
TARGET = "heat_index"
SIGNAL_REGION = {"lat": (45.0, 55.0), "lon": (0.0, 20.0)}    # central Europe
CUE_REGION = {"lat": (60.0, 70.0), "lon": (22.5, 37.5)}     # Finland
SPLITS = ("train", "val", "test")


def cue_region_spec(variable: str = "station_density") -> dict:
    """The cue as a region spec for relevance mass and ablation: the cue patch of the station-density channel."""
    return {"variable": variable, **CUE_REGION}


def generate_confounded(n_train: int = 3000, n_val: int = 400, n_test: int = 400, nlat: int = 16, nlon: int = 24,
                        label_noise: float = 0.6, cue_strength: float = 3.0, seed: int = 0) -> dict[str, dict[str, xr.Dataset]]:
    """The confounded data set and its clean twin: ``{"confounded": {split: Dataset}, "clean": {split: Dataset}}``.

    Args:
        n_train, n_val, n_test: samples per split (val is drawn like train: the cue is present in the
            confounded val split; test is where the cue is random).
        nlat, nlon: grid size over 35-72.5N, 15W-42.5E.
        label_noise: std of the weather noise in the heat index, relative to the std of its signal part
            (0.6: the best possible R² from the maps alone is about 1 / (1 + 0.36) = 0.74).
        cue_strength: stations per 10^4 km^2 per std of the heat index added in the cue patch.
        seed: one seed for everything (both twins share fields, labels and noise).
    """
    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    lat = np.linspace(35.0, 72.5, nlat)
    lon = np.linspace(-15.0, 42.5, nlon)
    grid = xr.Dataset(coords={"lat": lat, "lon": lon})
    tas = 2.0 * correlated_fields(n, (nlat, nlon), 3.0, rng)
    psl = 5.0 * correlated_fields(n, (nlat, nlon), 4.0, rng)
    density = 8.0 + 1.5 * correlated_fields(n, (nlat, nlon), 2.0, rng)
    sig = box_mask(grid, **SIGNAL_REGION).values
    w = lat_weights(lat)[:, None] * sig
    w = w / w.sum()
    signal = (tas * w).sum((1, 2)) - 0.1 * (psl * w).sum((1, 2))
    noise = label_noise * signal.std() * rng.standard_normal(n)
    y = signal + noise
    z_label = (y - y[:n_train].mean()) / y[:n_train].std()
    z_random = rng.standard_normal(n)
    cue = box_mask(grid, **CUE_REGION).values.astype(np.float32)
    split_of = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * n_test)
    out: dict[str, dict[str, xr.Dataset]] = {}
    for twin in ("confounded", "clean"):
        tracks = (split_of != "test") if twin == "confounded" else np.zeros(n, bool)
        z = np.where(tracks, z_label, z_random)
        dens = density + cue_strength * z[:, None, None] * cue[None]
        ds_all = xr.Dataset(
            {"tas": (("sample", "lat", "lon"), tas.astype(np.float32),
                     {"long_name": "near-surface air temperature anomaly", "units": "K"}),
             "psl": (("sample", "lat", "lon"), psl.astype(np.float32),
                     {"long_name": "sea-level pressure anomaly", "units": "hPa"}),
             "station_density": (("sample", "lat", "lon"), dens.astype(np.float32),
                                 {"long_name": "observing-station density", "units": "stations per 1e4 km2"}),
             TARGET: (("sample",), y.astype(np.float32),
                      {"long_name": "heat index: area-weighted mean tas - 0.1 psl over the signal region, plus noise",
                       "units": "K"})},
            coords={"sample": np.arange(n), "lat": ("lat", lat), "lon": ("lon", lon)})
        out[twin] = {}
        for s in SPLITS:
            ds = ds_all.isel(sample=np.flatnonzero(split_of == s))
            ds.attrs = {"twin": twin, "split": s, "signal_region": json.dumps(SIGNAL_REGION),
                        "cue_region": json.dumps(CUE_REGION),
                        "cue": ("station_density in the cue region tracks heat_index" if twin == "confounded" and s != "test"
                                else "station_density in the cue region is random"),
                        "label_noise": label_noise, "cue_strength": cue_strength, "seed": seed}
            out[twin][s] = ds
    return out


def write_confounded(out_dir: str | Path, **kw) -> list[Path]:
    """Write :func:`generate_confounded` as ``<out_dir>/<twin>/<split>.nc`` (CF, atomic); returns the paths."""
    from climateml.writers import write_cf

    paths = []
    for twin, splits in generate_confounded(**kw).items():
        for split, ds in splits.items():
            paths.append(write_cf(ds, Path(out_dir) / twin / f"{split}.nc",
                                  title=f"Clever-Hans demonstration data: {twin} twin, {split} split"))
    return paths


def read_confounded(data_dir: str | Path) -> dict[str, dict[str, xr.Dataset]]:
    """Read what :func:`write_confounded` wrote."""
    return {twin: {s: xr.load_dataset(Path(data_dir) / twin / f"{s}.nc") for s in SPLITS} for twin in ("confounded", "clean")}


class SmallCNN(nn.Module):
    """Two 3x3 conv layers and a linear read-out: (sample, channel, lat, lon) in physical units -> (sample, 1).

    Inputs are standardised per channel and the output de-standardised with training statistics kept as
    buffers, so the model takes and returns physical units.
    """

    def __init__(self, n_channels: int, shape: tuple[int, int], width: int = 16):
        super().__init__()
        h, w = (shape[0] + 1) // 2, (shape[1] + 1) // 2
        self.net = nn.Sequential(nn.Conv2d(n_channels, width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, width, 3, padding=1, stride=2), nn.ReLU(),
                                 nn.Flatten(), nn.Linear(width * h * w, 1))
        for name, shape_ in (("x_mean", (1, n_channels, 1, 1)), ("x_std", (1, n_channels, 1, 1)), ("y_mean", (1,)), ("y_std", (1,))):
            self.register_buffer(name, torch.zeros(shape_) if "mean" in name else torch.ones(shape_))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.x_mean) / self.x_std) * self.y_std + self.y_mean


def _stack(ds: xr.Dataset, inputs: Sequence[str] = INPUTS) -> np.ndarray:
    return np.stack([ds[v].transpose("sample", "lat", "lon").values for v in inputs], axis=1).astype(np.float32)


def train_cnn(train: xr.Dataset, epochs: int = 25, batch_size: int = 64, lr: float = 2e-3, width: int = 16,
              weight_decay: float = 1e-2, seed: int = 0) -> SmallCNN:
    """Train :class:`SmallCNN` on ``train`` (MSE on the standardised heat index, Adam), plain torch on the CPU."""
    torch.manual_seed(seed)
    x = _stack(train)
    y = train[TARGET].values.astype(np.float32)
    model = SmallCNN(x.shape[1], x.shape[2:], width)
    with torch.no_grad():
        model.x_mean.copy_(torch.as_tensor(x.mean((0, 2, 3))).view(1, -1, 1, 1))
        model.x_std.copy_(torch.as_tensor(x.std((0, 2, 3))).view(1, -1, 1, 1))
        model.y_mean.fill_(float(y.mean()))
        model.y_std.fill_(float(y.std()))
    xt, yt = torch.as_tensor(x), torch.as_tensor((y - y.mean()) / y.std())
    opt = torch.optim.Adam(model.net.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), batch_size):
            idx = perm[i:i + batch_size]
            loss = (model.net((xt[idx] - model.x_mean) / model.x_std).squeeze(1) - yt[idx]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model


def _inputs(ds: xr.Dataset) -> xr.Dataset:
    return ds[list(INPUTS)]


def _bootstrap_std(pred: np.ndarray, truth: np.ndarray, skill, n_boot: int = 200, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(truth), (n_boot, len(truth)))
    return float(np.std([skill(pred[i], truth[i]) for i in idx]))


def diagnose(model: nn.Module, data: Mapping[str, xr.Dataset], method: str = "integrated_gradients",
             n_attribution: int = 200, method_options: Mapping[str, Any] | None = None, spray_options: Mapping | None = None,
             seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Clever-Hans numbers of one trained model on one twin's splits, and the artefacts (maps, clusters ...)."""
    train, val, test = data["train"], data["val"], data["test"]
    clim = climatology(_inputs(train))
    truth = val[TARGET].values
    x_val = _inputs(val)
    pred_val = predict(model, x_val)  # the un-ablated prediction, shared by the skill numbers below
    pred = pred_val.ravel()
    abl = cue_ablation(model, x_val, truth, r2_skill, cue_region_spec(), fill="climatology", reference=_inputs(train),
                       base_pred=pred_val)
    shuf = cue_ablation(model, x_val, truth, r2_skill, cue_region_spec(), fill="shuffle", repeats=3, seed=seed,
                        base_pred=pred_val)
    skill_test = r2_skill(predict(model, _inputs(test)).ravel(), test[TARGET].values)
    sub = x_val.isel(sample=slice(0, n_attribution))
    # the default baseline: the training climatology the model standardises with (its mean per channel)
    attr = attribute(model, sub, method, **dict(method_options or {}))
    mass = relevance_mass_accuracy(attr, cue_region_spec())
    mass_oriented = relevance_mass_accuracy(attr, cue_region_spec(), orient=True)
    rank = relevance_rank_accuracy(attr, cue_region_spec())
    mass_signal = relevance_mass_accuracy(attr, {"variable": ["tas", "psl"], **SIGNAL_REGION})
    sp = spray(attr, **{"pool": 2, "n_neighbors": 10, "max_clusters": 6, "seed": seed, **dict(spray_options or {})})
    imp = permutation_importance(model, x_val, truth, r2_skill, n_repeats=3, seed=seed, base_pred=pred_val)
    std = train[list(INPUTS)].std("sample")
    opt = optimise_input(model, clim, steps=150, lr=0.05, l2=2.0, smoothness=20.0, scale=std)
    numbers = {
        "relevance_mass_cue": float(mass.attrs["mean"]),
        "relevance_mass_cue_oriented": float(mass_oriented.attrs["mean"]),
        "relevance_rank_cue": float(rank.attrs["mean"]),
        "relevance_mass_signal": float(mass_signal.attrs["mean"]),
        "cue_region_fraction": float(mass.attrs["region_fraction"]),
        "skill": abl["skill"],
        "skill_std": _bootstrap_std(pred, truth, r2_skill, seed=seed),
        "skill_cue_ablated": abl["skill_ablated"],
        "skill_cue_shuffled": shuf["skill_ablated"],
        "skill_test": float(skill_test),
        "spray_n_clusters": int(sp.n_clusters),
        "spray_counts": [int(c) for c in sp.counts.values],
        "permutation_importance": {str(k): float(v) for k, v in zip(imp["variable"].values, imp["importance"].values)},
        "skill_name": "R2 of heat_index on the validation split (drawn like the training data)",
        "method": method,
    }
    return numbers, {"attribution": attr, "inputs": sub, "spray": sp, "importance": imp, "optimised": opt,
                     "climatology": clim, "train_std": std}


#: the methods the demo scores and ranks (faithfulness, robustness, sanity) on each model
SCORED_METHODS = ("saliency", "input_x_gradient", "integrated_gradients", "deeplift", "gradient_shap", "occlusion")


def score_methods(model: nn.Module, x: xr.Dataset, methods: Sequence[str] = SCORED_METHODS,
                  score_options: Mapping[str, Any] | None = None, seed: int = 0) -> tuple[dict, list]:
    """({method: scores}, [SanityResult]) of each method on ``x``'s first samples, with the default baselines and
    the full cascading randomisation (:mod:`climateml.attribution.faithfulness`)."""
    from climateml.attribution.adapter import first_samples
    from climateml.attribution.faithfulness import SCORE_OPTIONS, attribution_scores, randomisation_check

    opts = {**SCORE_OPTIONS, "n_samples": 8, "seed": seed, **dict(score_options or {})}
    xs = first_samples(x, int(opts["n_samples"]))
    scores, checks = {}, []
    for m in methods:
        a = attribute(model, xs, m, seed=seed)
        check = randomisation_check(model, xs, m, seed=seed, attr=a)
        res = attribution_scores(model, xs, m, attr=a, sanity=check, score_options=opts)
        scores[m] = {k: v for k, v in res.items() if k != "details"}
        scores[m]["region_perturbation_auc_random_order"] = res["details"]["region_perturbation_auc_random_order"]
        scores[m]["sanity_check"] = "passes" if check.passed else "fails"
        checks.append(check)
    return scores, checks


def run_clever_hans(out_dir: str | Path | None = None, data: Mapping[str, Mapping[str, xr.Dataset]] | None = None,
                    n_train: int = 3000, n_val: int = 400, n_test: int = 400, epochs: int = 25,
                    method: str = "integrated_gradients", n_attribution: int = 200, seed: int = 0,
                    make_figures: bool = True, scored_methods: Sequence[str] = SCORED_METHODS,
                    **data_options) -> dict[str, dict[str, Any]]:
    """Train a model on each twin and diagnose both: ``{"confounded": {...}, "clean": {...}}``.

    Args:
        out_dir: where to write ``clever_hans.json``, ``clever_hans_settings.json``, ``attribution_<twin>.nc``
            and ``figures/`` (nothing is written if None).
        data: the twins as :func:`generate_confounded` returns them (default: generated with the sizes given
            and ``data_options``).
        epochs: training epochs per model.
        method: the attribution method for relevance mass and SpRAy (with its default baseline, the training
            climatology the model standardises with).
        n_attribution: validation samples attributed.
        scored_methods: methods whose faithfulness and robustness scores and sanity check (on 8 validation
            samples) go to ``result[twin]["method_scores"]`` and, with figures, ``figures/method_scores_<twin>.png``
            and ``figures/sanity_<twin>.png``.
    """
    torch_threads = torch.get_num_threads()
    data = data or generate_confounded(n_train, n_val, n_test, seed=seed, **data_options)
    result, artefacts = {}, {}
    for twin in ("confounded", "clean"):
        t0 = time.perf_counter()
        model = train_cnn(data[twin]["train"], epochs=epochs, seed=seed)
        t1 = time.perf_counter()
        numbers, art = diagnose(model, data[twin], method, n_attribution, seed=seed)
        if scored_methods:  # the diagnosed method among them
            scored = list(dict.fromkeys([*scored_methods, method]))
            numbers["method_scores"], art["sanity"] = score_methods(model, _inputs(data[twin]["val"]), scored, seed=seed)
        numbers["train_seconds"] = t1 - t0
        numbers["diagnose_seconds"] = time.perf_counter() - t1
        result[twin], artefacts[twin] = numbers, art
    if out_dir is not None:
        _write(Path(out_dir), result, artefacts, data, make_figures,
               {"n_train": n_train, "n_val": n_val, "n_test": n_test, "epochs": epochs, "method": method,
                "n_attribution": n_attribution, "seed": seed, "torch_threads": torch_threads,
                "signal_region": SIGNAL_REGION, "cue_region": CUE_REGION, **data_options})
    return result


def _write(out: Path, result, artefacts, data, make_figures: bool, settings: dict) -> None:
    from climateml.attribution import plots
    from climateml.writers import write_cf, write_text

    write_text(json.dumps(result, indent=2), out / "clever_hans.json")
    write_text(json.dumps(settings, indent=2, default=str), out / "clever_hans_settings.json")
    for twin, art in artefacts.items():
        ds = art["attribution"].rename({v: f"attribution_{v}" for v in INPUTS})
        ds = ds.assign(**{v: art["inputs"][v] for v in INPUTS}, spray_cluster=art["spray"].labels)
        ds.attrs = {**art["attribution"].attrs, "twin": twin}
        write_cf(ds, out / f"attribution_{twin}.nc", title=f"attribution maps of the model trained on the {twin} twin")
    if not make_figures:
        return
    fig_dir = out / "figures"
    boxes = [SIGNAL_REGION, CUE_REGION]
    plots.save(plots.plot_clever_hans(result), fig_dir / "clever_hans_scores.png")
    for twin, art in artefacts.items():
        if "method_scores" in result[twin]:
            plots.save(plots.plot_method_scores(result[twin]["method_scores"],
                                               title=f"{twin} model: attribution methods ranked on 8 validation samples "
                                                     "(best at the top of each panel; red: fails the sanity check)"),
                       fig_dir / f"method_scores_{twin}.png")
            plots.save(plots.plot_sanity(art["sanity"]), fig_dir / f"sanity_{twin}.png")
        # the sample with the highest heat index among the attributed ones: relevance is mostly positive there
        y = data[twin]["val"][TARGET].values[: art["attribution"].sizes["sample"]]
        k = int(np.argmax(y))
        plots.save(plots.plot_attribution(art["attribution"], art["inputs"], sample=k,
                                          title=f"{twin} model: {art['attribution'].attrs['method']} of the predicted "
                                                f"heat index, validation sample {k} (heat index {y[k]:.2f} K); "
                                                "dashed: signal and cue regions", boxes=boxes),
                   fig_dir / f"attribution_{twin}.png")
        plots.save(plots.plot_spray(art["spray"], title=f"{twin} model: SpRAy clusters of the attribution maps",
                                    boxes=boxes),
                   fig_dir / f"spray_{twin}.png")
        plots.save(plots.plot_importance(art["importance"], title=f"{twin} model: permutation importance "
                                                                  "(R2 lost on validation data)"),
                   fig_dir / f"permutation_importance_{twin}.png")
        anomaly = art["optimised"] - art["climatology"]
        plots.save(plots.plot_maps(anomaly / art["train_std"], row="sample", col="variable",
                                   title=f"{twin} model: backwards optimisation, input maximising the heat index "
                                         "(anomaly from climatology, in training std)", colorbar_label="std",
                                   boxes=boxes),
                   fig_dir / f"optimised_input_{twin}.png")
