"""What the ``climateml`` command runs for attribution; ``climateml.cli`` parses the task config and calls these.

- ``climateml attribute --config <task>.yaml --ckpt_path ... --method ... [--target ...]``:
  :func:`attribute_task` on a model and DataModule the CLI built from the config (:func:`attribute_main`
  takes a ``build(config, overrides) -> (model, datamodule)`` callable, so this package never imports the CLI);
- ``climateml synth confounded --out DIR``: :func:`synth_confounded_main`;
- ``climateml demo clever-hans --out DIR``: :func:`demo_clever_hans_main`.

What is used of the DataModule (members every :class:`~climateml.data.base.ClimateDataModule` declares):
``setup``, ``inputs_xarray(split)`` (the split's inputs as xarray with their coordinates, sample dim first),
``layout`` (a :class:`~climateml.data.adapter.FieldLayout` of the outputs: the output maps' grid), ``spec`` (the
output names) and ``load_state_dict`` (the statistics saved in the checkpoint).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import xarray as xr

from climateml.attribution.adapter import first_samples, stacked
from climateml.attribution.core import attribute
from climateml.attribution.methods import METHOD_OPTIONS, METHODS
from climateml.attribution.targets import OutputIndex, RegionMean, as_target
from climateml.errors import ConfigError
from climateml.grid import spatial_dims


# ---------------------------------------------------------------------------------------------------
# inputs and output grid of a task's DataModule
# ---------------------------------------------------------------------------------------------------

def inputs_from_datamodule(datamodule, split: str, n_samples: int | None = None) -> xr.DataArray | xr.Dataset:
    """The first ``n_samples`` (None: all) inputs of ``split``: ``datamodule.inputs_xarray(split)``."""
    x = datamodule.inputs_xarray(split)
    return x if n_samples is None else first_samples(x, n_samples)


def output_grid(datamodule) -> tuple[xr.Dataset | None, list[str] | None]:
    """(grid, names) of the model's outputs: the coordinates of the DataModule's ``layout`` (None when the outputs
    have none) and the output names of its ``spec`` (in tensor order)."""
    coords = datamodule.layout.coords
    return (xr.Dataset(coords=dict(coords)) if coords else None), list(datamodule.spec.outputs) or None


def _resolve_target(target: Any, grid, names) -> Any:
    """The target with the task's output grid and output names filled in where it did not give them."""
    t = as_target(target)
    if isinstance(t, RegionMean):
        t.grid = t.grid if t.grid is not None else grid
        t.names = t.names if t.names is not None else names
    elif isinstance(t, OutputIndex) and t.names is None:
        t.names = names
    return t


def channel_shares(attr: xr.DataArray | xr.Dataset) -> dict[str, float] | None:
    """Share of the total |attribution| held by each input channel (axis 1: variables, channels, features),
    over every sample and cell; None for an input without a named channel axis."""
    flat = stacked(attr)
    if flat.ndim < 3 or flat.dims[1] not in flat.coords:
        return None
    a = np.abs(np.asarray(flat.values, dtype=np.float64))
    per = a.sum(axis=tuple(i for i in range(a.ndim) if i != 1))
    total = per.sum()
    return {str(c): float(v / total) if total > 0 else float("nan") for c, v in zip(flat[flat.dims[1]].values, per)}


def _rank_figure(out_dir: Path, split: str) -> Path | None:
    """``figures/scores_<split>.png``: every method whose ``scores_<method>_<split>.json`` lies in ``out_dir``,
    ranked (run ``climateml attribute`` once per method into one folder to compare them)."""
    import json

    from climateml.attribution import plots

    found = {}
    for p in sorted(out_dir.glob(f"scores_*_{split}.json")):
        method = p.name[len("scores_"):-len(f"_{split}.json")]
        if method in METHODS:
            found[method] = json.loads(p.read_text())
    if not found:
        return None
    return plots.save(plots.plot_method_scores(found, title=f"Attribution methods ranked on the {split} split of "
                                               f"one run ({len(found)} method(s); best at the top of each panel)"),
                      out_dir / "figures" / f"scores_{split}.png")


