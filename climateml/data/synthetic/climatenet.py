"""Sample data in the ClimateNet layout: tropical cyclones (TC) and atmospheric rivers (AR) with labels.

Writes one NetCDF file per snapshot exactly as the ClimateNet expert-labelled data set is laid out
(Kashinath, Prabhat et al. 2021, doi:10.5194/gmd-14-107-2021): ``data-YYYY-MM-DD-01-1_N.nc``, where
``_N`` numbers alternative expert labellings of the same timestep (same fields, different ``LABELS``).
Each file holds 16 CAM5 fields, float32 on (time, lat, lon) with ``time`` of length 1 and a *string*
value (``data-YYYY-MM-DD-01-1``, not a date), and ``LABELS`` (int64, 0 background, 1 TC, 2 AR) on
(lat, lon): the real files carry the labels without the time dimension. ``lat`` ascends -90..90 with
the poles included, ``lon`` runs 0..360 (east, 360 excluded). The real grid is 768 x 1152; the default
here is 96 x 144 (same 2:3 aspect) so tests and demos run in seconds.

Background state (phi latitude, all in SI / CAM units):

* surface temperature ``TS = 250 + 50 cos^2(phi)`` K, ``TREFHT = TS - 1.5``; ``T500 = 232 + 36 cos^2(phi)``,
  ``T200 = 214 + 6 cos^2(phi)``: warm tropics, temperature decreasing poleward and with height.
* precipitable water ``TMQ = 3 + 47 exp(-((phi - 5) / 22)^2)`` kg m-2 (moist tropics, ITCZ at 5N).
* ``U850 = 12 exp(-((|phi| - 45) / 12)^2) - 7 exp(-((|phi| - 15) / 9)^2)`` m s-1: mid-latitude westerlies
  and trade-wind easterlies; ``V850`` equatorward in the trades; ``UBOT, VBOT = 0.7 (U850, V850)``.
* ``PSL = 101325 + 1200 g(|phi|, 30, 10) - 1800 g(|phi|, 60, 10) - 400 g(phi, 0, 8)`` Pa with
  ``g(x, m, s) = exp(-((x - m) / s)^2)``: subtropical highs, sub-polar lows, equatorial trough.
* ``PS = PSL exp(-h / 8000 m)`` with a smooth random orography h >= 0 (m); ``ZBOT`` (lowest model
  level height) from the hypsometric equation for a 0.7 % pressure step.
* ``QREFHT`` at 80 % relative humidity from ``TREFHT`` (Magnus formula), ``PRECT`` [m s-1] grows
  exponentially with TMQ (Bretherton et al. 2004): ``0.5 mm day-1 exp((TMQ - 30) / 8)``.
* ``Z1000 = 8 m hPa-1 (PSL - 1000 hPa)`` m; ``Z200 = Z1000 + (R_d Tm / g) ln(1000 / 200)`` with Tm the
  mean of TS, T500 and T200 (hypsometric thickness, so warm columns are thick).

Every field carries spatially correlated noise: Gaussian-filtered white noise, periodic in longitude,
with a correlation length of ``noise_length_km``.

Tropical cyclones (about ``tc_per_snapshot`` per file, Poisson), centred at 5-35 deg latitude in either
hemisphere, label radius R drawn in ``tc_radius_km``: a warm-core vortex with tangential wind
``v(r) = Vmax (r / Rm) exp(1 - r / Rm)`` (Rm = R / 4) turning cyclonically (counter-clockwise in the
north, clockwise in the south, 20 deg inflow angle), a Gaussian pressure deficit of 20-60 hPa on PSL and
PS (e-folding 0.6 R), TMQ + 25 kg m-2, PRECT + 60 mm day-1, T500 + 4 K and T200 + 6 K (warm core).

Atmospheric rivers (about ``ar_per_snapshot`` per file): quadratic Bezier curves from the subtropics
(18-28 deg) poleward and eastward into mid-latitudes (40-60 deg), 3000-7000 km long, half-width w drawn
in ``ar_halfwidth_km``; across the axis at distance d a Gaussian TMQ excess of 15-25 kg m-2
``exp(-(d / w)^2)`` and a wind of 10-16 m s-1 along the axis (from the subtropical end poleward).

Labels are the feature footprints: ``d / R < 1`` for TCs (TC wins where both), ``d / w < 1`` for ARs.
An alternative labelling (``_1``) re-thresholds every footprint at ``exp(N(0, label_jitter))`` and drops
each AR with probability ``label_drop_ar``: experts disagree about extents and about weak rivers.
Everything is deterministic for a given seed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from climateml.data.io import FLAG_ATTRS, write_dataset

EARTH_RADIUS_KM = 6371.0
R_DRY = 287.04  # J kg-1 K-1
GRAVITY = 9.80665  # m s-2
MM_PER_DAY = 1.0 / 86400.0 / 1000.0  # m s-1 per mm day-1
BACKGROUND, TC, AR = 0, 1, 2  # the label values (names: climateml.metrics.segmentation.CLASS_NAMES)

VARIABLES = {  # CAM5 name: (units, long_name)
    "TMQ": ("kg/m2", "Total (vertically integrated) precipitable water"),
    "U850": ("m/s", "Zonal wind at 850 mbar pressure surface"),
    "V850": ("m/s", "Meridional wind at 850 mbar pressure surface"),
    "UBOT": ("m/s", "Lowest model level zonal wind"),
    "VBOT": ("m/s", "Lowest model level meridional wind"),
    "QREFHT": ("kg/kg", "Reference height humidity"),
    "PS": ("Pa", "Surface pressure"),
    "PSL": ("Pa", "Sea level pressure"),
    "T200": ("K", "Temperature at 200 mbar pressure surface"),
    "T500": ("K", "Temperature at 500 mbar pressure surface"),
    "PRECT": ("m/s", "Total (convective and large-scale) precipitation rate (liq + ice)"),
    "TS": ("K", "Surface temperature (radiative)"),
    "TREFHT": ("K", "Reference height temperature"),
    "Z1000": ("m", "Geopotential Z at 1000 mbar pressure surface"),
    "Z200": ("m", "Geopotential Z at 200 mbar pressure surface"),
    "ZBOT": ("m", "Lowest model level height"),
}

# noise amplitude per field (field units): weather-scale variability of a single snapshot
_NOISE = {"TS": 1.5, "T500": 1.5, "T200": 1.0, "TMQ": 3.0, "U850": 3.0, "V850": 3.0, "PSL": 250.0,
          "orography": 1.0}


@dataclass(frozen=True)
class ClimateNetGrid:
    """Regular lat-lon grid of ClimateNet: lat ascending with poles included, lon from 0 east (degrees)."""

    nlat: int = 96
    nlon: int = 144

    @property
    def lat(self) -> np.ndarray:
        return np.linspace(-90.0, 90.0, self.nlat)

    @property
    def lon(self) -> np.ndarray:
        return np.arange(self.nlon) * (360.0 / self.nlon)


@dataclass
class _Feature:
    """One TC or AR: its class and its normalised distance field (footprint where < 1)."""

    kind: int
    distance: np.ndarray = field(repr=False)  # d / R (TC) or d / w (AR), dimensionless, (lat, lon)


def file_name(date: dt.date, labelling: int = 0) -> str:
    """The ClimateNet file name of one snapshot and labelling: ``data-1996-06-09-01-1_0.nc``."""
    return f"data-{date:%Y-%m-%d}-01-1_{labelling}.nc"


def _local_offsets_km(lat2d, lon2d, lat0, lon0):
    """East and north offsets (km) of every cell from (lat0, lon0): local tangent plane, lon wrapped."""
    dlon = (lon2d - lon0 + 180.0) % 360.0 - 180.0
    dx = np.deg2rad(dlon) * EARTH_RADIUS_KM * np.cos(np.deg2rad(lat0))
    dy = np.deg2rad(lat2d - lat0) * EARTH_RADIUS_KM
    return dx, dy


def _correlated_noise(rng, shape, sigma_cells) -> np.ndarray:
    """Unit-variance Gaussian-filtered white noise, periodic in lon, reflected at the poles."""
    white = rng.standard_normal(shape)
    smooth = gaussian_filter(white, sigma=sigma_cells, mode=("nearest", "wrap"))
    return smooth / max(float(smooth.std()), 1e-12)


def _background(grid: ClimateNetGrid, rng, noise_length_km: float) -> dict[str, np.ndarray]:
    """The large-scale state plus correlated noise; the derived fields are computed after the features."""
    lat2d, _ = np.meshgrid(grid.lat, grid.lon, indexing="ij")
    phi = np.deg2rad(lat2d)
    alat = np.abs(lat2d)
    dlat_km = np.deg2rad(180.0 / (grid.nlat - 1)) * EARTH_RADIUS_KM
    dlon_km = np.deg2rad(360.0 / grid.nlon) * EARTH_RADIUS_KM * 0.7  # at about 45 deg
    sigma = (noise_length_km / dlat_km, noise_length_km / dlon_km)

    def g(x, m, s):
        return np.exp(-(((x - m) / s) ** 2))

    def noise(name):
        return _NOISE[name] * _correlated_noise(rng, lat2d.shape, sigma)

    cos2 = np.cos(phi) ** 2
    f = {
        "TS": 250.0 + 50.0 * cos2 + noise("TS"),
        "T500": 232.0 + 36.0 * cos2 + noise("T500"),
        "T200": 214.0 + 6.0 * cos2 + noise("T200"),
        "TMQ": 3.0 + 47.0 * g(lat2d, 5.0, 22.0) + noise("TMQ") * (0.3 + cos2),
        "U850": 12.0 * g(alat, 45.0, 12.0) - 7.0 * g(alat, 15.0, 9.0) + noise("U850"),
        "V850": -3.0 * np.sign(lat2d) * g(alat, 15.0, 9.0) + noise("V850"),
        "PSL": 101325.0 + 1200.0 * g(alat, 30.0, 10.0) - 1800.0 * g(alat, 60.0, 10.0)
        - 400.0 * g(lat2d, 0.0, 8.0) + noise("PSL"),
        "PRECT_extra": np.zeros_like(lat2d),
    }
    f["TMQ"] = np.maximum(f["TMQ"], 0.5)
    orography = np.clip(noise("orography") - 0.8, 0.0, 3.0) * 1200.0  # m, about 20 % of cells above sea level
    f["PS"] = f["PSL"] * np.exp(-orography / 8000.0)
    return f


def _add_cyclone(f, lat2d, lon2d, rng, radius_km, hemisphere) -> _Feature:
    """A warm-core cyclonic vortex; returns its footprint distance field (r / R)."""
    lat0 = hemisphere * rng.uniform(5.0, 35.0)
    lon0 = rng.uniform(0.0, 360.0)
    R = rng.uniform(*radius_km)
    dx, dy = _local_offsets_km(lat2d, lon2d, lat0, lon0)
    r = np.hypot(dx, dy)
    rs = np.maximum(r, 1e-3)
    rm = R / 4.0
    vmax = rng.uniform(25.0, 45.0)
    vt = vmax * (r / rm) * np.exp(1.0 - r / rm)  # m s-1, peaks at Rm
    s = np.sign(lat0)  # +1: counter-clockwise (NH), -1: clockwise (SH), both cyclonic
    inflow = np.deg2rad(20.0)
    tx, ty = -s * dy / rs, s * dx / rs  # tangential unit vector (cyclonic sense)
    rx, ry = -dx / rs, -dy / rs  # radial inflow
    u = vt * (np.cos(inflow) * tx + np.sin(inflow) * rx)
    v = vt * (np.cos(inflow) * ty + np.sin(inflow) * ry)
    core = np.exp(-((r / (0.6 * R)) ** 2))
    dp = rng.uniform(2000.0, 6000.0)  # Pa
    f["U850"] += u
    f["V850"] += v
    f["PSL"] -= dp * core
    f["PS"] -= dp * core
    f["TMQ"] += 25.0 * core
    f["PRECT_extra"] += 60.0 * MM_PER_DAY * np.exp(-((r / (0.4 * R)) ** 2))
    f["T500"] += 4.0 * core
    f["T200"] += 6.0 * core
    f["TS"] += 0.5 * core
    return _Feature(TC, (r / R).astype(np.float32))


def _add_river(f, lat2d, lon2d, rng, halfwidth_km, hemisphere, n_points: int = 64) -> _Feature:
    """A curved filament of moisture with along-axis wind; returns its footprint distance field (d / w)."""
    lat_a = hemisphere * rng.uniform(18.0, 28.0)
    lat_b = hemisphere * rng.uniform(40.0, 60.0)
    lon_a = rng.uniform(0.0, 360.0)
    lon_b = lon_a + rng.uniform(20.0, 50.0)
    # control point: midpoint pushed sideways for a curved (banana-shaped) river
    bend = rng.uniform(-0.35, 0.35)
    lat_c = 0.5 * (lat_a + lat_b) - bend * (lon_b - lon_a) * 0.5
    lon_c = 0.5 * (lon_a + lon_b) + bend * (lat_b - lat_a)
    t = np.linspace(0.0, 1.0, n_points)[:, None]
    pts = (1 - t) ** 2 * np.array([lat_a, lon_a]) + 2 * (1 - t) * t * np.array([lat_c, lon_c]) \
        + t ** 2 * np.array([lat_b, lon_b])
    plat, plon = pts[:, 0], pts[:, 1] % 360.0
    w = rng.uniform(*halfwidth_km)
    # distance of every cell to every point of the axis (restricted to the latitude band it can reach)
    band = (np.abs(lat2d[:, 0] - np.clip(lat2d[:, 0], min(plat.min(), plat.max()), max(plat.min(), plat.max())))
            < 3.0 * w / 111.0 + 2.0)
    dist = np.full(lat2d.shape, np.inf, dtype=np.float64)
    tan_x = np.zeros(lat2d.shape)
    tan_y = np.zeros(lat2d.shape)
    la, lo = lat2d[band], lon2d[band]
    dx, dy = _local_offsets_km(la[..., None], lo[..., None], plat, plon)
    d = np.hypot(dx, dy)
    nearest = d.argmin(axis=-1)
    dist[band] = np.take_along_axis(d, nearest[..., None], -1)[..., 0]
    # axis direction (east, north) at the nearest point: from the subtropical end poleward
    ex = np.gradient(pts[:, 1]) * np.cos(np.deg2rad(plat))
    ey = np.gradient(plat)
    norm = np.hypot(ex, ey)
    tan_x[band], tan_y[band] = (ex / norm)[nearest], (ey / norm)[nearest]
    profile = np.exp(-((dist / w) ** 2))
    speed = rng.uniform(10.0, 16.0)
    f["TMQ"] += rng.uniform(15.0, 25.0) * profile
    f["U850"] += speed * profile * tan_x
    f["V850"] += speed * profile * tan_y
    f["PRECT_extra"] += 8.0 * MM_PER_DAY * profile
    return _Feature(AR, (dist / w).astype(np.float32))


def _derived(f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Fields that follow from the state: winds at the lowest level, humidity, precipitation, heights."""
    out = {k: v for k, v in f.items() if k in VARIABLES}
    out["UBOT"], out["VBOT"] = 0.7 * f["U850"], 0.7 * f["V850"]
    out["TREFHT"] = f["TS"] - 1.5
    tc = out["TREFHT"] - 273.15
    es = 611.2 * np.exp(17.67 * tc / (tc + 243.5))  # Pa, Magnus
    out["QREFHT"] = 0.622 * 0.8 * es / f["PS"]
    out["PRECT"] = 0.5 * MM_PER_DAY * np.exp((f["TMQ"] - 30.0) / 8.0) + f["PRECT_extra"]
    out["Z1000"] = 8.0 * (f["PSL"] / 100.0 - 1000.0)
    t_mean = (f["TS"] + f["T500"] + f["T200"]) / 3.0
    out["Z200"] = out["Z1000"] + R_DRY * t_mean / GRAVITY * np.log(1000.0 / 200.0)
    out["ZBOT"] = R_DRY * out["TREFHT"] / GRAVITY * -np.log(0.993)
    return out


