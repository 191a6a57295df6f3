"""Real land/sea geography (land fraction, coastlines, map axes) and the EOF random-forest / GP baselines."""

from __future__ import annotations

import shutil
import time
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from climateml import geography  # noqa: E402
from climateml.models.sklearn_baselines import EOFRegressionBaseline, TargetEOFs  # noqa: E402


def climatebench_grid(nlat: int = 96, nlon: int = 144) -> tuple[np.ndarray, np.ndarray]:
    """ClimateBench's grid: lat -90..90 with the poles, lon 0..360 - spacing (degrees)."""
    return np.linspace(-90.0, 90.0, nlat), np.arange(nlon) * 360.0 / nlon


def area_mean(field: np.ndarray, lat: np.ndarray) -> float:
    w = np.cos(np.deg2rad(lat))[:, None] * np.ones_like(field)
    return float((field * w).sum() / w.sum())


# --------------------------------------------------------------------------------------------------
# geography
# --------------------------------------------------------------------------------------------------

def test_land_fraction_matches_the_earth():
    lat, lon = climatebench_grid()
    frac = geography.land_fraction(lat, lon)
    assert frac.shape == (96, 144)
    assert frac.min() >= 0.0 and frac.max() <= 1.0
    assert area_mean(frac, lat) == pytest.approx(0.29, abs=0.02)   # 29 % of the Earth's surface is land
    at = lambda la, lo: frac[np.abs(lat - la).argmin(), np.abs(lon - lo).argmin()]  # noqa: E731
    assert at(23.0, 15.0) == 1.0          # Sahara (Libya/Chad)
    assert at(0.0, 200.0) == 0.0          # mid-Pacific, 160 W
    assert at(-80.0, 90.0) == 1.0         # East Antarctica
    assert at(55.0, 330.0) == 0.0         # North Atlantic
    assert 0.05 < at(51.16, 0.0) < 0.95   # the cell on Greenwich: south-east England and the Channel


def test_land_fraction_is_cached_and_safe_to_modify():
    lat, lon = climatebench_grid()
    first = geography.land_fraction(lat, lon)
    t0 = time.perf_counter()
    second = geography.land_fraction(lat, lon)
    assert time.perf_counter() - t0 < 0.05
    second[:] = -1.0                      # a caller's copy: the cache is unchanged
    np.testing.assert_array_equal(geography.land_fraction(lat, lon), first)


def test_land_fraction_same_in_both_longitude_conventions():
    lat, lon = climatebench_grid()
    east = geography.land_fraction(lat, lon)                       # 0 .. 357.5
    west = geography.land_fraction(lat, lon - 180.0)               # -180 .. 177.5
    np.testing.assert_allclose(np.roll(west, -72, axis=1), east, atol=1e-9)
    descending = geography.land_fraction(lat[::-1], lon)
    np.testing.assert_allclose(descending[::-1], east, atol=1e-9)
    coarse_lat, coarse_lon = climatebench_grid(12, 18)
    assert area_mean(geography.land_fraction(coarse_lat, coarse_lon), coarse_lat) == pytest.approx(0.29, abs=0.03)
    with pytest.raises(ValueError, match="within -90..90"):
        geography.land_fraction([0.0, 95.0], lon)


def _draw(lat, lon, field, path):
    """Two panels, lon 0..360 and -180..180, coastlines and degree axes."""
    fig, axes = plt.subplots(2, 1, figsize=(6, 6.5), constrained_layout=True)
    contours, sahara = [], []
    for ax, west in zip(axes, (False, True)):
        x = (lon + 180.0) % 360.0 - 180.0 if west else lon        # same places, other longitude labels
        order = np.argsort(x)
        mesh = ax.pcolormesh(x[order], lat, field[:, order], shading="auto", cmap="RdBu_r", vmin=-1, vmax=1)
        drawn = np.asarray(mesh.get_array()).reshape(len(lat), len(lon))
        sahara.append(drawn[np.abs(lat - 23.0).argmin(), np.abs(x[order] - 15.0).argmin()])
        contours.append(geography.add_coastlines(ax, source="land_mask"))
        geography.format_map_axes(ax, x[order], lat)
        ax.set_title(f"{len(lat)} x {len(lon)}, lon {x.min():.0f}..{x.max():.0f}", fontsize=8)
    fig.canvas.draw()
    labels = [[t.get_text() for t in ax.get_xticklabels()] for ax in axes]
    ylabels = [t.get_text() for t in axes[0].get_yticklabels()]
    limits = [ax.get_xlim() for ax in axes]
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return contours, labels, ylabels, limits, sahara


