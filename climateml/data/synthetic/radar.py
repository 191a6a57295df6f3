"""Sample radar rain archive: one CF NetCDF file per frame, as operational radar composites publish them.

Layout of each file ``RAD_YYYYMMDDHHMM.nc`` (the timestamp is the end of the accumulation interval):

* ``x``, ``y`` (km): projected cell centres of an azimuthal-equidistant grid centred on the radar,
  ``y`` DESCENDING (north-up image order, as in most composites), ``projection`` grid-mapping variable;
* ``valid_time`` and ``start_time``: scalar CF time variables, the end and start of the accumulation
  interval (no time dimension);
* ``precipitation_amount`` (y, x) [kg m-2, i.e. mm]: rain accumulated over the interval, float32, NaN
  outside the circular radar range.

Model of the rain field (x, y in km, t in hours):

1. Motion. A smooth, slowly changing flow: a large-scale wind ``U(t)`` of speed ``speed_km_h`` whose
   direction turns by ``turn_deg_per_h``, plus solid-body rotation ``omega`` and linear shear ``s``
   about the domain centre::

       u(x, y, t) = U_x(t) - omega * y + s * y,   v(x, y, t) = U_y(t) + omega * x

2. Cells. Rain cells are born as a Poisson process (``births_per_h_per_10000_km2``) uniformly over the
   domain extended by ``margin_km`` (so cells drift in from upwind), are advected by the flow at their
   centre, and live a log-normal lifetime growing as the square root of their size (median ``lifetime_median_min`` for
   sigma = 4 km: convective cores die within half an hour, stratiform areas last hours). Their size sigma is
   log-uniform in ``cell_sigma_km`` (several scales, from convective cores to stratiform areas); their
   peak rate is log-normal (median ``peak_median_mm_h`` scaled by (sigma / 4 km)^-0.5, so small cells are
   the intense ones; log-sd ``peak_log_sd``, capped at ``peak_max_mm_h``): a heavy tail. Intensity and
   size grow and decay over the life, ``e(a) = sin(pi a / L)``: rate ``peak * e``, size
   ``sigma * (0.5 + 0.5 e)``. Half the cells are elliptical Gaussians ``exp(-r^2 / 2)``, half
   exponential ``exp(-r)`` in the scaled elliptical distance r (aspect up to ``max_aspect``).
3. Texture. The summed cell field is multiplied by a log-normal noise field ``exp(sd z - sd^2 / 2)``,
   z a Gaussian random field with power spectrum ``k^-texture_beta``, carried along by ``U(t)`` (Fourier
   shift) and renewed as AR(1) per Fourier mode with a decorrelation time proportional to the wavelength
   (``texture_tau_min`` at ``texture_ref_km``): small features change fast, large ones persist.
4. Rates below ``min_rate_mm_h`` are set to zero (the radar's detection floor), so most pixels are dry.
   The stored accumulation is the trapezoidal integral of the rate over the interval.

A few frames are simply absent (``missing``), as in real archives. Deterministic for a given seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from tqdm.auto import tqdm

from climateml.data.io import write_dataset

FILE_PATTERN = "RAD_%Y%m%d%H%M.nc"


def generate_radar(
    out_dir: str | Path,
    n_frames: int = 288,
    ny: int = 64,
    nx: int = 64,
    timestep_minutes: float = 5,
    seed: int = 0,
    start: str = "2024-06-01T00:00",
    missing: Sequence[int] = (40, 41, 170),
    grid_spacing_km: float = 1.0,
    range_km: float | None = None,
    speed_km_h: float = 30.0,
    direction_deg: float | None = None,
    turn_deg_per_h: float = 10.0,
    rotation_per_h: float = 0.05,
    shear_per_h: float = 0.2,
    births_per_h_per_10000_km2: float = 3.5,
    margin_km: float = 40.0,
    lifetime_median_min: float = 60.0,
    cell_sigma_km: tuple[float, float] = (1.5, 12.0),
    max_aspect: float = 2.0,
    peak_median_mm_h: float = 3.0,
    peak_log_sd: float = 1.2,
    peak_max_mm_h: float = 150.0,
    texture_sd: float = 0.8,
    texture_beta: float = 3.0,
    texture_tau_min: float = 30.0,
    texture_ref_km: float = 10.0,
    min_rate_mm_h: float = 0.1,
    spinup_hours: float = 3.0,
    progress: bool = True,
) -> list[Path]:
    """Write ``n_frames`` radar files (minus ``missing`` frame indices) into ``out_dir``; return their paths.

    ``start`` is the valid time of frame 0; frame k is valid at ``start + k * timestep_minutes`` and holds
    the accumulation [mm] since the previous frame. ``range_km`` (default: half the smaller extent) is the
    radar range outside which values are NaN. See the module docstring for the other parameters.
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    dt_h = timestep_minutes / 60.0
    x = (np.arange(nx) - (nx - 1) / 2) * grid_spacing_km
    y = ((ny - 1) / 2 - np.arange(ny)) * grid_spacing_km  # descending
    xx, yy = np.meshgrid(x, y)
    half_x, half_y = x.max() + margin_km, y.max() + margin_km
    radius = range_km if range_km is not None else min(x.max(), y.max()) + grid_spacing_km / 2
    outside = np.hypot(xx, yy) > radius

    theta0 = np.deg2rad(direction_deg if direction_deg is not None else rng.uniform(0, 360))
    turn = np.deg2rad(turn_deg_per_h)

    def wind(t_h: float) -> np.ndarray:
        th = theta0 + turn * t_h
        return speed_km_h * np.array([np.cos(th), np.sin(th)])

    def velocity(px: np.ndarray, py: np.ndarray, t_h: float) -> tuple[np.ndarray, np.ndarray]:
        u0, v0 = wind(t_h)
        return u0 - rotation_per_h * py + shear_per_h * py, v0 + rotation_per_h * px

    # cells: columns of a structured state
    cells = {k: np.empty(0) for k in ("x", "y", "age", "life", "sigma", "peak", "aspect", "angle", "expo")}
    area = (2 * half_x) * (2 * half_y)
    log_life = np.log(lifetime_median_min / 60.0)

    def step_cells(t_h: float) -> None:
        # advect (midpoint rule), age, drop dead / far-away cells, add newborns
        u, v = velocity(cells["x"], cells["y"], t_h)
        um, vm = velocity(cells["x"] + 0.5 * dt_h * u, cells["y"] + 0.5 * dt_h * v, t_h + 0.5 * dt_h)
        cells["x"] = cells["x"] + dt_h * um
        cells["y"] = cells["y"] + dt_h * vm
        cells["age"] = cells["age"] + dt_h
        keep = (cells["age"] < cells["life"]) & (np.abs(cells["x"]) < half_x) & (np.abs(cells["y"]) < half_y)
        for k in cells:
            cells[k] = cells[k][keep]
        n_new = rng.poisson(births_per_h_per_10000_km2 * area / 1e4 * dt_h)
        sigma = np.exp(rng.uniform(*np.log(cell_sigma_km), n_new))
        peak = peak_median_mm_h * (sigma / 4.0) ** -0.5 * np.exp(peak_log_sd * rng.standard_normal(n_new))
        new = {
            "x": rng.uniform(-half_x, half_x, n_new), "y": rng.uniform(-half_y, half_y, n_new),
            "age": np.zeros(n_new),
            "life": (sigma / 4.0) ** 0.5 * np.exp(log_life + 0.5 * rng.standard_normal(n_new)),
            "sigma": sigma, "peak": np.minimum(peak, peak_max_mm_h),
            "aspect": rng.uniform(1.0, max_aspect, n_new), "angle": rng.uniform(0, np.pi, n_new),
            "expo": (rng.random(n_new) < 0.5).astype(float),
        }
        for k in cells:
            cells[k] = np.concatenate([cells[k], new[k]])

    def render_cells() -> np.ndarray:
        field = np.zeros((ny, nx))
        env = np.sin(np.pi * np.clip(cells["age"] / cells["life"], 0, 1))
        for i in range(cells["x"].size):
            s = cells["sigma"][i] * (0.5 + 0.5 * env[i])
            a = cells["aspect"][i]
            reach = (7.0 if cells["expo"][i] else 4.0) * s * np.sqrt(a)  # where the profile is < 1e-3
            cx, cy = cells["x"][i], cells["y"][i]
            ix = np.nonzero(np.abs(x - cx) < reach)[0]
            iy = np.nonzero(np.abs(y - cy) < reach)[0]
            if ix.size == 0 or iy.size == 0:
                continue
            dx = x[ix][None, :] - cx
            dy = y[iy][:, None] - cy
            c, sn = np.cos(cells["angle"][i]), np.sin(cells["angle"][i])
            along, across = (c * dx + sn * dy) / (s * np.sqrt(a)), (-sn * dx + c * dy) * np.sqrt(a) / s
            r2 = along**2 + across**2
            shape = np.exp(-np.sqrt(r2)) if cells["expo"][i] else np.exp(-0.5 * r2)
            field[iy[0]:iy[-1] + 1, ix[0]:ix[-1] + 1] += cells["peak"][i] * env[i] * shape
        return field

    # texture: spectral AR(1) noise, periodic on a canvas twice the domain, shifted with the mean wind
    cy_, cx_ = 2 * ny, 2 * nx
    ky = np.fft.fftfreq(cy_, d=grid_spacing_km)[:, None]
    kx = np.fft.fftfreq(cx_, d=grid_spacing_km)[None, :]
    k = np.hypot(kx, ky)
    k[0, 0] = np.inf
    amp = k ** (-texture_beta / 2)
    amp /= np.sqrt((amp**2).sum() / (cy_ * cx_))  # unit variance in real space
    wavelength = 1.0 / k  # km; 0 for the (zero-amplitude) mean
    rho = np.exp(-timestep_minutes / np.maximum(texture_tau_min * wavelength / texture_ref_km, 1e-9))

    def white() -> np.ndarray:
        return np.fft.fft2(rng.standard_normal((cy_, cx_)))

    coef = white()
    shift = np.zeros(2)  # km travelled by the texture

    def render_texture() -> np.ndarray:
        phase = np.exp(-2j * np.pi * (kx * shift[0] - ky * shift[1]))  # y axis points up, rows go down
        z = np.fft.ifft2(coef * amp * phase).real[:ny, :nx]
        return np.exp(texture_sd * z - 0.5 * texture_sd**2)

    times = pd.Timestamp(start) + pd.to_timedelta(np.arange(n_frames) * timestep_minutes, unit="min")
    t_h = -spinup_hours
    for _ in range(int(round(spinup_hours / dt_h))):
        step_cells(t_h)
        t_h += dt_h
    t_h = -dt_h  # the state now is the start of frame 0's interval

    def rate() -> np.ndarray:
        r = render_cells() * render_texture()
        r[r < min_rate_mm_h] = 0.0
        return r

    previous = rate()
    missing = set(int(i) for i in missing)
    paths = []
    attrs = {"Conventions": "CF-1.8", "title": "synthetic radar rain accumulation (climateml)",
             "source": "climateml.data.synthetic.radar, seed %d" % seed}
    for i in tqdm(range(n_frames), desc="radar frames", disable=not progress):
        wx, wy = wind(t_h + 0.5 * dt_h)
        shift += np.array([wx, wy]) * dt_h
        coef = rho * coef + np.sqrt(1 - rho**2) * white()
        step_cells(t_h)
        t_h += dt_h
        current = rate()
        amount = (0.5 * (previous + current) * dt_h).astype(np.float32)
        previous = current
        if i in missing:
            continue
        amount[outside] = np.nan
        valid = times[i]
        ds = xr.Dataset(
            {
                "precipitation_amount": (("y", "x"), amount, {
                    "standard_name": "precipitation_amount", "long_name": "rain accumulated over the interval",
                    "units": "kg m-2", "grid_mapping": "projection",
                    "cell_methods": f"time: sum (interval: {timestep_minutes:g} minutes)"}),
                "valid_time": ((), np.datetime64(valid, "ns"), {"standard_name": "time",
                                                                "long_name": "end of accumulation interval"}),
                "start_time": ((), np.datetime64(valid - pd.Timedelta(minutes=timestep_minutes), "ns"),
                               {"long_name": "start of accumulation interval"}),
                "projection": ((), np.int32(0), {
                    "grid_mapping_name": "azimuthal_equidistant", "latitude_of_projection_origin": 52.0,
                    "longitude_of_projection_origin": 5.0, "false_easting": 0.0, "false_northing": 0.0}),
            },
            coords={
                "x": ("x", x, {"standard_name": "projection_x_coordinate", "units": "km", "axis": "X"}),
                "y": ("y", y, {"standard_name": "projection_y_coordinate", "units": "km", "axis": "Y"}),
            },
            attrs=attrs,
        )
        for name in ("valid_time", "start_time"):
            ds[name].encoding.update(units="seconds since 1970-01-01 00:00:00", calendar="standard", dtype="int64")
        ds["precipitation_amount"].encoding.update(zlib=True, complevel=1, _FillValue=np.float32(np.nan))
        paths.append(write_dataset(ds, out_dir / valid.strftime(FILE_PATTERN)))
    return paths
