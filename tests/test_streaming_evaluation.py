"""The streaming evaluation (climateml.evaluation.streaming): scores summed batch by batch equal the scores of
the whole split in memory, computed independently with the xarray metrics; two gloo processes, each scoring
and writing its own shard, give what one process gives (``pytest -k "evaluation and ddp"``)."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from climateml import metrics
from climateml.data.nowcasting import NowcastingDataModule
from climateml.data.synthetic.radar import generate_radar
from climateml.evaluation.nowcasting import NowcastEvaluation
from climateml.evaluation.streaming import Sums
from climateml.metrics import categorical
from climateml.models.nowcasting import NowcastModel

DAY = "2024-06-01"
PERIODS = {"train_period": [f"{DAY}T00:00", f"{DAY}T01:55"], "val_period": [f"{DAY}T02:00", f"{DAY}T02:40"],
           "test_period": [f"{DAY}T02:45", f"{DAY}T03:55"]}
THRESHOLDS, SCALES = [0.5, 1.0, 5.0], [1, 4]


@pytest.fixture(scope="module")
def radar_dir(tmp_path_factory) -> Path:
    """48 frames of 24 x 24 km at 1 km, frame 30 missing (a test window across it is skipped)."""
    out = tmp_path_factory.mktemp("radar_streaming")
    generate_radar(out, n_frames=48, ny=24, nx=24, missing=(30,), births_per_h_per_10000_km2=15.0, progress=False)
    return out


def _dm(radar_dir, batch_size=3) -> NowcastingDataModule:
    dm = NowcastingDataModule(str(radar_dir), n_in=3, n_out=2, batch_size=batch_size, cache_mb=0, **PERIODS)
    dm.setup()
    return dm


def _model(dm) -> NowcastModel:
    torch.manual_seed(0)
    return NowcastModel(dm.spec, width=4, depth=1, norm="group", base="none")


def _evaluation(**kw) -> NowcastEvaluation:
    return NowcastEvaluation(thresholds=THRESHOLDS, fss_scales_km=SCALES, **kw)


def _reference_scores(pred: xr.DataArray, truth: xr.DataArray) -> dict:
    """The whole split's scores with the xarray metrics, as the evaluation computed them before it streamed."""
    reduce = ["time", "y", "x"]
    pred = pred.where(np.isfinite(truth))
    per_lead = {"mae": metrics.mae(pred, truth, dim=reduce, weights=None),
                "rmse": metrics.rmse(pred, truth, dim=reduce, weights=None)}
    for t in THRESHOLDS:
        per_lead[f"csi_{t}"] = categorical.csi(pred, truth, t, dim=reduce)
        per_lead[f"pod_{t}"] = categorical.pod(pred, truth, t, dim=reduce)
        per_lead[f"far_{t}"] = categorical.far(pred, truth, t, dim=reduce)
    for km in SCALES:  # 1 km grid: the scale in cells is the odd number nearest to km
        per_lead[f"fss_{km}km"] = categorical.fss(pred, truth, 1.0, categorical.fss_scales_km([km], 1.0)[0],
                                                  spatial_dims=("y", "x"), dim="time")
    return {k: float(v.mean("lead_time")) for k, v in per_lead.items()}


def test_streaming_evaluation_equals_the_whole_split_in_memory(radar_dir, tmp_path):
    """Batches of 3 windows (the last one partial): every score of the model and both baselines equals the
    score of the whole split held in memory, and the file written batch by batch equals the one written whole."""
    dm = _dm(radar_dir)
    n = len(dm.dataset("test"))
    assert n % 3 and n > 6  # several batches, the last one short
    evaluation = _evaluation()
    streamed = evaluation.run([_model(dm)], dm, tmp_path / "streamed", accelerator="cpu")
    whole = _evaluation().run([_model(dm)], dm, tmp_path / "whole", accelerator="cpu", in_memory=True)
    written = xr.open_dataset(tmp_path / "streamed" / "test_predictions_test.nc")
    held = xr.open_dataset(tmp_path / "whole" / "test_predictions_test.nc")
    xr.testing.assert_allclose(written, held)
    assert list(written["model"].values) == ["model", "persistence", "optical_flow"]
    assert written["rain_rate"].attrs["units"] == "mm h-1" and written.attrs["Conventions"] == "CF-1.8"
    truth = dm.truth("test")["test"]["rain_rate"]
    for name in ("model", "persistence", "optical_flow"):
        reference = _reference_scores(held["rain_rate"].sel(model=name), truth)
        for key, value in reference.items():
            # the reference's means are float32 sums: equal to their precision
            assert streamed["rain_rate"][name][key] == pytest.approx(value, rel=1e-5, nan_ok=True), (name, key)
            assert whole["rain_rate"][name][key] == pytest.approx(streamed["rain_rate"][name][key], rel=1e-12,
                                                                  nan_ok=True), (name, key)
    assert np.isfinite(streamed["rain_rate"]["model"]["csi_1.0"])
    assert json.loads((tmp_path / "streamed" / "metrics.json").read_text())["rain_rate"]["model"]["ensemble_size"] == 1
    assert not (tmp_path / "streamed" / ".parts" / "test").exists()  # the part stores are removed
    for name in ("sequence_test", "skill_by_lead_time_test", "metrics"):
        assert (tmp_path / "streamed" / "figures" / f"{name}.png").stat().st_size > 10_000