@pytest.mark.parametrize("nlat,nlon", [(96, 144), (12, 18)])
def test_maps_with_coastlines_and_degree_axes(tmp_path, nlat, nlon):
    lat, lon = climatebench_grid(nlat, nlon)
    # land fraction minus 0.5: red continents, blue oceans, so misplaced coastlines show at once
    field = geography.land_fraction(lat, lon) - 0.5
    path = tmp_path / f"geo_check_{nlat}x{nlon}.png"
    contours, labels, ylabels, limits, sahara = _draw(lat, lon, field, path)
    assert min(sahara) > 0.3                                  # the drawn field has land in the Sahara in both panels
    assert path.stat().st_size > 20_000
    shutil.copy(path, f"/tmp/geo_check_{nlat}x{nlon}.png")   # for a person to look at
    dlon = 360.0 / nlon
    assert limits[0] == pytest.approx((-dlon / 2, 360.0 - dlon / 2))
    assert limits[1] == pytest.approx((-180.0 - dlon / 2, 180.0 - dlon / 2))
    assert labels[0] == ["0°", "60°E", "120°E", "180°", "120°W", "60°W"]
    assert labels[1] == ["180°", "120°W", "60°W", "0°", "60°E", "120°E"]
    assert ylabels == ["90°S", "60°S", "30°S", "0°", "30°N", "60°N", "90°N"]
    for cs, (lo, hi) in zip(contours, limits):
        xy = np.concatenate([p.vertices for p in cs.get_paths() if len(p.vertices)])
        assert len(xy) > 5_000                               # real coastlines, not a few ellipses
        assert xy[:, 0].min() <= lo + 2 and xy[:, 0].max() >= hi - 2
        # the coastline of Africa's west coast near 15 N lies between 17 and 16 W
        near = xy[np.abs(xy[:, 1] - 15.0) < 0.2]
        west_africa = near[((near[:, 0] + 180.0) % 360.0 - 180.0 > -18) & ((near[:, 0] + 180.0) % 360.0 - 180.0 < -16)]
        assert len(west_africa) > 0


def test_regional_axes_and_cached_coastlines():
    fig, ax = plt.subplots()
    lon, lat = np.arange(250.0, 300.0, 2.5), np.arange(20.0, 52.0, 2.0)   # North America, 0..360 convention
    ax.pcolormesh(lon, lat, np.zeros((len(lat), len(lon))), shading="auto")
    geography.format_map_axes(ax, lon, lat)
    t0 = time.perf_counter()
    geography.add_coastlines(ax)
    geography.add_coastlines(ax, colors="r")            # second call reuses the cached land mask
    assert time.perf_counter() - t0 < 5.0
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["110°W", "100°W", "90°W", "80°W", "70°W"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["20°N", "30°N", "40°N", "50°N"]
    assert ax.get_xlim() == pytest.approx((248.75, 298.75))   # half a 2.5-degree cell beyond the centres
    assert ax.get_aspect() == pytest.approx(1.0 / np.cos(np.deg2rad(35.0)))   # extent 19..51 N
    plt.close(fig)
    assert geography.lon_label(-74.0) == "74°W" and geography.lat_label(-33.5, 1) == "33.5°S"
    with pytest.raises(ValueError, match="source"):
        geography.add_coastlines(plt.gca(), source="internet")
    plt.close("all")


def test_natural_earth_only_when_already_on_disk(tmp_path, monkeypatch):
    """Cartopy's coastline file is used only if it exists; nothing is downloaded (a fake cartopy stands in)."""
    import sys
    import types

    class Line:
        def __init__(self, coords):
            self.coords = coords

    class Reader:
        def __init__(self, path):
            self.path = path

        def geometries(self):  # one coastline segment crossing the date line's neighbourhood, 170E..170W
            return [Line([(170.0, 0.0), (179.0, 1.0)]), types.SimpleNamespace(geoms=[Line([(-179.0, 1.0), (-170.0, 0.0)])])]

    fake = types.ModuleType("cartopy")
    fake.config = {"data_dir": str(tmp_path / "data"), "pre_existing_data_dir": ""}
    fake.io = types.ModuleType("cartopy.io")
    fake.io.shapereader = types.ModuleType("cartopy.io.shapereader")
    fake.io.shapereader.Reader = Reader
    for name, module in (("cartopy", fake), ("cartopy.io", fake.io), ("cartopy.io.shapereader", fake.io.shapereader)):
        monkeypatch.setitem(sys.modules, name, module)
    assert geography.natural_earth_coastline_file() is None
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        geography.add_coastlines(plt.figure().gca(), source="natural_earth")
    shp = tmp_path / "data" / "shapefiles" / "natural_earth" / "physical" / "ne_110m_coastline.shp"
    shp.parent.mkdir(parents=True)
    shp.touch()
    assert geography.natural_earth_coastline_file() == shp
    fig, ax = plt.subplots()
    lines = geography.add_coastlines(ax, lon_range=(0.0, 360.0))      # auto: the file is there
    xs = np.concatenate([seg[:, 0] for seg in lines.get_segments()])
    assert xs.min() == pytest.approx(170.0) and xs.max() == pytest.approx(190.0)   # 170W drawn at 190E
    assert ax.get_xlim() == (0.0, 360.0)
    plt.close("all")


# --------------------------------------------------------------------------------------------------
# EOF random forest / Gaussian process baselines
# --------------------------------------------------------------------------------------------------

def nonlinear_problem(n: int, nlat: int = 24, nlon: int = 36, noise: float = 0.05, seed: int = 0):
    """x: 4 inputs in physical-looking units; y = 280 K + three fixed patterns times nonlinear functions of x + noise."""
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.uniform(0, 3000, n), rng.uniform(0.2, 0.8, n), rng.uniform(0, 100, n), rng.uniform(0, 10, n)])
    z = (x - [1500.0, 0.5, 50.0, 5.0]) / [870.0, 0.17, 29.0, 2.9]
    patterns = np.random.default_rng(123).normal(size=(3, nlat * nlon))
    amplitudes = np.column_stack([np.tanh(z[:, 0]) + 0.3 * z[:, 1] ** 2,
                                  np.sin(1.5 * z[:, 2]) * np.exp(-0.5 * z[:, 3] ** 2),
                                  z[:, 0] * z[:, 3] / 2])
    y = 280.0 + amplitudes @ patterns + noise * rng.normal(size=(n, nlat * nlon))
    return x, y


