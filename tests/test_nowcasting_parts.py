"""Radar nowcasting building blocks: sample archive, reader, windows, transforms, extrapolation, scores."""

from __future__ import annotations

import gc
import importlib.util
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from climateml.data.io import DataError
from climateml.data.normalize import Moments
from climateml.data.radar import RadarReader, open_radar
from climateml.data.synthetic.radar import generate_radar
from climateml.data.windows import time_step, window_starts
from climateml.metrics.categorical import contingency, csi, far, fss, fss_components, fss_scales_km, pod
from climateml.models.extrapolation import advect, estimate_motion, optical_flow_nowcast, persistence
from climateml.models.rain_transform import RainTransform
from radar_files import radar_frame

START = "2024-06-01T00:00"


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """60 frames of 64 x 64 km at 1 km, frames 20 and 21 missing."""
    out = tmp_path_factory.mktemp("radar")
    paths = generate_radar(out, n_frames=60, missing=(20, 21), progress=False)
    return out, paths


# ------------------------------------------------------------------------------------------ generator
def test_generator_writes_cf_frames(archive):
    out, paths = archive
    assert len(paths) == 58 and sorted(p.name for p in out.glob("*.nc")) == [p.name for p in paths]
    assert paths[0].name == "RAD_202406010000.nc" and not (out / "RAD_202406010140.nc").exists()  # frame 20
    ds = xr.open_dataset(paths[1])
    amount = ds["precipitation_amount"]
    assert amount.dims == ("y", "x") and amount.attrs["units"] == "kg m-2"
    assert amount.attrs["standard_name"] == "precipitation_amount"
    assert ds["y"].attrs["units"] == "km" and ds["y"].values[0] > ds["y"].values[-1]
    assert ds["valid_time"].values == np.datetime64("2024-06-01T00:05")
    assert ds["valid_time"].values - ds["start_time"].values == np.timedelta64(5, "m")
    assert np.isnan(amount.values[0, 0]) and np.isfinite(amount.values[32, 32])  # corner beyond range
    assert 0.14 < float(np.isnan(amount.values).mean()) < 0.30  # 1 - pi/4 of the square outside the circle


def test_generator_statistics_and_determinism(archive, tmp_path):
    _, paths = archive
    rate = np.stack([xr.open_dataset(p)["precipitation_amount"].values for p in paths]) * 12.0  # mm/h
    values = rate[np.isfinite(rate)]
    dry = float((values < 0.1).mean())
    assert 0.65 < dry < 0.95, dry
    wet = values[values >= 0.1]
    assert wet.max() > 8 * np.median(wet) and np.percentile(wet, 99) > 4 * np.median(wet)  # skewed
    again = generate_radar(tmp_path, n_frames=3, missing=(), progress=False)
    np.testing.assert_array_equal(xr.open_dataset(again[2])["precipitation_amount"].values,
                                  xr.open_dataset(paths[2])["precipitation_amount"].values)


@pytest.mark.parametrize("direction, expected", [(0.0, (2.5, 0.0)), (90.0, (0.0, -2.5))])
def test_generator_motion_is_recovered(tmp_path, direction, expected):
    """30 km/h at 1 km and 5 min is 2.5 cells per step; northward is up the rows (y descends)."""
    paths = generate_radar(tmp_path, n_frames=12, missing=(), direction_deg=direction, turn_deg_per_h=0.0,
                           rotation_per_h=0.0, shear_per_h=0.0, births_per_h_per_10000_km2=10.0,
                           lifetime_median_min=240.0, progress=False)
    rain = open_radar(paths, "precipitation_amount").values
    flows = estimate_motion(np.stack([rain[i:i + 4] for i in range(0, 8, 2)]))  # 4 samples
    median = np.median(flows[..., 12:-12, 12:-12], axis=(0, 2, 3))
    # growth, decay and texture renewal are not advection: a convention check (speed, sign), not accuracy
    assert np.abs(median - np.array(expected)).max() < 0.5, median


