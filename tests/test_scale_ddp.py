"""DDP on 2 CPU processes (gloo) for each task, through ``climateml fit`` exactly as a user runs it.

Each task trains twice on the same tiny data from the same seeded initial weights: in one process with
batch 2B, and with ``strategy: ddp`` on two processes with batch B each (the same global batch). The test
checks what DDP guarantees, and nothing that depends on how floating-point sums are ordered on this CPU:

- the ranks see the single run's samples, none of them twice in an epoch;
- the gradients of the first optimiser step, averaged over the ranks, equal the single process's on the
  whole batch, within rounding; both ranks apply the same ones;
- after training, both ranks hold bit-for-bit identical weights;
- logged metrics are reduced across the processes: DDP's test scores (each rank scored half the test set)
  equal what the evaluation computes on the whole test set on rank 0, and the scores of the first
  validation (one optimiser step in) equal the single process's;
- the evaluation after fit ran once (one metrics.json, one summary), without deadlock (the subprocess
  has a time limit);
- memory per rank does not grow with the number of ranks: what each rank's run adds to its peak RSS stays
  within 25% (+100 MiB) of what the single process's adds.

It does not compare the two trainings' end points: each step's rounding differs between a batch summed in
one process and two halves summed in two, and a U-Net amplifies such differences within a few steps, by
an amount that depends on the CPU's instruction set.

Both runs compute in float64 (``trainer.precision: 64-true``), so that "equal within rounding" holds with a
margin on any CPU (see GRADIENT_TOLERANCE). Bit-for-bit equal weights across ranks rest on each rank
computing the same optimiser step from the same averaged gradients, so every run uses
``trainer.deterministic: true`` (``torch.use_deterministic_algorithms``): no kernel whose result depends on
thread scheduling.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from test_scale_common import TASKS, first_value, make_data, read_csv, run_cli, run_dir, run_forked, task_args

# |g_ddp - g_single| / |g_single| over all parameters, in float64: rounding of sums over a batch taken in a
# different order (two halves, then their mean). Measured ~3e-16 for the MLP and the segmentation U-Net and
# ~6e-6 for the nowcasting U-Net, whose first convolution (no bias, GroupNorm after it, nearly uniform dry
# input) has a gradient that is a difference of nearly equal sums (in float32 that difference is ~2%: hence
# float64). A real difference, a sample left out or counted twice, moves it by ~1/batch (1/64 .. 1/8).
GRADIENT_TOLERANCE = 1e-3
# first validation scores, DDP vs single process (relative): one optimiser step from the same weights
VAL_TOLERANCE = 1e-4
# what starts the DDP processes: Lightning's launcher (rank 0 starts rank 1 by running its command line again),
# or torchrun, which starts both at once as srun does on a cluster (``climateml`` connects them itself)
LAUNCHER = {"temperature": "lightning", "segmentation": "torchrun", "nowcasting": "lightning"}
# (metrics.csv test key, metrics.json variable, metrics.json score): the same score two ways
TEST_SCORE = {"temperature": ("test_rmse_tas", "tas", "rmse"),
              "segmentation": ("test_mean_iou", None, "mean_iou"),
              "nowcasting": ("test_mae_mm_h", None, "mae")}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scale_ddp_data")


def _records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("rank*.json"))]


def _saved(folder: Path, rank: int) -> dict:
    return torch.load(folder / f"rank{rank}.pt", weights_only=True)


def _distance(a: dict, b: dict) -> float:
    keys = [k for k in a if a[k].is_floating_point() and "num_batches_tracked" not in k]
    assert keys and set(keys) <= set(b)
    return float(torch.sqrt(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in keys)))


def _norm(a: dict) -> float:
    return _distance(a, {k: torch.zeros_like(v) for k, v in a.items()})


@pytest.mark.parametrize("task", TASKS)
def test_ddp_two_processes_matches_one(task, data_root, tmp_path):
    data = make_data(task, data_root)
    base = [*task_args(task, data, tmp_path / "runs"), "--trainer.deterministic", "true", "--trainer.precision", "64-true",
            "--trainer.val_check_interval", "1", "--trainer.callbacks+=test_scale_common.RecordSamples"]
    batch = int(base[base.index("--data.batch_size") + 1])

    # the single process: forked from this one (no second start-up of torch and Lightning)
    single = run_forked([*base, "--data.batch_size", str(2 * batch), "--trainer.logger.init_args.name", "single"],
                        tmp_path, env={"CLIMATEML_RECORD_DIR": str(tmp_path / "rec1")})
    assert single.returncode == 0, single.stderr[-3000:]
    # DDP: a fresh process, as its launcher starts rank 1 by running the same command line; or, for one task,
    # both processes started at once by torchrun (as by srun on a cluster)
    ddp = run_cli([*base, "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
                   "--trainer.logger.init_args.name", "ddp"], tmp_path,
                  env={"CLIMATEML_RECORD_DIR": str(tmp_path / "rec2")}, torchrun=2 if LAUNCHER[task] == "torchrun" else 0)
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    # the evaluation ran once, on rank 0
    assert ddp.stdout.count("run directory:") == 1, ddp.stdout[-2000:]
    ddp_dir, single_dir = run_dir(tmp_path / "runs", "ddp"), run_dir(tmp_path / "runs", "single")
    assert (ddp_dir / "metrics.json").is_file() and not (ddp_dir / "checkpoints" / "resume.ckpt").exists()

    # no sample twice per epoch across ranks; together the ranks see the single run's samples
    (one,), ranks = _records(tmp_path / "rec1"), _records(tmp_path / "rec2")
    assert sorted(r["rank"] for r in ranks) == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    # statistics fitted once (segmentation's are read from every training file, nowcasting's from every frame):
    # the process Lightning's launcher started took the launcher's (rank 0 built its DataModule before starting
    # rank 1); under torchrun, the processes were connected before building theirs and rank 0 sent its own
    rank0, rank1 = (next(r for r in ranks if r["rank"] == i) for i in (0, 1))
    assert task == "temperature" or rank1["fitted"]
    if LAUNCHER[task] == "torchrun":
        assert rank1["fitted_by"] == ["rank 0"] and not rank1["handed_down"] and rank0["fitted_by"] == ["this process"]
    else:
        assert set(rank1["fitted"]) <= set(rank1["handed_down"])
    assert len(one["epochs"]) >= 2  # a second epoch reshuffles: checked as well
    for epoch, seen in one["epochs"].items():
        # an even count, so both runs take the same optimiser steps (DDP leaves out len % 2 samples per epoch)
        assert len(seen["indices"]) % 2 == 0, "the test data should have an even number of training samples"
        shards = [r["epochs"][epoch] for r in ranks]
        assert not set(shards[0]["indices"]) & set(shards[1]["indices"]), f"epoch {epoch}: a sample on both ranks"
        n = len(seen["indices"])
        assert sum(len(s["indices"]) for s in shards) == n
        assert sorted(shards[0]["indices"] + shards[1]["indices"]) == sorted(seen["indices"])
        together = Counter(shards[0]["fingerprints"]) + Counter(shards[1]["fingerprints"])
        assert not together - Counter(seen["fingerprints"]), f"epoch {epoch}: the ranks saw other samples"
        if len(seen["fingerprints"]) == n:  # a whole epoch (not cut by max_steps): the same samples, as often
            assert together == Counter(seen["fingerprints"]), f"epoch {epoch}"

    # the same start, the same first step: DDP's averaged gradients are the single process's on the whole batch
    w1, w2a, w2b = _saved(tmp_path / "rec1", 0), _saved(tmp_path / "rec2", 0), _saved(tmp_path / "rec2", 1)
    assert _distance(w1["initial"], w2a["initial"]) == 0.0 and _distance(w2a["initial"], w2b["initial"]) == 0.0
    g1, g2a, g2b = w1["first_gradients"], w2a["first_gradients"], w2b["first_gradients"]
    assert g1.keys() == g2a.keys() == g2b.keys() and _norm(g1) > 0
    assert _distance(g2a, g2b) == 0.0
    assert _distance(g2a, g1) / _norm(g1) < GRADIENT_TOLERANCE, (_distance(g2a, g1), _norm(g1))
    # ... and after training the ranks still hold identical weights (which moved)
    assert _distance(w2a["final"], w2b["final"]) == 0.0 and _distance(w2a["final"], w2a["initial"]) > 0

    # metrics reduced across processes: DDP's test score (two half test sets) = rank 0's whole-set evaluation
    csv_key, variable, score = TEST_SCORE[task]
    scores = json.loads((ddp_dir / "metrics.json").read_text())
    variable = variable or next(iter(scores))
    rows_1, rows_2 = read_csv(single_dir / "metrics.csv"), read_csv(ddp_dir / "metrics.csv")
    assert first_value(rows_2, csv_key) == pytest.approx(scores[variable]["model"][score], rel=1e-4, abs=1e-6)
    # ... and the first validation's scores (after one step) are the single process's
    keys = [k for k in rows_1[0] if k.startswith("val_")]
    assert keys and keys == [k for k in rows_2[0] if k.startswith("val_")]
    for key in keys:
        assert first_value(rows_2, key) == pytest.approx(first_value(rows_1, key), rel=VAL_TOLERANCE, abs=1e-6), key

    # memory per rank does not grow with the number of ranks: what a rank's run adds to its resident memory
    # (data, model, training) against what the single run adds (the single run's process is a fork of this
    # one, so its total includes the test session's memory; the growth does not)
    assert one["rss_growth_mib"] >= 0
    for r in ranks:
        assert r["rss_growth_mib"] < 1.25 * one["rss_growth_mib"] + 100, (r["rss_growth_mib"], one["rss_growth_mib"])
