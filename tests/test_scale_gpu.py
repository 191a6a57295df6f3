"""The CUDA path of each task, from the config alone (trainer.accelerator gpu, devices 1, precision;
worker processes and pinned memory for loading), against the same run on the CPU. Skipped without a GPU.

Tolerances (relative, on the first validation loss of the short run of test_scale_common.task_args, a few
optimiser steps in: not the run's end point, where the two devices' different rounding has compounded):
32-true 2e-2 (cuDNN picks its own convolution algorithms and TF32 for float32 convolutions);
bf16-mixed 1e-1 (8 bits of mantissa in the forward pass). Each run prints samples/s and the share of a
training step spent waiting for data (``pytest -s``), the numbers of the closing note.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from test_scale_common import TASKS, first_value, last_value, make_data, read_csv, run_cli, run_dir, task_args

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TOLERANCE = {"32-true": 2e-2, "bf16-mixed": 1e-1}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scale_gpu_data")


def _run(task: str, data: Path, runs: Path, name: str, *extra: str) -> dict:
    args = [*task_args(task, data, runs), "--trainer.logger.init_args.name", name,
            "--trainer.callbacks+=climateml.callbacks.TrainingSpeed", *extra]
    out = run_cli(args, runs.parent, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = read_csv(run_dir(runs, name) / "metrics.csv")
    return {"val_loss": first_value(rows, "val_loss"), **{k: last_value(rows, k) for k in ("samples_per_s", "data_share")}}


@pytest.mark.parametrize("precision", list(TOLERANCE))
@pytest.mark.parametrize("task", TASKS)
def test_cuda_training_matches_cpu(task, precision, data_root, tmp_path):
    data = make_data(task, data_root)
    cpu = _run(task, data, tmp_path / "runs", "cpu", "--trainer.accelerator", "cpu")
    gpu = _run(task, data, tmp_path / "runs", "gpu", "--trainer.accelerator", "gpu", "--trainer.devices", "1",
               "--trainer.precision", precision, "--data.num_workers", "2", "--data.pin_memory", "true")
    print(f"\n{task} {precision}: CPU {cpu['samples_per_s']:.1f} samples/s, GPU {gpu['samples_per_s']:.1f} samples/s, "
          f"data-loading share of a GPU step {gpu['data_share']:.2f}; val_loss CPU {cpu['val_loss']:.5f} "
          f"GPU {gpu['val_loss']:.5f}")
    assert gpu["val_loss"] == pytest.approx(cpu["val_loss"], rel=TOLERANCE[precision])