def rmse(a, b) -> float:
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def test_gp_and_random_forest_beat_linear_on_a_nonlinear_problem():
    x, y = nonlinear_problem(400)
    xtr, ytr, xte, yte = x[:300], y[:300], x[300:], y[300:]
    design = lambda a: np.column_stack([np.ones(len(a)), a])  # noqa: E731
    coef = np.linalg.lstsq(design(xtr), ytr, rcond=None)[0]
    linear = rmse(design(xte) @ coef, yte)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # hyperparameters at a bound are expected on a noise-free PC
        gp = EOFRegressionBaseline("gaussian_process", n_eofs=3).fit(xtr, ytr)
    rf = EOFRegressionBaseline("random_forest", n_eofs=3).fit(xtr, ytr)
    scores = {"linear": linear, "gp": rmse(gp.predict(xte), yte), "rf": rmse(rf.predict(xte), yte)}
    print("test RMSE [K]:", {k: round(v, 4) for k, v in scores.items()})
    assert scores["linear"] > 0.6                       # the problem is far from linear
    assert scores["gp"] < 0.1                           # the GP is close to the 0.05 K noise floor
    assert scores["rf"] < 0.7 * scores["linear"]        # the forest is coarser but clearly better than linear


def test_eof_round_trip_is_exact_at_full_rank():
    rng = np.random.default_rng(1)
    lat, lon = climatebench_grid(12, 18)
    rank = 6
    y = 280.0 + rng.normal(size=(40, rank)) @ rng.normal(size=(rank, 12 * 18))
    weights = np.repeat(np.cos(np.deg2rad(lat)), 18)          # zero (to rounding) at the poles
    eofs = TargetEOFs(rank).fit(y, weights)
    np.testing.assert_allclose(eofs.inverse_transform(eofs.transform(y)), y, rtol=0, atol=1e-9)
    np.testing.assert_allclose(eofs.eofs_ @ eofs.eofs_.T, np.eye(rank), atol=1e-9)
    assert eofs.explained_variance_ratio_.sum() == pytest.approx(1.0, abs=1e-9)
    assert np.all(np.diff(eofs.explained_variance_ratio_) <= 0)
    fewer = TargetEOFs(2).fit(y, weights)
    assert rmse(fewer.inverse_transform(fewer.transform(y)), y) > 0.1   # truncation loses variance
    with pytest.raises(ValueError, match="n_eofs"):
        TargetEOFs(50).fit(y)
    with pytest.raises(ValueError, match="weights"):
        TargetEOFs(2).fit(y, weights[:-1])


def test_shapes_torch_call_and_seeds():
    x, y = nonlinear_problem(120, nlat=6, nlon=8)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    rf = EOFRegressionBaseline("random_forest", n_eofs=3, rf_options={"n_estimators": 20}, seed=3).fit(xt, yt)
    assert rf.predict(x[:7]).shape == (7, 48)
    out = rf.eval()(xt[:5])                                     # torch-ish: model.eval(), model(x)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (5, 48)
    assert list(rf.parameters()) == [] and not rf.training
    same = EOFRegressionBaseline("random_forest", n_eofs=3, rf_options={"n_estimators": 20}, seed=3).fit(xt, yt)
    other = EOFRegressionBaseline("random_forest", n_eofs=3, rf_options={"n_estimators": 20}, seed=4).fit(xt, yt)
    np.testing.assert_array_equal(same.predict(x), rf.predict(x))
    assert np.abs(other.predict(x) - rf.predict(x)).max() > 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gps = [EOFRegressionBaseline("gaussian_process", n_eofs=2, seed=0,
                                     gp_options={"max_optimizer_samples": 60, "shared_kernel": shared}).fit(x, y)
               for shared in (False, False, True)]
    np.testing.assert_array_equal(gps[0].predict(x), gps[1].predict(x))
    assert gps[2].predict(x).shape == (120, 48) and np.isfinite(gps[2].predict(x)).all()
    with pytest.raises(RuntimeError, match="fit"):
        EOFRegressionBaseline()(xt)
    with pytest.raises(ValueError, match="regressor"):
        EOFRegressionBaseline("svm")
    with pytest.raises(ValueError, match=r"\(samples, 4\)"):
        rf.predict(x[:, :3])