# ------------------------------------------------------------------------------------------ reader
def test_open_radar_converts_accumulation_lazily(archive):
    out, paths = archive
    rain = open_radar(out, "precipitation_amount")
    assert rain.dims == ("time", "y", "x") and rain.sizes["time"] == 58 and rain.chunks is not None
    assert rain.attrs["units"] == "mm h-1" and rain["y"].values[0] > rain["y"].values[-1]
    frame = xr.open_dataset(paths[30])["precipitation_amount"].values
    np.testing.assert_allclose(rain.isel(time=30).values, frame * 12.0, rtol=1e-6)
    assert time_step(rain["time"]) == np.timedelta64(5, "m")
    by_glob = open_radar(str(out / "RAD_2024060100*.nc"), "precipitation_amount", check_nan=False)
    by_list = open_radar(paths[:12], "precipitation_amount", check_nan=False)
    assert by_glob.sizes["time"] == by_list.sizes["time"] == 12
    np.testing.assert_array_equal(by_glob.values, by_list.values)


def test_reader_reads_frames_parts_and_caches_within_budget(archive):
    out, paths = archive
    direct = RadarReader(out, "precipitation_amount", cache_mb=0, max_open_files=4)
    assert len(direct) == 58 and direct.shape == (58, 64, 64) and direct.path(20) == paths[20]
    frame = xr.open_dataset(paths[20])["precipitation_amount"].values * 12.0
    np.testing.assert_allclose(direct.read(20), frame, rtol=1e-6)
    np.testing.assert_allclose(direct.read(20, slice(10, 30), slice(5, 9)), frame[10:30, 5:9], rtol=1e-6)
    for k in range(10):
        direct.read(k)
    assert len(direct._files) == 4  # least recently used files closed
    budget = 64 * 64 * 4 * 5 / 2**20  # five frames
    cached = RadarReader(out, "precipitation_amount", cache_mb=budget)
    np.testing.assert_array_equal(cached.read_frames(range(12)), direct.read_frames(range(12)))
    assert len(cached._cache) == 5 and cached._cached_bytes <= budget * 2**20
    part = cached.read(11, slice(30, 33), slice(30, 33))
    part[:] = -1.0  # a copy: the cache is not changed through it
    np.testing.assert_array_equal(cached.read(11)[30:33, 30:33], direct.read(11)[30:33, 30:33])


def test_reader_is_safe_from_many_threads(archive):
    """dask's threaded scheduler reads frames from several threads at once; netCDF4/HDF5 is not thread-safe,
    and with one open file allowed every read also closes another thread's file. Reads must still be right."""
    from concurrent.futures import ThreadPoolExecutor

    out, _ = archive
    reference = RadarReader(out, "precipitation_amount").read_frames(range(58))
    for cache_mb in (0.0, 0.05):
        shared = RadarReader(out, "precipitation_amount", max_open_files=1, cache_mb=cache_mb)
        order = np.random.default_rng(0).integers(0, 58, size=600)
        with ThreadPoolExecutor(8) as pool:
            frames = list(pool.map(shared.read, order))
        for k, frame in zip(order, frames):
            np.testing.assert_array_equal(frame, reference[k])
        assert len(shared._files) == 1 and shared._cached_bytes <= shared.cache_bytes
        with ThreadPoolExecutor(4) as pool:  # opening an archive (reading every file's header) while others read
            work = [(lambda: len(RadarReader(out, "precipitation_amount"))) if i % 50 == 0 else
                    (lambda k=int(k): float(np.nansum(shared.read(k)))) for i, k in enumerate(order[:300])]
            done = list(pool.map(lambda f: f(), work))
        for i, (k, value) in enumerate(zip(order[:300], done)):
            assert value == (58 if i % 50 == 0 else pytest.approx(float(np.nansum(reference[k]))))
    lazy = open_radar(out, "precipitation_amount").chunk({"time": 1})
    np.testing.assert_array_equal(lazy.compute(scheduler="threads", num_workers=8).values, reference)


