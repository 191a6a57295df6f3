"""Scores, baselines and figures of the temperature lab (ClimateBench): what the generic evaluator calls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from climateml import metrics, plotting
from climateml.contracts import TabularData, require
from climateml.errors import ConfigError, check_positive
from climateml.evaluation.base import Evaluation, cell_weights, error_scores, error_sums
from climateml.writers import synchronous
from climateml.models.baselines import LinearRegression, PatternScaling

#: baseline name in the config -> its key in metrics.json, prediction files and figures
BASELINE_KEYS = {"pattern_scaling": "pattern_scaling", "linear": "linear_baseline", "random_forest": "random_forest",
                 "gaussian_process": "gaussian_process"}
BASELINES = tuple(BASELINE_KEYS)
#: options each EOF baseline accepts under ``baseline_options`` (see climateml.models.sklearn_baselines)
EOF_BASELINE_OPTIONS = {"n_eofs", "rf_options", "gp_options", "seed"}


class TemperatureEvaluation(Evaluation):
    """ClimateBench scoring: area-weighted RMSE, MAE, bias and R² over all test years, and NRMSE over
    ``nrmse_years``; scores are averaged over the test scenarios.

    Args:
        baselines: fitted on the same training years and inputs as the model and scored by the same code,
            as in ClimateBench: "pattern_scaling" (two-step linear pattern scaling: global mean linear in
            cumulative CO2, each cell linear in the global mean, :class:`~climateml.models.PatternScaling`),
            "linear" (multiple linear regression of every cell on all the inputs; metrics key
            ``linear_baseline``), "random_forest" and "gaussian_process" (scikit-learn on the leading
            area-weighted EOFs of the target, maps restored from them; keys ``random_forest``,
            ``gaussian_process``).
        baseline_options: per EOF baseline, the options of
            :class:`~climateml.models.sklearn_baselines.EOFRegressionBaseline`: ``n_eofs``, ``seed``,
            ``rf_options`` (RandomForestRegressor arguments) or ``gp_options`` (kernel, bounds ...).
        nrmse_years: first and last year (inclusive) of ClimateBench's NRMSE (the end of the century).
        map_years: years of the predicted-vs-true maps (the nearest year present is used).
        map_range: colour range of the maps, ± this value in the target's units; 0 takes the 99th
            percentile of |truth|.
        point: a place whose series is drawn: {"name": ..., "lat": degrees north, "lon": degrees east}.
    """

    def __init__(self, baselines: list[str] = ["pattern_scaling", "linear", "random_forest", "gaussian_process"],
                 baseline_options: dict[str, dict] = {}, nrmse_years: tuple[int, int] = (2080, 2100),
                 map_years: list[int] = [2030, 2050, 2100], map_range: float = 6.0,
                 point: dict = {"name": "New York", "lat": 40.71, "lon": -74.01},
                 summary_keys: list[str] = ["rmse", "nrmse_total"],
                 comparison_keys: list[str] = ["nrmse_spatial", "nrmse_global", "nrmse_total"],
                 headline: dict[str, str] = {"nrmse_total": "lower"}, **options):
        super().__init__(summary_keys=summary_keys, comparison_keys=comparison_keys, headline=headline, **options)
        unknown = [b for b in baselines if b not in BASELINES]
        if unknown:
            raise ConfigError(f"evaluation.baselines: unknown {unknown}; choose from {list(BASELINES)}")
        self.baseline_options = self._check_baseline_options(dict(baseline_options or {}))
        if len(nrmse_years) != 2 or nrmse_years[0] > nrmse_years[1]:
            raise ConfigError(f"evaluation.nrmse_years must be [first, last] with first <= last, got {list(nrmse_years)}")
        missing = {"name", "lat", "lon"} - set(point)
        if missing:
            raise ConfigError(f"evaluation.point needs name, lat and lon; missing {sorted(missing)}")
        check_positive("evaluation.map_range", map_range, allow_zero=True)
        self.baseline_names = list(baselines)
        self.nrmse_years = tuple(nrmse_years)
        self.map_years, self.map_range, self.point = list(map_years), float(map_range), dict(point)

    @staticmethod
    def _check_baseline_options(options: dict) -> dict:
        for name, opts in options.items():
            if name not in ("random_forest", "gaussian_process"):
                raise ConfigError(f"evaluation.baseline_options: {name!r} takes no options; options are for "
                                  "random_forest and gaussian_process")
            bad = set(opts or {}) - EOF_BASELINE_OPTIONS
            if bad:
                raise ConfigError(f"evaluation.baseline_options.{name}: unknown {sorted(bad)}; "
                                  f"choose from {sorted(EOF_BASELINE_OPTIONS)}")
            if "n_eofs" in (opts or {}):
                check_positive(f"evaluation.baseline_options.{name}.n_eofs", opts["n_eofs"])
            inner = "rf_options" if name == "random_forest" else "gp_options"
            wrong = {"rf_options", "gp_options"} - {inner}
            if wrong & set(opts or {}):
                raise ConfigError(f"evaluation.baseline_options.{name}: takes {inner}, not {sorted(wrong & set(opts))[0]}")
            if (opts or {}).get(inner):
                allowed = TemperatureEvaluation._regressor_options(name)
                bad = set(opts[inner]) - allowed
                if bad:
                    raise ConfigError(f"evaluation.baseline_options.{name}.{inner}: unknown {sorted(bad)}; "
                                      f"choose from {sorted(allowed)}")
        return {k: dict(v or {}) for k, v in options.items()}

    @staticmethod
    def _regressor_options(name: str) -> set[str]:
        """The option names the scikit-learn regressor of an EOF baseline accepts."""
        if name == "random_forest":
            from sklearn.ensemble import RandomForestRegressor

            return set(RandomForestRegressor().get_params())
        from sklearn.gaussian_process import GaussianProcessRegressor

        from climateml.models.sklearn_baselines import DEFAULT_GP_OPTIONS

        return set(DEFAULT_GP_OPTIONS) | (set(GaussianProcessRegressor().get_params()) - {"kernel"})

    def fit_baseline(self, name: str, datamodule):
        """One baseline fitted on the training split: a module mapping inputs to outputs in physical units."""
        train = datamodule.tensors("train")
        if name == "linear":
            return LinearRegression.fit(train["x"], train["y"])
        if name == "pattern_scaling":
            if "CO2" not in datamodule.feature_names:
                raise ConfigError(f"evaluation.baselines: pattern_scaling needs CO2 among data.inputs, which are "
                                  f"{datamodule.feature_names}")
            return PatternScaling.fit(train["x"], train["y"], datamodule.spec.statistics["cell_weights"],
                                      len(datamodule.spec.outputs), datamodule.feature_names.index("CO2"))
        import warnings

        from climateml.models.sklearn_baselines import EOFRegressionBaseline

        spec = datamodule.spec
        n_t = len(spec.outputs)
        # area weights of each cell, each variable's block divided by its variance so no variable dominates the EOFs
        weights = spec.statistics["cell_weights"].repeat(n_t) / spec.statistics["y_std"] ** 2
        opts = dict(self.baseline_options.get(name, {}))
        # no more EOFs than the target has outputs (a 1 x 1 grid has one) or training years
        opts["n_eofs"] = min(int(opts.get("n_eofs", 5)), train["y"].shape[1], len(train["y"]))
        with warnings.catch_warnings():  # kernel hyperparameters at a bound are common and harmless on smooth PCs
            warnings.filterwarnings("ignore", module="sklearn")
            return EOFRegressionBaseline(name, **opts).fit(train["x"], train["y"], weights)

    def baselines(self, datamodule) -> dict[str, dict[str, xr.Dataset]]:
        require(datamodule, TabularData, f"evaluation {type(self).__name__}")
        x_test = datamodule.tensors(self.split)["x"]
        out = {}
        for name in self.baseline_names:
            model = self.fit_baseline(name, datamodule)
            out[BASELINE_KEYS[name]] = datamodule.to_xarray(model(x_test), self.split)
        return out

    def score_variable(self, pred: xr.DataArray, truth: xr.DataArray, variable: str) -> dict[str, float]:
        """Area-weighted RMSE, MAE, bias, R² over every test year and cell; ClimateBench NRMSE over nrmse_years."""
        out = {"rmse": float(metrics.rmse(pred, truth)), "mae": float(metrics.mae(pred, truth)),
               "bias": float(metrics.bias(pred, truth)), "r2": float(metrics.r2(pred, truth))}
        years = truth["time"].values
        late = years[(years >= self.nrmse_years[0]) & (years <= self.nrmse_years[1])]
        if len(late):
            out.update(metrics.nrmse(pred.sel(time=late), truth.sel(time=late)))
        return out

    # ---- batch by batch ----
    def batch_baselines(self, datamodule, batch, indices) -> dict[str, dict[str, xr.Dataset]]:
        """Each baseline (fitted once per run on the training split) applied to the batch's inputs."""
        fitted = self.run_state.setdefault("fitted", {})
        out = {}
        for name in self.baseline_names:
            if name not in fitted:
                fitted[name] = self.fit_baseline(name, datamodule)
            out[BASELINE_KEYS[name]] = datamodule.batch_to_xarray(fitted[name](batch["x"]), self.split, indices, batch)
        return out

    def statistics(self, pred: xr.DataArray, truth: xr.DataArray, variable: str) -> dict[str, np.ndarray]:
        """Sums over the years given, where both fields are finite, with w the area weight of each cell (cos lat):
        of w, w e, w |e|, w e^2 (e = pred - truth); per cell the count of years and the sums of w, the truth and
        its square (R²: each cell's climatology over the whole test period); over the ``nrmse_years`` per cell
        the sums of pred and truth, and per year the area-weighted global means of both (``global_mean_<year>``)."""
        pred, truth = pred.astype(np.float64), truth.astype(np.float64)
        valid = pred.notnull() & truth.notnull()
        w = cell_weights(truth).where(valid, 0.0)
        t = truth.where(valid, 0.0)
        out = {**error_sums(pred, truth), "cell_count": valid.sum("time").values,
               "cell_weight": w.sum("time").values, "truth_sum": t.sum("time").values,
               "truth_squared": (t ** 2).sum("time").values}
        years = truth["time"].values
        late = (years >= self.nrmse_years[0]) & (years <= self.nrmse_years[1])
        out["late_pred_sum"] = pred.where(valid, 0.0).isel(time=late).sum("time").values
        out["late_truth_sum"] = t.isel(time=late).sum("time").values
        out["late_count"] = valid.isel(time=late).sum("time").values
        gp, gt = metrics.global_mean(pred.where(valid)), metrics.global_mean(truth.where(valid))
        for i in np.nonzero(late)[0]:
            out[f"global_mean_{int(years[i])}"] = np.array([float(gp[i]), float(gt[i])])
        return out

    def member_statistics(self, members: xr.DataArray, truth: xr.DataArray, variable: str) -> dict[str, np.ndarray]:
        """Per member, the sum of w e^2 (its RMSE); the sum over years of the global mean of the members' spread
        (standard deviation across members) and the number of years."""
        e2 = ((members.astype(np.float64) - truth) ** 2)
        w = cell_weights(truth).where(truth.notnull(), 0.0)
        return {"member_squared_error": (w * e2.fillna(0.0)).sum([d for d in e2.dims if d != "member"]).values,
                "spread_sum": float(metrics.global_mean(members.std("member")).sum()),
                "spread_years": float(truth.sizes["time"])}

    def scores_from_statistics(self, statistics, variable: str) -> dict[str, float]:
        """Area-weighted RMSE, MAE, bias and R² over every test year and cell, ClimateBench NRMSE over the
        ``nrmse_years`` present, from the statistics summed over the whole test set (see :meth:`statistics`);
        with members: ``ensemble_spread``, ``member_rmse_mean``, ``member_rmse_std``."""
        s = statistics
        weight = float(s["weight"])
        with np.errstate(invalid="ignore", divide="ignore"):
            n = np.where(s["cell_count"] > 0, s["cell_count"], np.nan)
            cell_w = s["cell_weight"] / n
            ss_tot = float(np.nansum(cell_w * (s["truth_squared"] - s["truth_sum"] ** 2 / n)))
            out = {**error_scores(s), "r2": float(1.0 - s["squared_error"] / ss_tot) if ss_tot > 0 else float("nan")}
            years = sorted(k for k in s if k.startswith("global_mean_"))
            if years:
                gm = np.stack([s[k] for k in years])
                norm = abs(float(gm[:, 1].mean()))
                late = np.where(s["late_count"] > 0, s["late_count"], np.nan)
                diff = s["late_pred_sum"] / late - s["late_truth_sum"] / late
                keep = np.isfinite(diff) & np.isfinite(cell_w)
                spatial = float(np.sqrt(np.sum(cell_w[keep] * diff[keep] ** 2) / np.sum(cell_w[keep]))) / norm
                glob = float(np.sqrt(np.mean((gm[:, 0] - gm[:, 1]) ** 2))) / norm
                out.update(nrmse_spatial=spatial, nrmse_global=glob, nrmse_total=spatial + 5.0 * glob)
            if "member_squared_error" in s:
                member_rmse = np.sqrt(s["member_squared_error"] / weight)
                out.update(ensemble_spread=float(s["spread_sum"] / s["spread_years"]),
                           member_rmse_mean=float(np.mean(member_rmse)), member_rmse_std=float(np.std(member_rmse)))
        return out

    def streamed_figures(self, fig_dir: Path, group: str, predictions: xr.Dataset, sums, scores) -> None:
        """The figures of :meth:`figures`, on the written predictions of the scenario read back lazily (the maps
        read only their years; the series one variable at a time)."""
        names = [str(n) for n in predictions["model"].values]
        truth = self.datamodule.truth(self.split)[group]
        preds = {n: predictions.sel(model=n)[list(truth.data_vars)] for n in names}
        if all(f"{v}_members" in predictions for v in truth.data_vars):
            members = xr.Dataset({v: predictions[f"{v}_members"] for v in truth.data_vars})
        else:
            members = preds["model"].expand_dims(member=[0])
        with synchronous():
            self.figures(fig_dir, group, truth, preds, members, scores)

    def member_scores(self, members: xr.Dataset, truth: xr.Dataset) -> dict[str, dict[str, float]]:
        """Ensemble spread (area-weighted mean std across members) and the members' own RMSE, mean and std."""
        if members.sizes["member"] < 2:
            return {}
        out = {}
        for v in truth.data_vars:
            member_rmse = [float(metrics.rmse(members[v].isel(member=i), truth[v])) for i in range(members.sizes["member"])]
            out[v] = {"ensemble_spread": float(metrics.global_mean(members[v].std("member")).mean()),
                      "member_rmse_mean": float(np.mean(member_rmse)), "member_rmse_std": float(np.std(member_rmse))}
        return out

    def loss_label(self, models) -> str:
        """The emulator's loss (:class:`~climateml.models.TemperatureEmulator`): MSE on the standardised targets."""
        spec = getattr(models[0], "spec", None) if models else None
        targets = ", ".join(spec.outputs) if spec is not None else "targets"
        return f"MSE on standardised {targets}"

    def figures(self, fig_dir: Path, group: str, truth: xr.Dataset, predictions: dict[str, xr.Dataset],
                members: xr.Dataset, scores: dict[str, dict[str, dict]]) -> None:
        for v in truth.data_vars:
            units = truth[v].attrs.get("units", "")
            vmax = self.map_range or float(np.nanpercentile(np.abs(truth[v].values), 99)) or 1.0
            tag = f"{v}_{group}"
            # the model beside the field's linear baseline, pattern scaling, when it is scored
            shown = {n: predictions[n][v] for n in ("model", "pattern_scaling") if n in predictions}
            plotting.save(plotting.plot_maps(truth[v], shown, years=self.map_years, vmax=vmax, units=units),
                          fig_dir / f"maps_{tag}.png")
            if members.sizes["member"] > 1:
                plotting.save(plotting.plot_ensemble_spread(members[v], years=self.map_years, units=units),
                              fig_dir / f"ensemble_spread_{tag}.png")
            series = {"model": members[v], **{b: p[v] for b, p in predictions.items() if b != "model"}}
            plotting.save(plotting.plot_global_mean(truth[v], series, units=units), fig_dir / f"global_mean_{tag}.png")
            if truth.sizes["lat"] * truth.sizes["lon"] > 1:
                place = self.point["name"]
                plotting.save(plotting.plot_point_series(truth[v], series, lat=self.point["lat"], lon=self.point["lon"],
                                                         place=place, units=units),
                              fig_dir / f"point_{place.lower().replace(' ', '_')}_{tag}.png")
