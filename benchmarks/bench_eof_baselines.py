"""The EOF baselines of the temperature lab at its full size: fit and predict time of the random forest and the
Gaussian process on five EOFs (climateml.models.sklearn_baselines.EOFRegressionBaseline, the config's
options), against multiple linear regression (climateml.models.LinearRegression, one least-squares fit of every
cell on the inputs; not pattern scaling) on the same data, measured in the same run.

Data: the sample data's training years of the lab (historical, ssp126, ssp370, ssp585, hist-GHG, hist-aer:
753 years x 4 inputs: CO2, CH4, SO2, BC global sums -> tas on 96 x 144 cells); prediction: ssp245's 86
years. The script checks that every prediction is the right shape and finite and prints its area-weighted
RMSE (K) beside the times, so a faster baseline that predicts worse shows. The last lines give the ratio
baseline time / linear regression time (fit, and predict), median of interleaved rounds.

    python benchmarks/bench_eof_baselines.py                 # ~1 min on 2 cores (data generated: +15 s)
    python benchmarks/bench_eof_baselines.py --data-dir DIR --repeats 5
"""

from __future__ import annotations

import argparse
import sys
import warnings

import _common
from _common import footer, header, median, sample_data, set_threads, summary, timed


def load(data_dir):
    """([x_train, y_train, x_test, y_test, area weights] as float64 numpy arrays, y as (time, cells); the config's
    options of the two baselines)."""
    from climateml.config import load_config
    from climateml.data import ClimateBenchDataModule

    config = load_config(_common.REPO_ROOT / "configs" / "temperature.yaml")
    options = config["evaluation"]["init_args"]["baseline_options"]
    dm = ClimateBenchDataModule(str(data_dir), inputs=["CO2", "CH4", "SO2", "BC"], val_fraction=0.0,
                                synthesize_if_missing=False)
    dm.setup()
    train, test = dm.tensors("train"), dm.tensors("test")
    weights = dm.area_weights.double().numpy()
    arrays = [t.double().numpy() for t in (train["x"], train["y"], test["x"], test["y"])]
    return arrays + [weights / weights.sum()], options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (each fits every method once)")
    _common.add_data_dir_argument(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    header("EOF baselines at the lab size: random forest and Gaussian process vs linear regression")
    import numpy as np
    import torch

    from climateml.models import LinearRegression
    from climateml.models.sklearn_baselines import EOFRegressionBaseline

    with sample_data(args.data_dir) as data_dir:
        (x, y, x_test, y_test, w), options = load(data_dir)
    print(f"training: {x.shape[0]} years x {x.shape[1]} inputs -> {y.shape[1]} cells; test: {x_test.shape[0]} years")

    def linear():
        return LinearRegression.fit(torch.as_tensor(x).float(), torch.as_tensor(y).float())  # float32, as the lab

    def eof(name):
        def fit():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # hyperparameters at a bound: expected on smooth sample data
                return EOFRegressionBaseline(name, **options.get(name, {})).fit(x, y, weights=w)
        return fit

    methods = {"linear regression": linear, "random_forest": eof("random_forest"),
               "gaussian_process": eof("gaussian_process")}
    fit_s = {m: [] for m in methods}
    predict_s = {m: [] for m in methods}
    rmse = {}
    failed = []
    for _ in range(args.repeats):
        for name, fit in methods.items():
            model = {}
            fit_s[name].append(timed(lambda: model.setdefault("m", fit())))
            m = model["m"]
            out = {}
            if name == "linear regression":
                predict_s[name].append(timed(lambda: out.setdefault("p", m(torch.as_tensor(x_test).float()).numpy())))
            else:
                predict_s[name].append(timed(lambda: out.setdefault("p", m.predict(x_test))))
            pred = np.asarray(out["p"], dtype=float)
            if pred.shape != y_test.shape or not np.isfinite(pred).all():
                failed.append(f"{name}: prediction of shape {pred.shape}, finite: {np.isfinite(pred).all()}")
            rmse[name] = float(np.sqrt((((pred - y_test) ** 2) @ w).mean()))

    for name in methods:
        print(f"{name}: fit {summary(fit_s[name])} s; predict {x_test.shape[0]} years {summary(predict_s[name])} s; "
              f"test RMSE {rmse[name]:.3f} K")
    base_fit, base_pred = median(fit_s["linear regression"]), median(predict_s["linear regression"])
    for name in ("random_forest", "gaussian_process"):
        ratios_fit = [a / b for a, b in zip(fit_s[name], fit_s["linear regression"])]
        ratios_pred = [a / b for a, b in zip(predict_s[name], predict_s["linear regression"])]
        print(f"RATIO {name} / linear regression: fit {median(ratios_fit):.1f}x "
              f"(medians {median(fit_s[name]):.2f} s / {base_fit:.3f} s), predict {median(ratios_pred):.1f}x "
              f"(medians {median(predict_s[name]):.3f} s / {base_pred:.4f} s)")
    footer()
    for line in failed:
        print(f"FAILED: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