def _scores(model, x, a, method: str, target, baseline, split: str, out_dir: Path, sanity: bool,
            score_options: Mapping[str, Any] | None, options: Mapping[str, Any]) -> dict:
    """Scores (and with ``sanity`` the full randomisation cascade and its figure) of the maps ``a`` of ``x``,
    written to ``scores_<method>_<split>.json``."""
    import json

    from climateml.attribution import faithfulness, plots
    from climateml.writers import write_text

    opts = {**faithfulness.SCORE_OPTIONS, **dict(score_options or {})}
    n_scored = int(opts["n_samples"])
    with warnings.catch_warnings():
        # the maps gave the baseline's warning once; the scores' own attribution runs would repeat it
        warnings.filterwarnings("ignore", message="baseline 'zeros'")
        check = None
        if sanity:
            check = faithfulness.randomisation_check(
                model, first_samples(x, n_scored), method, target=target, baseline=baseline,
                cascade_steps=int(opts["randomisation_steps"]), seed=int(opts["seed"]),
                attr=first_samples(a, n_scored), **options)
            plots.save(plots.plot_sanity(check), out_dir / "figures" / f"sanity_{method}_{split}.png")
        result = faithfulness.attribution_scores(model, x, method, target=target, baseline=baseline, attr=a,
                                                 sanity=check, score_options=opts, **options)
    result["details"]["abs_share_per_channel"] = channel_shares(a)
    write_text(json.dumps(result, indent=2, default=float), out_dir / f"scores_{method}_{split}.json")
    return result


def attribute_task(model: torch.nn.Module, datamodule, method: str, target: Any = None, split: str = "test",
                   n_samples: int | None = 16, out_dir: str | Path = "attribution", baseline: Any = None,
                   n_figures: int = 3, sanity: bool = False, scores: bool = True,
                   score_options: Mapping[str, Any] | None = None, **options) -> Path:
    """Attribution maps of a task's model on ``n_samples`` samples of ``split``: NetCDF, scores and figures.

    Writes ``<out_dir>/attribution_<method>_<split>.nc`` (the maps and the inputs, CF, atomic; its ``baseline``
    attribute says which baseline was used) and ``<out_dir>/figures/attribution_<method>_<split>_<k>.png`` for
    the first ``n_figures`` samples (and, for feature inputs such as the temperature lab's (sample, feature)
    emissions, ``..._features.png`` with every sample: mean |attribution| per feature and each feature's
    attribution per year); returns the NetCDF path.

    The default ``baseline`` is the training climatology: the DataModule's training mean per channel, which
    the model carries from the checkpoint (zero in its standardised space; see
    :func:`climateml.attribution.baselines.training_climatology`).

    With ``scores`` (default), ``<out_dir>/scores_<method>_<split>.json`` holds the faithfulness and robustness
    scores of :func:`climateml.attribution.faithfulness.attribution_scores` (on the first
    ``score_options["n_samples"]`` samples) and ``figures/scores_<split>.png`` ranks every method scored in
    ``out_dir``. With ``sanity``, the full cascading randomisation runs (``figures/sanity_<method>_<split>.png``);
    a method that fails it is flagged in the NetCDF's attributes and the figures' titles.
    ``target`` may be a config mapping (``{kind: region_mean, index: tas, lat: [30, 60]}``); region targets
    get the DataModule's output grid and names unless they give their own.
    """
    from climateml.attribution import faithfulness, plots
    from climateml.writers import write_cf

    datamodule.setup("test")
    x = inputs_from_datamodule(datamodule, split, n_samples)
    grid, names = output_grid(datamodule)
    t = _resolve_target(target, grid, names)
    a = attribute(model, x, method, target=t, baseline=baseline, **options)
    out_dir = Path(out_dir)
    flag = ""
    result = None
    if scores or sanity:
        result = _scores(model, x, a, method, t, baseline, split, out_dir, sanity, score_options, options)
        if not result["details"]["sanity"]["passed"]:  # the check's own verdict (a NaN rho fails)
            flag = " [FAILS the randomisation sanity check]"
    attrs = {**a.attrs, "split": split}
    if result is not None:
        attrs.update({k: result[k] for k in faithfulness.SCORE_DIRECTION},
                     sanity_check="fails" if flag else "passes")
    if isinstance(a, xr.DataArray):
        ds = a.to_dataset()
        ds["input"] = x
    else:
        ds = a.rename({v: f"attribution_{v}" for v in a.data_vars}).merge(x)
    ds.attrs = attrs
    path = write_cf(ds, out_dir / f"attribution_{method}_{split}.nc",
                    title=f"{method} attribution of {type(model).__name__} on {split} samples")
    flat = stacked(a)  # (sample, [variable], ...)
    for k in range(min(n_figures, flat.shape[0])):
        title = None
        if flag:
            title = f"{method}{flag}, sample {k}: {a.attrs.get('target', '')}"
        plots.save(plots.plot_attribution(a, x, sample=k, title=title),
                   out_dir / "figures" / f"attribution_{method}_{split}_{k}.png")
    if n_figures > 0 and flat.ndim == 2 and spatial_dims(flat, required=False) is None:  # feature inputs: all samples at once
        plots.save(plots.plot_feature_attribution(a),
                   out_dir / "figures" / f"attribution_{method}_{split}_features.png")
    if result is not None and n_figures > 0:
        _rank_figure(out_dir, split)
    return path