def test_sums_pick_the_highest_value_and_the_first_index_on_a_tie():
    sums = Sums()
    sums.add(("g", "model", "v"), {"count": np.array([1.0, 2.0])})
    sums.add(("g", "model", "v"), {"count": np.array([3.0, 4.0])})
    np.testing.assert_array_equal(sums.group("g", "model", "v")["count"], [4.0, 6.0])
    sums.pick(("g", "wet"), [5, 9, 9], [10, 11, 12])
    sums.pick(("g", "wet"), [9, 2], [3, 4])
    assert sums.picks[("g", "wet")] == [(9.0, 3)]
    sums.pick(("g", "top2"), [5, 9, 9, 1], [10, 11, 12, 3], k=2)
    sums.pick(("g", "top2"), [7, 9], [4, 13], k=2)
    assert sums.picks[("g", "top2")] == [(9.0, 11), (9.0, 12)]


def _pick_on_rank(rank: int, port: int, out) -> None:
    """One of two gloo processes: each saw one sample (index = rank) of the k = 2 a figure wants; report the picks
    after the reduction (and, of rank 1, also a key only it picked)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        sums = Sums()
        sums.pick(("g", "features"), [10.0 + rank], [rank], k=2)
        if rank == 1:
            sums.pick(("g", "rainiest"), [3.0], [1])
        sums.all_reduce()
        out.put((rank, sums.picks))
    finally:
        torch.distributed.destroy_process_group()


def test_picks_reduced_over_ranks_keep_k_samples_when_each_rank_saw_fewer():
    """Two DDP ranks, one sample each, a pick of k = 2 (e.g. two segmentation figures): both ranks keep both
    samples, best first, as one process would, and a key only one rank picked reaches both."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    procs = [context.Process(target=_pick_on_rank, args=(r, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        picks = dict(out.get(timeout=60) for _ in procs)
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    one = Sums()
    for i in range(2):
        one.pick(("g", "features"), [10.0 + i], [i], k=2)
    for rank in range(2):
        assert picks[rank][("g", "features")] == one.picks[("g", "features")] == [(11.0, 1), (10.0, 0)]
        assert picks[rank][("g", "rainiest")] == [(3.0, 1)]


def _rank(rank: int, world: int, port: int, radar_dir: Path, out: Path) -> None:
    """One DDP process (forked): join the gloo group, evaluate this rank's shard, leave."""
    code = 1
    try:
        import faulthandler

        faulthandler.dump_traceback_later(60, exit=True, file=open(out / f"stack_rank{rank}.txt", "w"))
        torch.set_num_threads(1)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
        dm = _dm(radar_dir, batch_size=2)
        result = _evaluation().run([_model(dm)], dm, out, accelerator="cpu")
        (out / f"result_rank{rank}.json").write_text(json.dumps(result))
        torch.distributed.destroy_process_group()
        code = 0
    except BaseException:
        (out / f"error_rank{rank}.txt").write_text(traceback.format_exc())
    finally:
        os._exit(code)


