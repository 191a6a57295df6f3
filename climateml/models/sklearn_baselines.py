"""ClimateBench's non-neural baselines: a random forest or a Gaussian process on the target's leading EOFs.

Watson-Parris et al. (2022, ClimateBench, doi:10.1029/2021MS002954) compare their emulators with linear
pattern scaling, a random forest and a Gaussian process, all fed global CO2 and CH4 plus the leading
EOFs of the SO2 and BC emission maps. Their reference notebooks fit the random forest on every grid cell
(multi-output; for ``tas``: 200 trees, max_depth 30, min_samples_split 10, min_samples_leaf 4,
bootstrap) and the Gaussian process on every grid cell with one shared kernel (a sum of Matern-3/2
kernels per input group, ARD length scales for the EOF groups, a constant mean and Gaussian noise)
on standardised CO2/CH4 and a standardised target.

Here the target is reduced to its leading area-weighted EOFs before fitting, which makes both models
fit in seconds on 753 years x 13,824 cells, and restored afterwards. The regressors run on the
principal components (PCs); the inputs are standardised with training means and standard deviations.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

import numpy as np
import torch
from torch import nn

#: Random-forest settings of ClimateBench's tas notebook (max_features=1.0 is the old 'auto' for regression).
DEFAULT_RF_OPTIONS: dict[str, Any] = {
    "n_estimators": 200, "max_depth": 30, "min_samples_split": 10, "min_samples_leaf": 4,
    "max_features": 1.0, "bootstrap": True, "n_jobs": 1,
}
#: Gaussian-process settings. ``kernel``: "matern32", "matern52" or "rbf", each with one length scale
#: per (standardised) input (ARD), times a constant amplitude, plus white noise. ``shared_kernel``: one
#: GP with one set of hyperparameters for all PCs (as ClimateBench's one GP for all cells), the PCs
#: scaled by one common standard deviation (per-PC scaling would give noise-dominated trailing PCs the
#: weight of the leading pattern in the shared likelihood); False (default): one GP per PC with
#: ``normalize_y``, more accurate and as fast for a handful of EOFs. Amplitude and noise are in units
#: of the (normalised) PC variance; length scales in units of the inputs' standard deviations.
#: ``max_optimizer_samples``: the hyperparameters are optimised on a random subset of at most this many
#: samples (the cost grows with its cube), then the GP is conditioned on all samples with them fixed.
DEFAULT_GP_OPTIONS: dict[str, Any] = {
    "kernel": "matern32", "shared_kernel": False, "length_scale": 1.0, "length_scale_bounds": (1e-2, 1e3),
    "amplitude": 1.0, "amplitude_bounds": (1e-4, 1e4), "noise_level": 1e-2, "noise_level_bounds": (1e-10, 1e1),
    "n_restarts_optimizer": 0, "max_optimizer_samples": 250,
}


def _as_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=float)


class TargetEOFs:
    """Area-weighted EOF reduction of flattened maps: y (samples, n_outputs) <-> PCs (samples, n_eofs).

    With per-output ``weights`` w (e.g. cos(lat) of each cell, repeated for each variable), the EOFs are
    the right singular vectors of (y - mean) * sqrt(w), so they maximise the weighted (area-integrated)
    variance; the PCs are the projections of (y - mean) * sqrt(w) on them. Maps are restored with each
    EOF's regression pattern in physical units, y = mean + PCs @ patterns, which needs no division by
    sqrt(w) (cells with weight 0, such as ClimateBench's rows at exactly +-90 degrees, are restored too)
    and reproduces the training y exactly when n_eofs equals its rank.
    """

    def __init__(self, n_eofs: int):
        if int(n_eofs) < 1:
            raise ValueError(f"n_eofs must be >= 1, got {n_eofs}")
        self.n_eofs = int(n_eofs)

    def fit(self, y: np.ndarray, weights: np.ndarray | None = None) -> "TargetEOFs":
        n_samples, n_outputs = y.shape
        w = np.ones(n_outputs) if weights is None else _as_numpy(weights).ravel()
        if w.shape != (n_outputs,) or np.any(w < 0) or not np.any(w > 0):
            raise ValueError(f"weights must be {n_outputs} non-negative numbers (one per output), not all 0; got shape {w.shape}")
        if self.n_eofs > min(n_samples, n_outputs):
            raise ValueError(f"n_eofs={self.n_eofs} exceeds min(samples, outputs) = {min(n_samples, n_outputs)}")
        self.mean_ = y.mean(axis=0)
        self.sqrt_w_ = np.sqrt(w)
        anom = y - self.mean_
        a = anom * self.sqrt_w_
        k = self.n_eofs
        if n_samples < n_outputs:  # eigen-decomposition of the small (samples x samples) Gram matrix: ~10x faster
            vals, u = np.linalg.eigh(a @ a.T)
            order = np.argsort(vals)[::-1]
            s, u = np.sqrt(np.clip(vals[order], 0.0, None)), u[:, order]
        else:
            u, s, _ = np.linalg.svd(a, full_matrices=False)
        keep = s[:k] > s[0] * 1e-10                                   # drop directions with no variance
        inv = np.where(keep, 1.0 / np.where(keep, s[:k], 1.0), 0.0)
        self.singular_values_ = s
        self.eofs_ = (inv[:, None] * u[:, :k].T) @ a                  # (k, n_outputs), weighted space, orthonormal
        self.patterns_ = (inv[:, None] * u[:, :k].T) @ anom           # (k, n_outputs), physical units per unit PC
        self.explained_variance_ratio_ = s[:k] ** 2 / max(np.sum(s ** 2), 1e-300)
        return self

    def transform(self, y: np.ndarray) -> np.ndarray:
        return ((y - self.mean_) * self.sqrt_w_) @ self.eofs_.T

    def inverse_transform(self, pcs: np.ndarray) -> np.ndarray:
        return self.mean_ + pcs @ self.patterns_


class EOFRegressionBaseline(nn.Module):
    """Random forest or Gaussian process from inputs (physical units) to maps, via the target's EOFs.

    Args:
        regressor: "random_forest" (scikit-learn RandomForestRegressor, multi-output on the PCs) or
            "gaussian_process" (scikit-learn GaussianProcessRegressor, ARD kernel + white noise).
        n_eofs: leading EOFs of the target kept (ClimateBench's temperature maps: the first few explain
            nearly all the forced variance).
        rf_options: overrides of :data:`DEFAULT_RF_OPTIONS` (any RandomForestRegressor argument).
        gp_options: overrides of :data:`DEFAULT_GP_OPTIONS`; other keys go to GaussianProcessRegressor.
        seed: random_state of the forest / the GP optimiser's restarts.
        blas_threads: BLAS threads while fitting and predicting (None: the library default). The
            matrices are small (hundreds of rows), so threads mostly add overhead: on a busy 2-core
            machine the GP fitted ~25x faster with 1 thread than with 2.

    ``fit(x, y, weights=None)`` then ``predict(x)``; calling the model on a tensor returns a tensor, and
    it is an ``nn.Module`` without parameters, so code written for the torch baselines (``model(x)``,
    ``model.eval()``, ``DataModule.predict_xarray(model, scenario)``) works unchanged. Not saved in
    Lightning checkpoints: refit it (seconds) or pickle it.
    """

    def __init__(self, regressor: Literal["random_forest", "gaussian_process"] = "random_forest", n_eofs: int = 5,
                 rf_options: Mapping[str, Any] | None = None, gp_options: Mapping[str, Any] | None = None,
                 seed: int = 0, blas_threads: int | None = 1):
        super().__init__()
        self.blas_threads = blas_threads
        if regressor not in ("random_forest", "gaussian_process"):
            raise ValueError(f"regressor must be 'random_forest' or 'gaussian_process', got {regressor!r}")
        self.regressor, self.n_eofs, self.seed = regressor, int(n_eofs), int(seed)
        self.rf_options = {**DEFAULT_RF_OPTIONS, **(rf_options or {})}
        unknown = set(gp_options or {}) - set(DEFAULT_GP_OPTIONS)
        self.gp_options = {**DEFAULT_GP_OPTIONS, **(gp_options or {})}
        self._gp_extra = {k: self.gp_options.pop(k) for k in unknown}
        self.eofs: TargetEOFs | None = None
        self.models_: list = []

    # ---------------------------------------------------------------------------------------------
    def _kernel(self, n_inputs: int):
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, Matern, WhiteKernel

        o = self.gp_options
        ls = np.full(n_inputs, float(o["length_scale"]))
        if o["kernel"] == "rbf":
            core = RBF(ls, o["length_scale_bounds"])
        elif o["kernel"] in ("matern32", "matern52"):
            core = Matern(ls, o["length_scale_bounds"], nu=1.5 if o["kernel"] == "matern32" else 2.5)
        else:
            raise ValueError(f"gp_options['kernel'] must be 'matern32', 'matern52' or 'rbf', got {o['kernel']!r}")
        return ConstantKernel(o["amplitude"], o["amplitude_bounds"]) * core + WhiteKernel(o["noise_level"], o["noise_level_bounds"])

    def fit(self, x, y, weights=None) -> "EOFRegressionBaseline":
        """Fit on x (samples, n_inputs) and y (samples, n_outputs), numpy or torch, physical units.

        ``weights``: optional (n_outputs,) non-negative weight of each output in the EOF analysis, e.g.
        cos(lat) per cell; with several variables one after another, divide each variable's block by
        its variance so that no variable dominates the EOFs through its units.
        """
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=self.blas_threads, user_api="blas"):
            self._fit(_as_numpy(x), _as_numpy(y), weights)
        return self

    def _fit(self, x: np.ndarray, y: np.ndarray, weights) -> None:
        if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
            raise ValueError(f"fit expects x (samples, inputs) and y (samples, outputs); got {x.shape} and {y.shape}")
        self.n_inputs_, self.n_outputs_ = x.shape[1], y.shape[1]
        self.x_mean_ = x.mean(axis=0)
        std = x.std(axis=0)
        self.x_std_ = np.where(std > 0, std, 1.0)
        xs = (x - self.x_mean_) / self.x_std_
        self.eofs = TargetEOFs(self.n_eofs).fit(y, weights)
        pcs = self.eofs.transform(y)
        if self.regressor == "random_forest":
            from sklearn.ensemble import RandomForestRegressor

            model = RandomForestRegressor(random_state=self.seed, **self.rf_options)
            self.models_ = [model.fit(xs, pcs)]
        else:
            self._fit_gps(xs, pcs)

    def _fit_gps(self, xs: np.ndarray, pcs: np.ndarray) -> None:
        if self.gp_options["shared_kernel"]:
            self.pc_scale_ = float(np.sqrt(np.mean(pcs ** 2))) or 1.0
            self.models_ = [self._fit_gp(xs, pcs / self.pc_scale_, normalize_y=False)]
        else:
            self.pc_scale_ = 1.0
            self.models_ = [self._fit_gp(xs, pcs[:, i], normalize_y=True) for i in range(pcs.shape[1])]

    def _fit_gp(self, xs: np.ndarray, target: np.ndarray, normalize_y: bool):
        """Optimise the kernel on at most ``max_optimizer_samples`` samples, then condition on all of them."""
        from sklearn.gaussian_process import GaussianProcessRegressor

        opts = dict(normalize_y=normalize_y, random_state=self.seed, **self._gp_extra)
        n_opt = int(self.gp_options["max_optimizer_samples"])
        subset = np.arange(len(xs))
        if 0 < n_opt < len(xs):
            subset = np.sort(np.random.default_rng(self.seed).choice(len(xs), n_opt, replace=False))
        gp = GaussianProcessRegressor(self._kernel(xs.shape[1]), n_restarts_optimizer=self.gp_options["n_restarts_optimizer"],
                                      **opts).fit(xs[subset], target[subset])
        if len(subset) == len(xs):
            return gp
        return GaussianProcessRegressor(gp.kernel_, optimizer=None, **opts).fit(xs, target)

    def predict_pcs(self, x) -> np.ndarray:
        """(samples, n_eofs) principal components predicted for x (samples, n_inputs) in physical units."""
        if self.eofs is None:
            raise RuntimeError("EOFRegressionBaseline: call fit(x, y) before predict")
        x = _as_numpy(x)
        if x.ndim != 2 or x.shape[1] != self.n_inputs_:
            raise ValueError(f"predict expects x of shape (samples, {self.n_inputs_}), got {x.shape}")
        xs = (x - self.x_mean_) / self.x_std_
        if self.regressor == "random_forest":
            return self.models_[0].predict(xs).reshape(len(xs), -1)
        if self.gp_options["shared_kernel"]:
            return self.models_[0].predict(xs).reshape(len(xs), -1) * self.pc_scale_
        return np.stack([m.predict(xs) for m in self.models_], axis=1)

    def predict(self, x) -> np.ndarray:
        """(samples, n_outputs) maps, flattened as in fit, in y's physical units."""
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=self.blas_threads, user_api="blas"):
            pcs = self.predict_pcs(x)
            return self.eofs.inverse_transform(pcs)

    def forward(self, x):
        """Tensor in, tensor out (same dtype and device); numpy in, numpy out."""
        if isinstance(x, torch.Tensor):
            out = self.predict(x)
            return torch.as_tensor(out, dtype=x.dtype if x.is_floating_point() else torch.float32, device=x.device)
        return self.predict(x)