def attribute_parser(prog: str = "climateml attribute") -> argparse.ArgumentParser:
    """The options of ``climateml attribute`` (any other ``--section.key value`` overrides the config)."""
    p = argparse.ArgumentParser(prog=prog, description="Attribution maps of a trained task model on its data: "
                                "NetCDF on the data's coordinates and figures.")
    p.add_argument("--config", required=True, help="the task's YAML (as for climateml fit)")
    p.add_argument("--ckpt_path", default=None, help="checkpoint with the trained weights (and data statistics)")
    p.add_argument("--method", default="integrated_gradients", choices=list(METHODS))
    p.add_argument("--target", default=None,
                   help="what to explain: an output index, or a YAML mapping such as "
                        "'{kind: region_mean, index: tas, lat: [30, 60], lon: [-10, 40]}' (kinds: index, region_mean, "
                        "global_mean, class_score, nowcast_rain)")
    p.add_argument("--baseline", default=None,
                   help="climatology (the default: the training climatology, the DataModule's training mean per "
                        "channel, zero in the model's standardised space) | sample_mean | zeros | a number")
    p.add_argument("--split", default="test")
    p.add_argument("--n_samples", type=int, default=16)
    p.add_argument("--out", default=None, help="output folder (default: attribution/ beside the checkpoint, or ./attribution)")
    p.add_argument("--options", default="{}", help="method options as a YAML mapping, e.g. '{n_steps: 64}'")
    p.add_argument("--n_figures", type=int, default=3)
    p.add_argument("--sanity", action="store_true",
                   help="run the cascading model-parameter randomisation check (Adebayo et al. 2018) and flag a method "
                        "whose maps barely change")
    p.add_argument("--no_scores", action="store_true", help="skip the faithfulness / robustness scores")
    p.add_argument("--score_options", default="{}",
                   help="score settings as a YAML mapping, e.g. '{n_samples: 4, n_draws: 16}' (see "
                        "climateml.attribution.faithfulness.SCORE_OPTIONS)")
    return p


def _yaml(text: str | None) -> Any:
    import yaml

    return None if text is None else yaml.safe_load(text)