def test_streaming_evaluation_ddp_equals_one_process(radar_dir, tmp_path):
    """Two gloo processes, each scoring and writing its own shard (windows r, r + 2, ...): the same metrics.json
    and the same prediction file as one process, and both ranks return the reduced scores."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    ddp.mkdir()
    context = multiprocessing.get_context("fork")
    procs = [context.Process(target=_rank, args=(r, 2, port, radar_dir, ddp)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    errors = "\n".join(f.read_text() for f in [*ddp.glob("error_rank*.txt"), *ddp.glob("stack_rank*.txt")])
    assert [p.exitcode for p in procs] == [0, 0], errors
    dm = _dm(radar_dir, batch_size=2)
    one = _evaluation(make_figures=False).run([_model(dm)], dm, single, accelerator="cpu")
    on_disk = json.loads((ddp / "metrics.json").read_text())
    expected = json.loads((single / "metrics.json").read_text())

    def winners(metrics):
        return [(v["score"], v["best"], v["runner_up"]) for v in metrics["verdict"]["rain_rate"]]

    assert winners(on_disk) == winners(expected)
    for name, scores in expected["rain_rate"].items():
        for key, value in scores.items():
            if key != "by_lead_time":
                # the same sums in another order, of float32 nowcasts from batches of another make-up
                assert on_disk["rain_rate"][name][key] == pytest.approx(value, rel=1e-6, nan_ok=True), (name, key)
    for rank in range(2):
        returned = json.loads((ddp / f"result_rank{rank}.json").read_text())
        assert returned["rain_rate"]["model"]["mae"] == pytest.approx(one["rain_rate"]["model"]["mae"], rel=1e-6)
    xr.testing.assert_allclose(xr.open_dataset(ddp / "test_predictions_test.nc"),  # float32 nowcasts, as above
                               xr.open_dataset(single / "test_predictions_test.nc"), rtol=1e-5, atol=1e-4)
    assert (ddp / "figures" / "sequence_test.png").exists()


def test_streaming_temperature_evaluation_equals_the_in_memory_scores(small_climatebench, tmp_path):
    """Two test scenarios in batches of 16 years (a batch spans both), an ensemble of two members and two fitted
    baselines: area-weighted RMSE, MAE, bias, R², NRMSE and the members' scores summed batch by batch equal
    those of the in-memory evaluation (the xarray metrics on whole scenarios); the files hold the same."""
    from climateml.data import ClimateBenchDataModule
    from climateml.evaluation import TemperatureEvaluation
    from climateml.models import TemperatureEmulator

    dm = ClimateBenchDataModule(str(small_climatebench), test_scenarios=["ssp245", "ssp126"], batch_size=16)
    dm.setup()
    assert len(dm.dataset("test")) % 16  # the batches straddle the two scenarios
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        members.append(TemperatureEmulator(dm.spec))

    def evaluation():
        return TemperatureEvaluation(baselines=["pattern_scaling", "linear"], nrmse_years=(2080, 2100),
                                     make_figures=False)

    assert evaluation().streams(dm)
    streamed = evaluation().run(members, dm, tmp_path / "streamed", accelerator="cpu")
    held = evaluation().run(members, dm, tmp_path / "held", accelerator="cpu", in_memory=True)
    for name, scores in held["tas"].items():
        assert set(streamed["tas"][name]) == set(scores)
        for key, value in scores.items():
            assert streamed["tas"][name][key] == pytest.approx(value, rel=1e-5, abs=1e-9), (name, key)
    assert {"nrmse_total", "r2", "ensemble_spread", "member_rmse_std"} <= set(streamed["tas"]["model"])
    for group in ("ssp245", "ssp126"):
        xr.testing.assert_allclose(xr.open_dataset(tmp_path / "streamed" / f"test_predictions_{group}.nc"),
                                   xr.open_dataset(tmp_path / "held" / f"test_predictions_{group}.nc"))


def test_streaming_segmentation_evaluation_equals_the_in_memory_scores(tmp_path):
    """5 test dates in batches of 2: the per-class scores of the model and the heuristic (run on each batch's
    fields) from confusion matrices summed batch by batch equal those of the whole split in memory, and a
    confusion matrix counted by hand from the written labels."""
    from climateml.data.climatenet import SegmentationDataModule
    from climateml.data.synthetic.climatenet import generate_climatenet
    from climateml.evaluation.segmentation import SegmentationEvaluation
    from climateml.metrics.segmentation import CLASS_NAMES, scores_from_confusion
    from climateml.models.segmentation import SegmentationModel

    generate_climatenet(tmp_path / "data", n_dates=10, nlat=17, nlon=24, seed=2, progress=False)
    dm = SegmentationDataModule(str(tmp_path / "data"), channels=["TMQ", "U850", "V850", "PSL"], batch_size=2,
                                val_fraction=0.2, test_fraction=0.5)
    dm.setup()
    torch.manual_seed(0)
    model = SegmentationModel(dm.spec, depth=1, width=4, norm="group")
    assert SegmentationEvaluation().streams(dm)
    streamed = SegmentationEvaluation(make_figures=False).run([model], dm, tmp_path / "streamed", accelerator="cpu")
    held = SegmentationEvaluation(make_figures=False).run([model], dm, tmp_path / "held", accelerator="cpu",
                                                         in_memory=True)
    assert set(streamed["LABELS"]) == {"model", "heuristic"}
    written = xr.open_dataset(tmp_path / "streamed" / "test_predictions_test.nc")
    xr.testing.assert_equal(written["LABELS"], xr.open_dataset(tmp_path / "held" / "test_predictions_test.nc")["LABELS"])
    truth = dm.truth("test")["test"]["LABELS"].values.astype(int)
    for name in ("model", "heuristic"):
        pred = written["LABELS"].sel(model=name).values.astype(int)
        by_hand = np.array([[np.sum((truth == i) & (pred == j)) for j in range(3)] for i in range(3)])
        expected = scores_from_confusion(by_hand, CLASS_NAMES)
        for key, value in expected.items():
            assert streamed["LABELS"][name][key] == pytest.approx(value, nan_ok=True), (name, key)
            assert held["LABELS"][name][key] == pytest.approx(value, nan_ok=True), (name, key)