def _labels(features: list[_Feature], shape, thresholds=None, keep=None) -> np.ndarray:
    """LABELS from footprints: AR first, then TC on top; per-feature threshold and keep flags."""
    labels = np.zeros(shape, dtype=np.int64)
    n = len(features)
    thresholds = np.ones(n) if thresholds is None else thresholds
    keep = np.ones(n, bool) if keep is None else keep
    for kind in (AR, TC):
        for feat, thr, k in zip(features, thresholds, keep):
            if feat.kind == kind and k:
                labels[feat.distance < thr] = kind
    return labels


def generate_climatenet(
    out_dir: str | Path,
    n_dates: int = 20,
    nlat: int = 96,
    nlon: int = 144,
    seed: int = 0,
    n_double_labelled: int = 3,
    start_date: str = "1996-06-09",
    days_between: int = 3,
    tc_per_snapshot: float = 5.0,
    ar_per_snapshot: float = 7.0,
    tc_radius_km: tuple[float, float] = (350.0, 600.0),
    ar_halfwidth_km: tuple[float, float] = (400.0, 700.0),
    noise_length_km: float = 600.0,
    label_jitter: float = 0.15,
    label_drop_ar: float = 0.15,
    progress: bool = True,
) -> list[Path]:
    """Write ``n_dates`` snapshots (plus a second labelling for ``n_double_labelled`` of them) to ``out_dir``.

    Returns the written paths, sorted. ``tc_radius_km`` and ``ar_halfwidth_km`` are uniform ranges of the
    label radius of a TC and the label half-width of an AR [km]; ``days_between`` spaces the dates.
    The defaults give about 94 % background, 6 % AR and 0.5 % TC pixels, as in the real data.
    """
    if n_double_labelled > n_dates:
        raise ValueError(f"n_double_labelled={n_double_labelled} exceeds n_dates={n_dates}")
    out_dir = Path(out_dir)
    grid = ClimateNetGrid(nlat, nlon)
    lat2d, lon2d = np.meshgrid(grid.lat, grid.lon, indexing="ij")
    start = dt.date.fromisoformat(start_date)
    double = set(np.random.default_rng([seed, 1]).choice(n_dates, size=n_double_labelled, replace=False).tolist())
    paths: list[Path] = []
    for i in tqdm(range(n_dates), desc="ClimateNet sample data", disable=not progress):
        rng = np.random.default_rng([seed, 0, i])
        date = start + dt.timedelta(days=i * days_between)
        f = _background(grid, rng, noise_length_km)
        features = []
        for _ in range(rng.poisson(ar_per_snapshot)):
            features.append(_add_river(f, lat2d, lon2d, rng, ar_halfwidth_km, rng.choice((-1.0, 1.0))))
        for _ in range(rng.poisson(tc_per_snapshot)):
            features.append(_add_cyclone(f, lat2d, lon2d, rng, tc_radius_km, rng.choice((-1.0, 1.0))))
        fields = _derived(f)
        stem = f"data-{date:%Y-%m-%d}-01-1"
        coords = {"time": np.array([stem], dtype=object), "lat": grid.lat, "lon": grid.lon}
        data_vars = {name: (("time", "lat", "lon"), fields[name][None].astype(np.float32),
                            {"units": units, "long_name": long_name})
                     for name, (units, long_name) in VARIABLES.items()}
        ds = xr.Dataset(data_vars, coords=coords)
        ds["lat"].attrs = {"units": "degrees_north", "long_name": "latitude"}
        ds["lon"].attrs = {"units": "degrees_east", "long_name": "longitude"}
        labellings = [_labels(features, lat2d.shape)]
        if i in double:
            lrng = np.random.default_rng([seed, 2, i])
            thr = np.exp(lrng.normal(0.0, label_jitter, len(features)))
            keep = np.array([ft.kind != AR or lrng.random() >= label_drop_ar for ft in features], bool)
            labellings.append(_labels(features, lat2d.shape, thr, keep))
        for k, labels in enumerate(labellings):
            ds_k = ds.assign(LABELS=(("lat", "lon"), labels,
                                     {"long_name": "expert label", **FLAG_ATTRS}))
            paths.append(write_dataset(ds_k, out_dir / file_name(date, k)))
    return sorted(paths)