def _open_files_under(folder) -> int:
    fds = Path("/proc/self/fd")
    return sum(str(os.path.realpath(fd)).startswith(str(folder)) for fd in fds.iterdir()) if fds.exists() else 0


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="counts open files through /proc")
def test_dropped_reader_closes_its_files(tmp_path):
    """A reader keeps at most max_open_files open; one that is dropped closes its open files at once (not at
    some later read), so the archive's files can be rewritten or deleted; a reader closed explicitly too."""
    paths = generate_radar(tmp_path, n_frames=6, ny=8, nx=8, missing=(), progress=False)
    before = _open_files_under(tmp_path)
    bounded = RadarReader(tmp_path, "precipitation_amount", max_open_files=2)
    bounded.read_frames(range(6))
    assert _open_files_under(tmp_path) - before == 2  # the least recently used ones closed
    reader = RadarReader(tmp_path, "precipitation_amount")
    reader.read_frames(range(6))
    assert _open_files_under(tmp_path) - before == 6
    del reader, bounded
    gc.collect()
    assert _open_files_under(tmp_path) == before
    rain = open_radar(tmp_path, "precipitation_amount")
    rain.values  # reads every frame through a reader held by the dask graph
    del rain
    gc.collect()
    assert _open_files_under(tmp_path) == before
    xr.Dataset({"x": ("t", [1.0])}).to_netcdf(paths[0], mode="w")  # the file can be replaced


def test_file_damaged_after_opening_is_one_error_naming_it(tmp_path):
    """The reader opens a file at its first read (xarray's file manager): a file truncated after the archive was
    opened is a DataError naming it; the other files still read."""
    paths = generate_radar(tmp_path, n_frames=3, ny=8, nx=8, missing=(), progress=False)
    reader = RadarReader(tmp_path, "precipitation_amount")
    paths[1].write_bytes(paths[1].read_bytes()[:100])
    with pytest.raises(DataError, match=rf"{paths[1].name}: cannot be read .*readable when the archive was opened"):
        reader.read(1)
    assert reader.read(2).shape == (8, 8)


def _single_file(tmp_path, values, attrs, name="rain", times=None, suffix=".nc", **extra):
    times = pd.date_range(START, periods=values.shape[0], freq="10min") if times is None else times
    ds = xr.Dataset({name: (("time", "lat", "lon"), values, attrs), **extra},
                    coords={"time": times, "lat": [50.2, 50.1], "lon": [4.0, 4.1, 4.2]})
    path = tmp_path / f"archive{suffix}"
    ds.to_zarr(path) if suffix == ".zarr" else ds.to_netcdf(path)
    return path


@pytest.mark.parametrize("attrs, factor", [
    ({"units": "mm h-1"}, 1.0),
    ({"units": "mm/h"}, 1.0),
    ({"units": "kg m-2 s-1", "standard_name": "rainfall_flux"}, 3600.0),
    ({"units": "mm"}, 6.0),                                       # 10-min archive step -> x 6
    ({"units": "m", "standard_name": "lwe_thickness_of_precipitation_amount"}, 6000.0),
])
def test_open_radar_units(tmp_path, attrs, factor):
    values = np.arange(24, dtype=np.float32).reshape(4, 2, 3) / 10
    rain = open_radar(_single_file(tmp_path, values, attrs), "rain")
    assert rain.dims == ("time", "lat", "lon")
    np.testing.assert_allclose(rain.values, values * factor, rtol=1e-6)


def test_open_radar_reflectivity_and_zarr(tmp_path):
    rate = np.array([0.5, 1.0, 10.0, 50.0, 2.0, 3.0], dtype=np.float64).reshape(1, 2, 3).repeat(3, 0)
    dbz = 10 * np.log10(200.0 * rate**1.6)                           # Marshall-Palmer
    assert abs(dbz[0, 0, 2] - 39.0103) < 1e-3                        # 10 mm/h is 39.01 dBZ
    path = _single_file(tmp_path, dbz.astype(np.float32), {"units": "dBZ"}, suffix=".zarr")
    np.testing.assert_allclose(open_radar(path, "rain").values, rate, rtol=1e-4)
    other = open_radar(path, "rain", zr_a=300.0, zr_b=1.4).values
    np.testing.assert_allclose(other, (200.0 * rate**1.6 / 300.0) ** (1 / 1.4), rtol=1e-4)


