"""ODIM HDF5 composites through the radar reader and the nowcasting DataModule (files written with h5py in the
ODIM_H5 layout in a temporary folder), radar outages (all-NaN frames, cells missing in some frames), and the
nowcast model's optical-flow base: zero correction at the start, the correction gate, the rain cap."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from climateml.data.base import TensorDictDataset, batched_collate
from climateml.data.io import DataError
from climateml.data.nowcasting import NowcastingDataModule
from climateml.data.odim import write_odim
from climateml.data.radar import RadarReader
from climateml.data.synthetic.radar import generate_radar
from climateml.evaluation.nowcasting import NowcastEvaluation
from climateml.models.extrapolation import optical_flow_nowcast
from climateml.models.nowcasting import NowcastModel

DAY = "2024-06-01"
T0 = pd.Timestamp(f"{DAY}T00:00")


def _raw(seed: int, ny: int = 6, nx: int = 5) -> np.ndarray:
    """uint8 raw values with nodata (255) in the first row and undetect (0) in the last column."""
    raw = np.random.default_rng(seed).integers(1, 200, (ny, nx)).astype(np.uint8)
    raw[0, :] = 255
    raw[1:, -1] = 0
    return raw


def _odim_archive(folder: Path, n: int = 4, **kw) -> list[Path]:
    """``n`` RATE frames every 5 min (gain 0.1 mm/h, offset 0), QIND in dataset1 and RATE in dataset2."""
    return [write_odim(folder / f"T_PAAH21_{(T0 + pd.Timedelta(minutes=5 * i)):%Y%m%d%H%M}.h5", _raw(i),
                       T0 + pd.Timedelta(minutes=5 * i), quantity="QIND", gain=0.1,
                       extra_quantities={"RATE": _raw(i)}, **kw) for i in range(n)]


# ------------------------------------------------------------------------------------------ ODIM reader
def test_odim_rate_scaling_nodata_undetect_grid_and_time(tmp_path):
    paths = _odim_archive(tmp_path / "odim", xscale=2000.0, yscale=2000.0)
    reader = RadarReader(tmp_path / "odim", "RATE")
    assert reader.shape == (4, 6, 5) and reader.spatial == ("y", "x")
    np.testing.assert_array_equal(reader.times, (T0 + pd.to_timedelta(np.arange(4) * 5, "min")).values)
    np.testing.assert_allclose(reader.coords["x"].values, [1.0, 3.0, 5.0, 7.0, 9.0])     # km, cell centres
    np.testing.assert_allclose(reader.coords["y"].values, [11.0, 9.0, 7.0, 5.0, 3.0, 1.0])  # row 0 is north
    assert "+proj=aeqd" in reader.coords["x"].attrs["projdef"]
    frame, raw = reader.read(2), _raw(2)
    assert np.isnan(frame[0]).all()                       # nodata: outside the radar's range
    assert (frame[1:, -1] == 0).all()                     # undetect: dry
    np.testing.assert_allclose(frame[1:, :-1], raw[1:, :-1] * np.float32(0.1), rtol=1e-6)
    np.testing.assert_allclose(reader.read(2, slice(2, 4), slice(1, 3)), frame[2:4, 1:3])
    assert paths[0].name in str(reader.path(0))


@pytest.mark.parametrize("quantity, gain, offset, expected", [
    ("DBZH", 0.5, -32.0, lambda dbz: (10 ** (dbz / 10) / 200.0) ** (1 / 1.6)),   # Marshall-Palmer
    ("ACRR", 0.01, 0.0, lambda mm: mm * 4.0),                                      # mm over 15 min -> mm/h
])
def test_odim_reflectivity_and_accumulation_become_mm_h(tmp_path, quantity, gain, offset, expected):
    raw = _raw(0)
    write_odim(tmp_path / "a.h5", raw, T0, quantity=quantity, gain=gain, offset=offset, accumulation_minutes=15,
               scaling_in_data_group=True)
    frame = RadarReader(tmp_path / "a.h5", quantity).read(0)
    physical = raw.astype(np.float64) * gain + offset
    np.testing.assert_allclose(frame[1:, :-1], expected(physical[1:, :-1]), rtol=1e-5)
    assert np.isnan(frame[0]).all() and (frame[1:, -1] == 0).all()   # undetect is dry, not 0 dBZ's rain


def test_odim_float_data_with_nan_is_read_as_it_is(tmp_path):
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    values[1, 2] = np.nan
    write_odim(tmp_path / "f.hdf", values, T0, quantity="RATE", nodata=-9999000.0, undetect=-8888000.0)
    np.testing.assert_array_equal(RadarReader(tmp_path / "f.hdf", "RATE").read(0), values)


@pytest.mark.parametrize("case, message", [
    ("quantity", "no dataset with quantity 'RATE'; the file has ['QIND', 'DBZH']"),
    ("truncated", "cannot be read as ODIM HDF5, the file looks corrupt or truncated"),
    ("grid", "grid differs from"),
    ("cellsize", "grid differs from"),
])
def test_odim_bad_input_is_one_clear_error_naming_the_file(tmp_path, case, message):
    folder = tmp_path / "odim"
    paths = _odim_archive(folder)
    bad = paths[2]
    if case == "quantity":
        write_odim(bad, _raw(2), T0 + pd.Timedelta(minutes=10), quantity="QIND", extra_quantities={"DBZH": _raw(2)})
    elif case == "truncated":
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    elif case == "grid":   # same size and cells, another place
        write_odim(bad, _raw(2), T0 + pd.Timedelta(minutes=10), quantity="RATE",
                   corners={"LL_lon": 3.0, "LL_lat": 50.0, "UR_lon": 4.0, "UR_lat": 51.0})
    else:
        write_odim(bad, _raw(2), T0 + pd.Timedelta(minutes=10), quantity="RATE", xscale=500.0)
    with pytest.raises(DataError) as err:
        RadarReader(folder, "RATE")
    text = str(err.value)
    assert bad.name in text and message in text and "\n" not in text, text


def test_odim_archive_through_the_datamodule_workers_and_threads(tmp_path):
    """Windows, region, lazy reads in DataLoader workers (same batches as in-process) and from many threads."""
    folder = tmp_path / "odim"
    for i in range(16):
        t = T0 + pd.Timedelta(minutes=5 * i)
        raw = np.roll(_raw(0, 12, 12), i, axis=1)
        write_odim(folder / f"{t:%Y%m%d%H%M}.h5", raw, t, quantity="RATE", gain=0.1)
    periods = {"train_period": [f"{DAY}T00:00", f"{DAY}T00:30"], "val_period": [f"{DAY}T00:35", f"{DAY}T00:55"],
               "test_period": [f"{DAY}T01:00", f"{DAY}T01:15"]}
    batches = []
    for workers in (0, 2):
        dm = NowcastingDataModule(str(folder), "RATE", n_in=2, n_out=2, batch_size=2, num_workers=workers,
                                  region={"y": [2, 9], "x": [0, 6]}, **periods)
        dm.setup()
        batches.append(next(iter(dm.val_dataloader())))
    assert dm.spec.input_shape == (2, 7, 6)   # y 8.5 .. 2.5 km (rows 3-9) and x 0.5 .. 5.5 km (columns 0-5)
    for key in ("x", "y"):
        torch.testing.assert_close(batches[0][key], batches[1][key], equal_nan=True)
    full = RadarReader(folder, "RATE")
    np.testing.assert_array_equal(batches[0]["x"][0, 0].numpy(), full.read(int(dm.starts["val"][0]))[3:10, 0:6])
    reader = RadarReader(folder, "RATE", cache_mb=0)
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(reader.read, [k % 16 for k in range(48)]))
    np.testing.assert_array_equal(np.stack(threaded[:16]), full.read_frames(range(16)))


# ------------------------------------------------------------------------------------------ outages
@pytest.fixture(scope="module")
def outage_dir(tmp_path_factory) -> Path:
    """24 frames (5 min, 16 x 16 km), frame 9 NaN everywhere (an outage), a strip of cells missing in 12-13."""
    out = tmp_path_factory.mktemp("outage")
    generate_radar(out, n_frames=24, ny=16, nx=16, missing=(), births_per_h_per_10000_km2=40.0, progress=False)
    files = sorted(out.glob("*.nc"))
    for k, rows in ((9, slice(None)), (12, slice(0, 5)), (13, slice(0, 5))):
        ds = xr.open_dataset(files[k]).load()
        ds["precipitation_amount"][rows] = np.nan
        ds.to_netcdf(out / "tmp.part")
        (out / "tmp.part").replace(files[k])
    return out


OUTAGE_PERIODS = {"train_period": [f"{DAY}T00:00", f"{DAY}T00:55"], "val_period": [f"{DAY}T01:00", f"{DAY}T01:25"],
                  "test_period": [f"{DAY}T01:30", f"{DAY}T01:55"]}


def test_all_nan_frame_is_a_missing_frame_and_its_windows_are_counted(outage_dir, capsys):
    dm = NowcastingDataModule(str(outage_dir), n_in=2, n_out=2, **OUTAGE_PERIODS)
    dm.setup()
    # training frames 0..11, frame 9 out: windows 0-3, 1-4 .. 5-8 fit; 6-9 .. 8-11 are skipped (3 windows)
    np.testing.assert_array_equal(dm.starts["train"], [0, 1, 2, 3, 4, 5])
    assert "1 frame(s) NaN everywhere (radar outage), counted as missing: 3 window(s)" in capsys.readouterr().out
    assert list(dm.outage_frames) == [9]


def test_cells_missing_in_some_frames_are_left_out_of_loss_and_scores(outage_dir):
    dm = NowcastingDataModule(str(outage_dir), n_in=2, n_out=2, **OUTAGE_PERIODS)
    dm.setup()
    truth = dm.truth("val")["val"]["rain_rate"]
    assert np.isnan(truth.values).any() and not np.isnan(truth.values).all()  # frames 12, 13 hold the strip
    pred = truth.fillna(0.0) + 1.0                                             # 1 mm/h off wherever observed
    scores = NowcastEvaluation(thresholds=[1.0], fss_scales_km=[1]).score_variable(pred, truth, "rain_rate")
    assert scores["mae"] == pytest.approx(1.0)                                 # the missing cells are not scored
    model = NowcastModel(dm.spec, width=4, depth=1)
    y = torch.from_numpy(truth.values[:2].astype(np.float32))
    z_true = model.to_network(y)
    loss = model.compute_loss(z_true, y)                                       # perfect where observed: the
    assert torch.isfinite(loss) and float(loss) == pytest.approx(0.0, abs=1e-6)  # missing cells add nothing


# ------------------------------------------------------------------------------------------ optical-flow base
def test_untrained_model_is_optical_flow_and_the_gate_keeps_only_a_helpful_correction(outage_dir):
    dm = NowcastingDataModule(str(outage_dir), n_in=2, n_out=2, batch_size=8, **OUTAGE_PERIODS)
    dm.setup()
    L.seed_everything(0)
    model = NowcastModel(dm.spec, width=4, depth=1).eval()
    x = torch.from_numpy(dm.past_frames("test"))
    flow = optical_flow_nowcast(x, 2, fill_value=0.0)
    with torch.no_grad():
        torch.testing.assert_close(model(x), flow, rtol=1e-5, atol=1e-5)      # zero correction at the start
        model.net.head.weight.normal_(0, 5.0)                                  # a harmful correction
        assert (model(x) - flow).abs().max() > 0.5
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    logged = trainer.validate(model, dm, verbose=False)[0]
    assert model.correction_gate.tolist() == [0.0, 0.0] and logged["val_correction_on"] == 0.0
    assert logged["val_mae_optical_flow"] < logged["val_mae_correction"] and logged["val_selection"] == 0.0
    with torch.no_grad():
        torch.testing.assert_close(model(x), flow, rtol=1e-5, atol=1e-5)      # switched off: optical flow again
    out = model.to_rain(torch.full((1, 2, 3, 3), 50.0))                       # far beyond any training rain
    assert float(out.max()) == pytest.approx(float(dm.statistics["rain_cap"]))
    assert float(model.to_rain(torch.full((1, 2, 3, 3), -50.0)).min()) == 0.0


def test_rain_cap_is_twice_the_training_maximum(outage_dir):
    dm = NowcastingDataModule(str(outage_dir), n_in=2, n_out=2, **OUTAGE_PERIODS)
    dm.setup()
    frames = np.unique(dm.starts["train"][:, None] + np.arange(4))
    expected = 2.0 * np.nanmax(dm.reader.read_frames(frames))
    assert float(dm.statistics["rain_cap"]) == pytest.approx(expected, rel=1e-6)


def test_summary_says_when_optical_flow_beats_the_model():
    result = {"rain_rate": {"model": {"mae": 1.0, "csi_1.0": 0.50},
                            "persistence": {"mae": 1.3, "csi_1.0": 0.45},
                            "optical_flow": {"mae": 0.9, "csi_1.0": 0.50}}}
    lines = NowcastEvaluation().summary(result)
    assert ("  rain_rate: the baseline optical_flow BEATS the model on mae, lower is better: 0.9 against the "
            "model's 1, better by 0.1 (10.0%)") in lines
    assert "  rain_rate: the model ties with optical_flow on csi_1.0, higher is better: both 0.5" in lines
    assert not any("persistence BEATS" in line for line in lines)


def test_the_gate_is_decided_lead_time_by_lead_time(outage_dir):
    """Truth = optical flow at lead 1 (nothing to correct) and dry at lead 2; a correction that dries lead 2 only:
    kept at lead 2 (lower MAE, CSI no worse), off at lead 1 (a tie is not an improvement)."""
    dm = NowcastingDataModule(str(outage_dir), n_in=2, n_out=2, batch_size=8, **OUTAGE_PERIODS)
    dm.setup()
    model = NowcastModel(dm.spec, width=4, depth=1).eval()
    x = torch.from_numpy(dm.past_frames("test"))
    flow = optical_flow_nowcast(x, 2, fill_value=0.0)
    y = torch.stack([flow[:, 0], torch.zeros_like(flow[:, 1])], dim=1)
    with torch.no_grad():
        model.net.head.bias.copy_(torch.tensor([0.0, -50.0]))   # lead 2: far below dry on the network's scale
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    loader = torch.utils.data.DataLoader(TensorDictDataset(x=x, y=y), batch_size=len(x), collate_fn=batched_collate)
    logged = trainer.validate(model, dataloaders=loader, verbose=False)[0]
    assert model.correction_gate.tolist() == [0.0, 1.0] and logged["val_correction_on"] == 0.5
    assert logged["val_selection"] < 0 and logged["val_mae_mm_h"] < logged["val_mae_optical_flow"]
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out[:, 0], flow[:, 0])                            # optical flow, exactly
    assert float(out[:, 1].max()) == 0.0
