"""Scoring trained emulators on the test scenarios: metrics.json and the lab's figures, in a run directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import xarray as xr
from torch import nn

from climateml import metrics, plotting
from climateml.data.io import write_dataset
from climateml.models.baselines import LinearRegression

NRMSE_YEARS = (2080, 2100)  # ClimateBench scores the end of the century


def score(pred: xr.DataArray, truth: xr.DataArray) -> dict[str, float]:
    """RMSE, MAE, bias and R² (area-weighted, all years) and ClimateBench NRMSE over 2080-2100 when present."""
    out = {"rmse": metrics.rmse(pred, truth), "mae": metrics.mae(pred, truth), "bias": metrics.bias(pred, truth),
           "r2": metrics.r2(pred, truth)}
    late = truth["time"].values
    late = late[(late >= NRMSE_YEARS[0]) & (late <= NRMSE_YEARS[1])]
    if len(late):
        out.update(metrics.nrmse(pred.sel(time=late), truth.sel(time=late)))
    return out


def _mean_scores(per_scenario: list[dict[str, float]]) -> dict[str, float]:
    keys = [k for k in per_scenario[0] if all(k in d for d in per_scenario)]
    return {k: float(np.mean([d[k] for d in per_scenario])) for k in keys}


def evaluate(models: Sequence[nn.Module], datamodule, run_dir: str | Path,
             histories: Mapping[str, str | Path] | None = None) -> dict:
    """Score ``models`` (an ensemble of one or more) and a linear baseline on the data module's test scenarios.

    Writes ``metrics.json`` shaped ``{target: {"model": {...}, "linear_baseline": {...}}}`` (scores
    averaged over the test scenarios; the model's are those of the ensemble mean, with its spread),
    ``test_predictions_<scenario>.nc`` and figures under ``figures/``. Returns the metrics.
    """
    run_dir = Path(run_dir)
    datamodule.setup("test")
    baseline = LinearRegression.fit(*datamodule.train_tensors())
    scores: dict[str, dict[str, list]] = {t: {"model": [], "linear_baseline": []} for t in datamodule.targets}
    for scenario in datamodule.test_scenarios:
        truth = datamodule.target_dataset(scenario)
        ensemble = xr.concat([datamodule.predict_xarray(m, scenario) for m in models], dim="ensemble")
        base = datamodule.predict_xarray(baseline, scenario)
        for target in datamodule.targets:
            model_scores = score(ensemble[target].mean("ensemble"), truth[target])
            model_scores["ensemble_size"] = len(models)
            if len(models) > 1:
                model_scores["ensemble_spread"] = float(metrics.global_mean(ensemble[target].std("ensemble")).mean())
                member_rmse = [metrics.rmse(ensemble[target].isel(ensemble=i), truth[target]) for i in range(len(models))]
                model_scores["member_rmse_mean"] = float(np.mean(member_rmse))
                model_scores["member_rmse_std"] = float(np.std(member_rmse))
            scores[target]["model"].append(model_scores)
            scores[target]["linear_baseline"].append(score(base[target], truth[target]))
            _figures(run_dir / "figures", scenario, target, truth[target], ensemble[target], base[target])
        out = ensemble.assign_coords(ensemble=np.arange(len(models)))
        out = out.rename({v: f"{v}_emulator" for v in datamodule.targets})
        out = out.merge(base.rename({v: f"{v}_linear_baseline" for v in datamodule.targets}))
        out.attrs.update(scenario=scenario, source="climateml evaluate", Conventions="CF-1.8")
        write_dataset(out, run_dir / f"test_predictions_{scenario}.nc")
    result = {t: {name: _mean_scores(v) for name, v in by.items()} for t, by in scores.items()}
    for by_model in result.values():
        by_model["model"]["ensemble_size"] = len(models)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    plotting.save(plotting.plot_metric_comparison(result), run_dir / "figures" / "metrics.png")
    if histories:
        existing = {k: v for k, v in histories.items() if Path(v).exists()}
        if existing:
            plotting.save(plotting.plot_learning_curves(existing), run_dir / "figures" / "learning_curves.png")
    return result


def _figures(fig_dir: Path, scenario: str, target: str, truth: xr.DataArray, ensemble: xr.DataArray,
             baseline: xr.DataArray) -> None:
    units = truth.attrs.get("units", "")
    vmax = 6.0 if units == "K" else float(np.nanpercentile(np.abs(truth.values), 99)) or 1.0
    tag = f"{target}_{scenario}"
    mean = ensemble.mean("ensemble")
    plotting.save(plotting.plot_maps(truth, {"emulator": mean}, vmax=vmax, units=units), fig_dir / f"maps_{tag}.png")
    if ensemble.sizes["ensemble"] > 1:
        plotting.save(plotting.plot_ensemble_spread(ensemble, units=units), fig_dir / f"ensemble_spread_{tag}.png")
    preds = {"emulator": ensemble, "linear baseline": baseline}
    plotting.save(plotting.plot_global_mean(truth, preds, units=units), fig_dir / f"global_mean_{tag}.png")
    if truth.sizes["lat"] * truth.sizes["lon"] > 1:
        plotting.save(plotting.plot_point_series(truth, preds, units=units), fig_dir / f"point_new_york_{tag}.png")
