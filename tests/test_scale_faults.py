"""Fault tolerance: a fit killed with SIGKILL mid-epoch (or pre-empted with SIGTERM) and started again with the
same command ends exactly like an uninterrupted one; a writer killed mid-write leaves the old file intact."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from climateml.callbacks import AtomicCheckpointIO
from climateml.writers import write_dataset, write_text
from test_scale_common import make_data, read_csv, run_dir, run_forked, task_args

# ---- kill and resume ----
#
# Every run is forked from the test process (test_scale_common.run_forked: climateml's command-line ``main``
# in a process of its own that can be killed, without a fresh interpreter's imports). The resumed run must
# end bit for bit like the uninterrupted one, which rests on both computing the same numbers from the same
# state, so every run uses ``trainer.deterministic: true`` (``torch.use_deterministic_algorithms``: no kernel
# whose result depends on thread scheduling) and one thread.

# the temperature run is interrupted three times in a row, each time resumed by the same command:
# (signal, after optimiser step, the step its resume checkpoint holds then) with a checkpoint every 4 steps;
# 24 steps, 19 per epoch
TEMPERATURE_KILLS = [
    ("SIGKILL", 6, 4),        # a crash mid-epoch: back to the last periodic checkpoint
    ("SIGTERM", 13, 13),      # a pre-emption: saved at once on SIGTERM
    ("SIGKILL", "test", 24),  # trained, killed before test and evaluation: saved at the end of training
]
SEGMENTATION_KILLS = [("SIGKILL", 5, 3)]  # 2 epochs of 4 steps, a checkpoint every 3: killed in epoch 1
EVERY = {"temperature": 4, "segmentation": 3}


def _exit_status(sig: str) -> int:
    return -signal.SIGKILL if sig == "SIGKILL" else 143  # on SIGTERM: save, stop, exit 128 + 15


@pytest.mark.parametrize("task, kills", [("temperature", TEMPERATURE_KILLS), ("segmentation", SEGMENTATION_KILLS)],
                         ids=["temperature", "segmentation"])
def test_killed_fit_resumes_with_the_same_command_and_ends_the_same(task, kills, tmp_path):
    data = make_data(task, tmp_path / "data")

    def args(runs: Path) -> list[str]:
        return [*task_args(task, data, runs), "--trainer.deterministic", "true",
                "--trainer.callbacks+=test_scale_common.KillAtStep",
                "--trainer.callbacks+=climateml.resume.ResumeCheckpoint",
                "--trainer.callbacks.every_n_train_steps", str(EVERY[task])]

    whole = run_forked(args(tmp_path / "whole"), tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]

    command = args(tmp_path / "killed")
    killed = run_dir(tmp_path / "killed", task)
    for i, (sig, at, saved_step) in enumerate(kills):
        run = run_forked(command, tmp_path, env={"CLIMATEML_KILL_AT_STEP": str(at), "CLIMATEML_KILL_SIGNAL": sig})
        assert run.returncode == _exit_status(sig), (i, run.returncode, run.stderr[-2000:])
        assert (killed / "checkpoints" / "resume.ckpt").is_file() and not (killed / "metrics.json").exists()
        checkpoint = torch.load(killed / "checkpoints" / "resume.ckpt", map_location="cpu", weights_only=False)
        assert checkpoint["global_step"] == saved_step, (sig, at)
        if i > 0:
            assert "resuming the interrupted run" in run.stdout + run.stderr

    again = run_forked(command, tmp_path)  # the same command, no kill this time
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming the interrupted run" in again.stdout + again.stderr
    assert sorted(p.name for p in (tmp_path / "killed" / task).iterdir()) == ["version_0"]  # the same run folder
    assert not (killed / "checkpoints" / "resume.ckpt").exists()  # finished: the next fit starts a new run

    reference = run_dir(tmp_path / "whole", task)
    assert json.loads((killed / "metrics.json").read_text()) == json.loads((reference / "metrics.json").read_text())
    assert read_csv(killed / "metrics.csv") == read_csv(reference / "metrics.csv")  # every logged value, every step
    best_a, best_b = (sorted((d / "checkpoints").glob("best-*.ckpt")) for d in (reference, killed))
    assert [p.name for p in best_a] == [p.name for p in best_b]
    sa, sb = (torch.load(p[-1], weights_only=True)["state_dict"] for p in (best_a, best_b))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---- writers killed mid-write ----

def _big(chunks: dict | None = None) -> xr.Dataset:
    ds = xr.Dataset({"v": (("t", "x"), np.full((4000, 5000), 2.0, "f4"))})
    return ds.chunk(chunks) if chunks else ds


WRITERS = {  # kind: a large write of the new content (2.0) to path, long enough to be killed in the middle
    "netcdf": lambda path: write_dataset(_big(), path),
    "zarr": lambda path: write_dataset(_big({"t": 250}), path),
    "text": lambda path: write_text("2" * 300_000_000, path),
    "checkpoint": lambda path: AtomicCheckpointIO().save_checkpoint({"w": torch.full((20_000_000,), 2.0)}, path),
}


def _write_forever(kind: str, path: Path) -> None:
    torch.set_num_threads(1)  # a forked child: no OpenMP thread pool inherited half-way
    while True:
        WRITERS[kind](path)


def _old_content(kind: str, path: Path) -> None:
    if kind in ("netcdf", "zarr"):
        write_dataset(xr.Dataset({"v": (("t", "x"), np.full((10, 10), 1.0, "f4"))}), path)
    elif kind == "text":
        write_text("1" * 1000, path)
    else:
        AtomicCheckpointIO().save_checkpoint({"w": torch.full((10,), 1.0)}, path)


def _check_intact(kind: str, path: Path) -> float:
    """The file at ``path`` is whole: the old content or, if the write had already finished, the new one."""
    if kind in ("netcdf", "zarr"):
        with xr.open_dataset(path, engine="zarr" if kind == "zarr" else None) as ds:
            v = ds["v"].values
    elif kind == "text":
        text = path.read_text()
        v = np.frombuffer(text.encode(), dtype=np.uint8) - ord("0")
        assert len(text) in (1000, 300_000_000)
    else:
        v = torch.load(path, weights_only=True)["w"].numpy()
        assert v.size in (10, 20_000_000)
    values = np.unique(v)
    assert values.size == 1 and values[0] in (1.0, 2.0)
    return float(values[0])


@pytest.mark.parametrize("kind", list(WRITERS))
def test_writer_killed_mid_write_leaves_the_old_file(kind, tmp_path):
    path = tmp_path / {"netcdf": "out.nc", "zarr": "out.zarr", "text": "metrics.json", "checkpoint": "last.ckpt"}[kind]
    _old_content(kind, path)
    # the writer: a process forked from this one (no fresh interpreter's imports), killed by SIGKILL mid-write
    child = multiprocessing.get_context("fork").Process(target=_write_forever, args=(kind, path), daemon=True)
    child.start()
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # wait until the temporary file is being written, then kill
            partial = [p for p in path.parent.glob(f".{path.name}.*/{path.name}")]
            if partial and (partial[0].is_dir() or partial[0].stat().st_size > 0):
                break
            time.sleep(0.005)
        else:
            pytest.fail("the writer never started writing")
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
    finally:
        if child.is_alive():
            child.kill()
            child.join(30)
    assert child.exitcode == -signal.SIGKILL
    assert _check_intact(kind, path) in (1.0, 2.0)
    leftovers = list(path.parent.glob(f".{path.name}.*"))
    assert leftovers  # the killed write's temporary ...
    _old_content(kind, path)  # ... is removed by the next write to the same path
    assert not list(path.parent.glob(f".{path.name}.*")) and _check_intact(kind, path) == 1.0
