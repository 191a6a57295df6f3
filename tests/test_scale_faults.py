"""Fault tolerance: a fit killed with SIGKILL mid-epoch (or pre-empted with SIGTERM) and started again with the
same command ends exactly like an uninterrupted one; a writer killed mid-write leaves the old file intact."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from climateml.writers import write_dataset, write_text
from test_scale_common import REPO, make_data, read_csv, run_cli, run_dir, task_args

# ---- kill and resume ----

RESUME = {  # case: (task, signal, checkpoint every N steps, signal after step)
    "temperature": ("temperature", "SIGKILL", 4, 13),  # 24 steps, 19 per epoch: killed in epoch 0, checkpoint at 12
    "segmentation": ("segmentation", "SIGKILL", 3, 5),  # 2 epochs of 4 steps: killed in epoch 1, checkpoint at 3
    "temperature-preempted": ("temperature", "SIGTERM", 100, 13),  # pre-emption: saved at step 13 on SIGTERM
    "temperature-in-evaluation": ("temperature", "SIGKILL", 100, "test"),  # trained, killed before test/evaluation
}


@pytest.mark.parametrize("case", list(RESUME))
def test_killed_fit_resumes_with_the_same_command_and_ends_the_same(case, tmp_path):
    task, sig, every, kill_at = RESUME[case]
    extra: list[str] = []
    data = make_data(task, tmp_path / "data")

    def args(runs: Path) -> list[str]:
        return [*task_args(task, data, runs), *extra, "--trainer.callbacks+=test_scale_common.KillAtStep",
                "--trainer.callbacks+=climateml.callbacks.ResumeCheckpoint",
                "--trainer.callbacks.every_n_train_steps", str(every)]

    whole = run_cli(args(tmp_path / "whole"), tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]

    command = args(tmp_path / "killed")
    first = run_cli(command, tmp_path, env={"CLIMATEML_KILL_AT_STEP": str(kill_at), "CLIMATEML_KILL_SIGNAL": sig})
    expected = -signal.SIGKILL if sig == "SIGKILL" else 143  # on SIGTERM: save, stop, exit 128 + 15
    assert first.returncode == expected, (first.returncode, first.stderr[-2000:])
    killed = run_dir(tmp_path / "killed", task)
    assert (killed / "checkpoints" / "resume.ckpt").is_file() and not (killed / "metrics.json").exists()

    again = run_cli(command, tmp_path)  # the same command, no kill this time
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

WRITERS = {
    "netcdf": "write_dataset(xr.Dataset({'v': (('t', 'x'), np.full((4000, 5000), 2.0, 'f4'))}), path)",
    "zarr": "write_dataset(xr.Dataset({'v': (('t', 'x'), np.full((4000, 5000), 2.0, 'f4'))}).chunk({'t': 250}), path)",
    "text": "write_text('2' * 300_000_000, path)",
    "checkpoint": "AtomicCheckpointIO().save_checkpoint({'w': torch.full((20_000_000,), 2.0)}, path)",
}


def _old_content(kind: str, path: Path) -> None:
    from climateml.callbacks import AtomicCheckpointIO

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
    script = textwrap.dedent(f"""
        import numpy as np, torch, xarray as xr
        from pathlib import Path
        from climateml.writers import write_dataset, write_text
        from climateml.callbacks import AtomicCheckpointIO
        path = Path(r"{path}")
        while True:
            {WRITERS[kind]}
    """)
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # wait until the temporary file is being written, then kill
            partial = [p for p in path.parent.glob(f".{path.name}.*/{path.name}")]
            if partial and (partial[0].is_dir() or partial[0].stat().st_size > 0):
                break
            time.sleep(0.005)
        else:
            pytest.fail("the writer never started writing")
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    assert _check_intact(kind, path) in (1.0, 2.0)
    leftovers = list(path.parent.glob(f".{path.name}.*"))
    assert leftovers  # the killed write's temporary ...
    _old_content(kind, path)  # ... is removed by the next write to the same path
    assert not list(path.parent.glob(f".{path.name}.*")) and _check_intact(kind, path) == 1.0