def load_checkpoint(model: torch.nn.Module, datamodule, path: str | Path) -> None:
    """Load a Lightning checkpoint's weights into ``model`` and its saved DataModule state (statistics) into
    ``datamodule``, on the CPU."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(ckpt["state_dict"])
    state = ckpt.get(type(datamodule).__qualname__)
    if state is not None:
        datamodule.load_state_dict(state)


def attribute_main(argv: Sequence[str], build: Callable[[str, list[str]], tuple[torch.nn.Module, Any]]) -> int:
    """``climateml attribute``: ``build(config, overrides)`` returns the config's (model, datamodule)."""
    args, overrides = attribute_parser().parse_known_args(list(argv))
    model, datamodule = build(args.config, overrides)
    if args.ckpt_path:
        load_checkpoint(model, datamodule, args.ckpt_path)
    baseline = args.baseline
    if baseline is not None and baseline not in ("zeros", "climatology", "sample_mean"):
        try:
            baseline = float(baseline)
        except ValueError:
            raise ConfigError(f"--baseline must be climatology, sample_mean, zeros or a number, got {baseline!r}") from None
    options = _yaml(args.options) or {}
    if not isinstance(options, dict):
        raise ConfigError(f"--options must be a YAML mapping, got {args.options!r}")
    score_options = _yaml(args.score_options) or {}
    if not isinstance(score_options, dict):
        raise ConfigError(f"--score_options must be a YAML mapping, got {args.score_options!r}")
    out = args.out or (Path(args.ckpt_path).parent.parent / "attribution" if args.ckpt_path else "attribution")
    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        shown = warnings.showwarning
        warnings.showwarning = _one_line_warning
        try:
            path = attribute_task(model, datamodule, args.method, _yaml(args.target), args.split, args.n_samples, out,
                                  baseline, args.n_figures, sanity=args.sanity, scores=not args.no_scores,
                                  score_options=score_options, **options)
        finally:
            warnings.showwarning = shown
    print(f"wrote {path} and figures in {Path(path).parent / 'figures'}")
    with xr.open_dataset(path) as ds:
        print(f"baseline: {ds.attrs.get('baseline', 'none (the method takes none)')}")
    _print_scores(Path(path).parent / f"scores_{args.method}_{args.split}.json")
    return 0


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def _print_scores(path: Path) -> None:
    """The scores, the channel shares and the sanity verdict of ``climateml attribute``, a few lines."""
    import json

    from climateml.attribution.faithfulness import SANITY_THRESHOLD, SCORE_DIRECTION

    if not path.exists():
        return
    res = json.loads(path.read_text())
    print(f"scores ({res['details']['n_samples']} samples; {path}): "
          + ", ".join(f"{k} {res[k]:.3f}" for k in SCORE_DIRECTION))
    shares = res["details"].get("abs_share_per_channel")
    if shares:
        print("share of |attribution| per channel: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in shares.items()))
    rho = res["randomisation_spearman"]
    if not res["details"]["sanity"]["passed"]:
        print(f"SANITY CHECK FAILED: {res['details']['method']}'s maps barely change when the model's weights are "
              f"randomised (Spearman rho {rho:+.2f}, |rho| > {SANITY_THRESHOLD:g}): they explain the input, not the model")
    else:
        print(f"sanity check passed: Spearman rho {rho:+.2f} between the maps of the trained and of the randomised "
              f"model (|rho| <= {SANITY_THRESHOLD:g})")


# ---------------------------------------------------------------------------------------------------
# the confounded data set and the Clever-Hans demonstration
# ---------------------------------------------------------------------------------------------------

def synth_confounded_main(argv: Sequence[str]) -> int:
    """``climateml synth confounded --out DIR``: the confounded data set and its clean twin as NetCDF."""
    from climateml.attribution.confounded import write_confounded

    p = argparse.ArgumentParser(prog="climateml synth confounded",
                                description="Write a data set with a Clever-Hans cue (station density tracking the "
                                            "label in train/val only) and its clean twin: DIR/<twin>/<split>.nc.")
    p.add_argument("--out", required=True)
    p.add_argument("--n-train", type=int, default=3000)
    p.add_argument("--n-val", type=int, default=400)
    p.add_argument("--n-test", type=int, default=400)
    p.add_argument("--nlat", type=int, default=16)
    p.add_argument("--nlon", type=int, default=24)
    p.add_argument("--label-noise", type=float, default=0.6)
    p.add_argument("--cue-strength", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(list(argv))
    paths = write_confounded(a.out, n_train=a.n_train, n_val=a.n_val, n_test=a.n_test, nlat=a.nlat, nlon=a.nlon,
                             label_noise=a.label_noise, cue_strength=a.cue_strength, seed=a.seed)
    print(f"wrote {len(paths)} files to {a.out}")
    return 0


def demo_clever_hans_main(argv: Sequence[str]) -> int:
    """``climateml demo clever-hans --out DIR``: train on both twins, diagnose, write clever_hans.json and figures."""
    from climateml.attribution.confounded import SCORED_METHODS, read_confounded, run_clever_hans

    p = argparse.ArgumentParser(prog="climateml demo clever-hans",
                                description="Train a small CNN on a confounded data set and on its clean twin, and "
                                            "tell them apart with attribution diagnostics: DIR/clever_hans.json, "
                                            "attribution NetCDF and figures.")
    p.add_argument("--out", required=True)
    p.add_argument("--data", default=None, help="read the twins written by `climateml synth confounded` from here "
                                                "(default: generate them)")
    p.add_argument("--n-train", type=int, default=3000)
    p.add_argument("--n-val", type=int, default=400)
    p.add_argument("--n-test", type=int, default=400)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--method", default="integrated_gradients", choices=[m for m in METHODS if m in METHOD_OPTIONS])
    p.add_argument("--n-attribution", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--score-methods", default=",".join(SCORED_METHODS),
                   help="comma-separated methods whose faithfulness / robustness scores and sanity check are computed "
                        "and ranked ('' for none; the diagnosed --method is always scored when any is)")
    a = p.parse_args(list(argv))
    if a.threads:
        torch.set_num_threads(a.threads)
    data = read_confounded(a.data) if a.data else None
    res = run_clever_hans(a.out, data=data, n_train=a.n_train, n_val=a.n_val, n_test=a.n_test, epochs=a.epochs,
                          method=a.method, n_attribution=a.n_attribution, seed=a.seed, make_figures=not a.no_figures,
                          scored_methods=[m for m in a.score_methods.split(",") if m.strip()])
    for twin, r in res.items():
        print(f"{twin:>10}: relevance_mass_cue {r['relevance_mass_cue']:.3f}, skill {r['skill']:.3f} "
              f"(cue ablated {r['skill_cue_ablated']:.3f}, test {r['skill_test']:.3f}), "
              f"spray_n_clusters {r['spray_n_clusters']}")
    for twin, r in res.items():
        if "method_scores" in r:
            print(f"{twin:>10}: scores of {a.method}: " + ", ".join(
                f"{key} {value:.2f}" for key, value in r["method_scores"][a.method].items() if isinstance(value, float))
                  + f" (sanity check: {r['method_scores'][a.method]['sanity_check']})")
    c, k = res["confounded"], res["clean"]
    ratio = c["relevance_mass_cue"] / max(k["relevance_mass_cue"], 1e-12)
    print(f"relevance on the cue: confounded / clean = {ratio:.1f}x; wrote {Path(a.out) / 'clever_hans.json'}")
    return 0


if __name__ == "__main__":  # python -m climateml.attribution.commands demo|synth ...
    cmds = {"demo": demo_clever_hans_main, "synth": synth_confounded_main}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        print("usage: python -m climateml.attribution.commands {demo,synth} --out DIR [options]", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(cmds[sys.argv[1]](sys.argv[2:]))