def test_open_radar_accumulation_interval_from_start_time(tmp_path):
    values = np.ones((2, 2, 3), np.float32)  # 1 mm per frame
    times = pd.date_range(START, periods=2, freq="10min")
    start = ("time", (times - pd.Timedelta("15min")).values)   # 15-min accumulations every 10 min
    rain = open_radar(_single_file(tmp_path, values, {"units": "kg m-2"}, times=times, start_time=start), "rain")
    np.testing.assert_allclose(rain.values, 4.0)
    assert open_radar(tmp_path / "archive.nc", "rain").attrs["time_step_minutes"] == 10.0


@pytest.mark.parametrize("case, message", [
    ("unsorted", "earlier than the previous frame"),
    ("duplicated", "is duplicated"),
    ("grid", "grid differs"),
    ("dims", "has dims ('time', 'level', 'y', 'x')"),
    ("variable", "variable 'precipitation_amount' is missing"),
    ("all_nan", "NaN everywhere"),
    ("units", "has units 'furlongs'"),
])
def test_open_radar_errors_name_the_file(tmp_path, case, message):
    a = radar_frame(tmp_path / "a.nc", "2024-06-01T00:05")
    kwargs = {}
    if case == "unsorted":
        b = radar_frame(tmp_path / "b.nc", "2024-06-01T00:00")
    elif case == "duplicated":
        b = radar_frame(tmp_path / "b.nc", "2024-06-01T00:05")
    elif case == "grid":
        b = radar_frame(tmp_path / "b.nc", "2024-06-01T00:10", x=np.arange(3.0) + 0.5)
    elif case == "dims":
        b = radar_frame(tmp_path / "b.nc", "2024-06-01T00:10", extra_dim=True)
    elif case == "variable":
        b = radar_frame(tmp_path / "b.nc", "2024-06-01T00:10", var="rain")
    elif case == "all_nan":
        b = radar_frame(tmp_path / "b.nc", "2024-06-01T00:10", values=np.full((2, 3), np.nan, np.float32))
    else:
        b = radar_frame(tmp_path / "b.nc", "2024-06-01T00:10", units="furlongs")
    with pytest.raises(DataError, match="b.nc") as err:
        open_radar([a, b], "precipitation_amount", **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_time_step_and_windows():
    t = pd.date_range(START, periods=12, freq="5min").delete([5])  # frame 5 missing
    assert time_step(t) == np.timedelta64(5, "m")
    # 3 + 2 frames at 0, 5, ... 55 min without 25: windows start at 0, 30 and 35 min (index 0, 5, 6)
    np.testing.assert_array_equal(window_starts(t, 3, 2), [0, 5, 6])
    # period 00:00 .. 00:35 holds times 0-4 and 6-7: only the window 0..4 fits
    np.testing.assert_array_equal(window_starts(t, 3, 2, start=START, end="2024-06-01T00:35"), [0])
    np.testing.assert_array_equal(window_starts(t, 2, 1, start="2024-06-01T00:30"), [5, 6, 7, 8])
    with pytest.raises(DataError, match="consecutive frames"):
        window_starts(t, 3, 2, start="2024-06-01T00:15", end="2024-06-01T00:40")


# ------------------------------------------------------------------------------------------ transforms
def test_rain_transform_values_and_state():
    rain = np.array([0.0, 0.05, 0.1, 1.0, 10.0, np.nan], np.float32)
    dbr = RainTransform("dBR")
    np.testing.assert_allclose(dbr(rain), [-15, -15, -10, 0, 10, np.nan], atol=1e-5)
    np.testing.assert_allclose(dbr.inverse(dbr(rain)), [0, 0, 0.1, 1, 10, np.nan], rtol=1e-5)
    assert isinstance(dbr(rain), np.ndarray) and dbr(rain).dtype == np.float32
    log = RainTransform("log1p").fit(rain)
    g = np.log1p(rain[:5].astype(np.float64))
    assert abs(float(log.mean) - g.mean()) < 1e-9 and abs(float(log.std) - g.std()) < 1e-9
    restored = RainTransform("log1p")
    restored.load_state_dict(log.state_dict())
    x = torch.tensor([[0.0, 3.0], [20.0, 0.2]])
    torch.testing.assert_close(restored(x), (torch.log1p(x) - g.mean()) / g.std(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(restored.inverse(restored(x)), x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(RainTransform("none").fit(rain)(rain)[:5], (rain[:5] - rain[:5].mean()) / rain[:5].std(), rtol=1e-5)


def test_rain_transform_moments_merged_per_frame_equal_one_pass_over_all():
    """Per-frame moments (what the nowcasting DataModule keeps), merged in any order, give numpy's mean and population
    std of every finite value at once, also for a mean a million times the spread (where sum and sum of squares
    lose the variance: float64 has 16 digits, mean^2 ~ 1e12 against a variance ~ 1)."""
    rng = np.random.default_rng(0)
    frames = 1e6 + rng.gamma(0.5, 2.0, (7, 9, 11))
    frames[2, :3] = np.nan
    t = RainTransform("none")
    states = [t.moments(f).state() for f in frames]
    values = frames[np.isfinite(frames)]
    for order in (range(7), [6, 0, 5, 1, 4, 2, 3]):
        total = Moments(1)
        for k in order:
            total.merge(states[k])
        t.fit_moments(total)
        assert total.count == values.size
        assert float(t.mean) == pytest.approx(values.mean(), rel=1e-14)
        assert float(t.std) == pytest.approx(values.std(), rel=1e-9)
    with pytest.raises(DataError, match="no or constant data"):
        t.fit_moments(t.moments(np.full(5, np.nan)))


def test_rain_transform_fits_lazy_dataarray(archive):
    rain = open_radar(archive[0], "precipitation_amount", check_nan=False)
    t = RainTransform("dBR").fit(rain)
    v = rain.values
    g = np.where(v >= 0.1, 10 * np.log10(np.maximum(v, 0.1)), -15.0)[np.isfinite(v)]
    assert abs(float(t.mean) - g.mean()) < 1e-4 and abs(float(t.std) - g.std()) < 1e-3


# ------------------------------------------------------------------------------------------ extrapolation
def _translating(u: float, v: float, n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """Rain-like frames (n, size, size) [mm/h] of a random pattern moving u columns and v rows per step."""
    big = 2 * size
    rng = np.random.default_rng(seed)
    f = np.fft.fftfreq(big)
    k = np.hypot(f[:, None], f[None, :])
    k[0, 0] = 1.0
    spectrum = np.fft.fft2(rng.standard_normal((big, big))) * k**-1.5 * (k < 0.25)
    frames = []
    for t in range(n):
        z = np.fft.ifft2(spectrum * np.exp(-2j * np.pi * (f[None, :] * u * t + f[:, None] * v * t))).real
        z = (z - z.mean()) / z.std()
        frames.append((np.exp(z) * (z > 0.3))[size // 2:size // 2 + size, size // 2:size // 2 + size])
    return np.stack(frames).astype(np.float32)


def test_motion_of_translated_field():
    u, v = 1.7, -0.8
    flow = estimate_motion(_translating(u, v, 4))
    inner = flow[:, 8:-8, 8:-8]
    error = np.hypot(inner[0] - u, inner[1] - v)
    assert np.abs(inner.mean(axis=(1, 2)) - [u, v]).max() < 0.05
    assert np.sqrt((error**2).mean()) < 0.2 and np.percentile(error, 95) < 0.3


def test_advection_moves_a_blob():
    rows, cols = np.mgrid[0:48, 0:48]
    blob = np.exp(-((cols - 20.0) ** 2 + (rows - 24.0) ** 2) / (2 * 3.0**2))
    flow = np.broadcast_to(np.array([1.5, -2.0])[:, None, None], (2, 48, 48))
    out = advect(blob, flow, 3, fill_value=0.0)
    assert out.shape == (3, 48, 48)
    for k, field in enumerate(out, start=1):
        total = field.sum()
        assert abs((field * cols).sum() / total - (20 + 1.5 * k)) < 0.05
        assert abs((field * rows).sum() / total - (24 - 2.0 * k)) < 0.05
    edge = advect(blob, flow, 1)[0]  # fill NaN: cells whose departure point is outside the grid
    assert np.isnan(edge[:, 0]).all() and np.isnan(edge[-2:, :]).all() and np.isfinite(edge[10:40, 5:40]).all()


def test_nowcast_beats_persistence_and_is_batched():
    frames = np.stack([_translating(2.0, 1.0, 8, seed=s) for s in (1, 2)])  # (sample, time, y, x)
    past, future = frames[:, :4], frames[:, 4:]
    nowcast = optical_flow_nowcast(past, 4)
    still = persistence(past, 4)
    assert nowcast.shape == still.shape == (2, 4, 64, 64)
    np.testing.assert_array_equal(still[:, 2], past[:, -1])
    ok = np.isfinite(nowcast)
    mae_flow, mae_still = np.abs(nowcast - future)[ok].mean(), np.abs(still - future)[ok].mean()
    assert mae_flow < 0.4 * mae_still, (mae_flow, mae_still)
    np.testing.assert_allclose(optical_flow_nowcast(past[1], 4), nowcast[1], atol=1e-5)
    times = pd.date_range(START, periods=4, freq="5min")
    da = xr.DataArray(past[0], dims=("time", "y", "x"), coords={"time": times, "y": np.arange(64.0)[::-1]})
    out = optical_flow_nowcast(da, 2)
    assert out.dims == ("lead_time", "y", "x") and out["time"].values == times[-1]
    assert list(out["lead_time"].values) == [np.timedelta64(5, "m"), np.timedelta64(10, "m")]
    assert persistence(torch.as_tensor(past), 3).shape == (2, 3, 64, 64)


@pytest.mark.skipif(importlib.util.find_spec("pysteps") is None, reason="pysteps is not installed")
def test_nowcast_agrees_with_pysteps():
    frames = _translating(1.5, -1.0, 7, seed=3)
    past, future = frames[:4], frames[4:]
    ours = optical_flow_nowcast(past, 3)
    theirs = optical_flow_nowcast(past, 3, method="pysteps")
    ok = np.isfinite(ours) & np.isfinite(theirs)
    assert np.abs(ours - theirs)[ok].mean() < 0.25 * np.abs(persistence(past, 3) - future)[ok].mean()
    from climateml.models.extrapolation import pysteps_motion_field
    theirs_flow = pysteps_motion_field(past)[:, 8:-8, 8:-8].mean(axis=(1, 2))
    np.testing.assert_allclose(estimate_motion(past)[:, 8:-8, 8:-8].mean(axis=(1, 2)), theirs_flow, atol=0.2)


# ------------------------------------------------------------------------------------------ scores
def _fields():
    pred = xr.DataArray([[[0.0, 2.0, 5.0], [1.0, np.nan, 0.5]], [[3.0, 0.0, 0.0], [0.0, 1.0, 1.0]]],
                        dims=("time", "y", "x"))
    obs = xr.DataArray([[[1.0, 0.0, 4.0], [1.0, 2.0, 0.0]], [[0.0, 0.0, np.nan], [2.0, 1.0, 0.2]]],
                       dims=("time", "y", "x"))
    return pred, obs


def test_contingency_by_hand():
    pred, obs = _fields()
    # threshold 1 (event: >= 1). t0: hits (0,2),(1,0); misses (0,0); false alarms (0,1); NaN at (1,1) dropped;
    # correct negatives (1,2). t1: hits (1,1); misses (1,0); false alarm (0,0),(1,2); NaN (0,2); cn (0,1)
    table = contingency(pred, obs, 1.0)
    assert [int(table[k]) for k in ("hits", "misses", "false_alarms", "correct_negatives")] == [3, 2, 3, 2]
    per_time = contingency(pred, obs, 1.0, dim=("y", "x"))
    assert per_time["hits"].values.tolist() == [2, 1] and per_time["false_alarms"].values.tolist() == [1, 2]
    assert abs(float(csi(pred, obs, 1.0)) - 3 / 8) < 1e-12
    assert abs(float(pod(pred, obs, 1.0)) - 3 / 5) < 1e-12
    assert abs(float(far(pred, obs, 1.0)) - 3 / 6) < 1e-12
    np.testing.assert_allclose(csi(pred, obs, 1.0, dim=["y", "x"]).values, [2 / 4, 1 / 4])
    assert np.isnan(float(csi(pred, obs, 100.0))) and np.isnan(float(pod(pred, obs, 100.0)))


def test_categorical_matches_scores_package():
    categorical = pytest.importorskip("scores.categorical")
    rng = np.random.default_rng(1)
    pred = xr.DataArray(rng.gamma(0.4, 2.0, (5, 20, 24)), dims=("time", "y", "x"))
    obs = xr.DataArray(rng.gamma(0.4, 2.0, (5, 20, 24)), dims=("time", "y", "x"))
    obs[0, :3, :3] = np.nan
    for threshold in (0.5, 2.0):
        manager = categorical.ThresholdEventOperator(default_event_threshold=threshold).make_contingency_manager(
            pred, obs).transform(preserve_dims="time")
        np.testing.assert_allclose(csi(pred, obs, threshold, dim=("y", "x")), manager.critical_success_index())
        np.testing.assert_allclose(pod(pred, obs, threshold, dim=("y", "x")), manager.probability_of_detection())
        np.testing.assert_allclose(far(pred, obs, threshold, dim=("y", "x")), manager.false_alarm_ratio())


def test_fss_by_hand():
    pred = xr.DataArray(np.zeros((3, 3)), dims=("y", "x"))
    obs = pred.copy()
    pred[1, 1], obs[1, 2] = 1.0, 1.0
    assert float(fss(pred, obs, 1.0, 1)) == 0.0                       # no overlap at grid scale
    assert abs(float(fss(pred, obs, 1.0, 3, boundary="valid")) - 1.0) < 1e-12  # one window, both 1/9
    # constant boundary: fp = 1/9 in all 9 windows, fo = 1/9 in the 6 windows of columns 1-2
    assert abs(float(fss(pred, obs, 1.0, 3)) - (1 - 3 / 15)) < 1e-12
    assert np.isnan(float(fss(pred * 0, obs * 0, 1.0, 3)))
    assert fss_scales_km([1, 5, 10, 20], 1.0) == [1, 5, 11, 21]
    assert fss_scales_km([5, 10, 20], 2.0) == [3, 5, 11] and fss_scales_km([5, 9], 2.0, odd=False) == [3, 5]


def test_fss_against_scipy_and_scores():
    ndimage = pytest.importorskip("scipy.ndimage")
    spatial = pytest.importorskip("scores.spatial")
    rng = np.random.default_rng(2)
    pred = xr.DataArray(rng.gamma(0.5, 2.0, (3, 30, 40)), dims=("time", "y", "x"))
    obs = xr.DataArray(rng.gamma(0.5, 2.0, (3, 30, 40)), dims=("time", "y", "x"))
    for scale in (1, 4, 9):
        fp = ndimage.uniform_filter((pred.values >= 1.0).astype(float), size=(1, scale, scale), mode="constant")
        fo = ndimage.uniform_filter((obs.values >= 1.0).astype(float), size=(1, scale, scale), mode="constant")
        expected = 1 - ((fp - fo) ** 2).sum() / (fp**2 + fo**2).sum()
        assert abs(float(fss(pred, obs, 1.0, scale)) - expected) < 1e-12
        theirs = spatial.fss_2d(pred, obs, event_threshold=1.0, window_size=(scale, scale), spatial_dims=("y", "x"),
                                reduce_dims=["time"], threshold_operator=np.greater_equal)
        assert abs(float(fss(pred, obs, 1.0, scale, boundary="valid")) - float(theirs)) < 1e-10
    per_time = fss(pred, obs, 1.0, 5, dim=[])
    assert per_time.dims == ("time",)
    parts = fss_components(pred, obs, 1.0, 5, dim=[])
    whole = 1 - parts["mse"].sum() / parts["reference"].sum()
    assert abs(float(whole) - float(fss(pred, obs, 1.0, 5))) < 1e-12


def test_fss_excludes_nan_cells():
    pred = xr.DataArray(np.ones((6, 6)), dims=("y", "x"))
    obs = pred.copy()
    obs[0, :] = np.nan
    pred[0, :] = 0.0
    # row 0 is a non-event in both and is no window centre: the rest agrees exactly
    assert abs(float(fss(pred, obs, 0.5, 3)) - 1.0) < 1e-12
    assert abs(float(fss(pred, obs, 0.5, 3, boundary="valid")) - 1.0) < 1e-12
