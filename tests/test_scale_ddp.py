"""DDP on 2 CPU processes (gloo) for each task, through ``climateml fit`` exactly as a user runs it.

Each task trains twice on the same tiny data: one process with batch 2B, and ``strategy: ddp`` on two
processes with batch B each (the same global batch, the same optimiser steps). The test checks that

- no sample is seen twice in an epoch across the ranks, and together they see the single run's samples;
- logged metrics are reduced across the processes: the test scores DDP logs (each rank scored half the
  test set) equal what the evaluation computes on the whole test set on rank 0, and validation scores
  match the single-process run's;
- the trained weights match single-process training (tolerance below, relative to how far training moved
  them: exact up to float summation order for the MLP; U-Nets with synchronised BatchNorm differ by how a
  loss normalised per process is averaged);
- the evaluation after fit ran once (one metrics.json, one summary), without deadlock (the subprocess
  has a time limit);
- memory per rank does not grow with the number of ranks: each rank's peak RSS stays within 25% (+100
  MiB) of the single process's.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from test_scale_common import TASKS, last_value, make_data, read_csv, run_cli, run_dir, task_args

# ||w_ddp - w_single|| / ||w_single - w_initial||: how far apart the two trainings end, relative to training
WEIGHT_TOLERANCE = {"temperature": 1e-4, "segmentation": 1e-3, "nowcasting": 1e-3}
# validation scores, DDP vs single process (relative)
VAL_TOLERANCE = {"temperature": 1e-5, "segmentation": 1e-3, "nowcasting": 1e-3}
# (metrics.csv test key, metrics.json variable, metrics.json score): the same score two ways
TEST_SCORE = {"temperature": ("test_rmse_tas", "tas", "rmse"),
              "segmentation": ("test_mean_iou", None, "mean_iou"),
              "nowcasting": ("test_mae_mm_h", None, "mae")}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scale_ddp_data")


def _records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("rank*.json"))]


def _weights(folder: Path, rank: int) -> dict:
    return torch.load(folder / f"rank{rank}.pt", weights_only=True)


def _distance(a: dict, b: dict) -> float:
    keys = [k for k in a if a[k].is_floating_point() and "num_batches_tracked" not in k]
    return float(torch.sqrt(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in keys)))


@pytest.mark.parametrize("task", TASKS)
def test_ddp_two_processes_matches_one(task, data_root, tmp_path):
    data = make_data(task, data_root)
    base = task_args(task, data, tmp_path / "runs")
    batch = int(base[base.index("--data.batch_size") + 1])
    record = ["--trainer.callbacks+=test_scale_common.RecordSamples"]

    single = run_cli([*base, "--data.batch_size", str(2 * batch), *record,
                      "--trainer.logger.init_args.name", "single"], tmp_path,
                     env={"CLIMATEML_RECORD_DIR": str(tmp_path / "rec1")})
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run_cli([*base, "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
                   *record, "--trainer.logger.init_args.name", "ddp"], tmp_path,
                  env={"CLIMATEML_RECORD_DIR": str(tmp_path / "rec2")})
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    # the evaluation ran once, on rank 0
    assert ddp.stdout.count("run directory:") == 1, ddp.stdout[-2000:]
    ddp_dir, single_dir = run_dir(tmp_path / "runs", "ddp"), run_dir(tmp_path / "runs", "single")
    assert (ddp_dir / "metrics.json").is_file() and not (ddp_dir / "checkpoints" / "resume.ckpt").exists()

    # no sample twice per epoch across ranks; together the ranks see the single run's samples
    (one,), ranks = _records(tmp_path / "rec1"), _records(tmp_path / "rec2")
    assert sorted(r["rank"] for r in ranks) == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    for epoch, seen in one["epochs"].items():
        # an even count, so both runs take the same optimiser steps (DDP leaves out len % 2 samples per epoch)
        assert len(seen["indices"]) % 2 == 0, "the test data should have an even number of training samples"
        shards = [r["epochs"][epoch] for r in ranks]
        assert not set(shards[0]["indices"]) & set(shards[1]["indices"]), f"epoch {epoch}: a sample on both ranks"
        n = len(seen["indices"])
        assert sum(len(s["indices"]) for s in shards) == n - n % 2
        together = Counter(shards[0]["fingerprints"]) + Counter(shards[1]["fingerprints"])
        assert not together - Counter(seen["fingerprints"]), f"epoch {epoch}: the ranks saw other samples"
        if len(seen["fingerprints"]) == n:  # a whole epoch (not cut by max_steps)
            assert sum(together.values()) == n - n % 2

    # metrics reduced across processes: DDP's test score (two half test sets) = rank 0's whole-set evaluation
    csv_key, variable, score = TEST_SCORE[task]
    scores = json.loads((ddp_dir / "metrics.json").read_text())
    variable = variable or next(iter(scores))
    assert last_value(read_csv(ddp_dir / "metrics.csv"), csv_key) == pytest.approx(
        scores[variable]["model"][score], rel=1e-4, abs=1e-6)
    # ... and validation scores match the single-process run's
    rows_1, rows_2 = read_csv(single_dir / "metrics.csv"), read_csv(ddp_dir / "metrics.csv")
    for key in [k for k in rows_1[0] if k.startswith("val_")]:
        assert last_value(rows_2, key) == pytest.approx(last_value(rows_1, key), rel=VAL_TOLERANCE[task], abs=1e-6), key

    # the weights: both ranks identical, and close to single-process training
    w1, w2a, w2b = _weights(tmp_path / "rec1", 0), _weights(tmp_path / "rec2", 0), _weights(tmp_path / "rec2", 1)
    assert _distance(w2a["final"], w2b["final"]) == 0.0
    moved = _distance(w1["final"], w1["initial"])
    assert moved > 0 and _distance(w2a["final"], w1["final"]) / moved < WEIGHT_TOLERANCE[task]

    # memory per rank does not grow with the number of ranks
    for r in ranks:
        assert r["max_rss_mib"] < 1.25 * one["max_rss_mib"] + 100, (r["max_rss_mib"], one["max_rss_mib"])
