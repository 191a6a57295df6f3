"""Shared by the test_scale_* files (no tests here): tiny data for the three tasks, ``climateml`` run in a
subprocess exactly as a user types it, and the callbacks those subprocesses load from this folder.

The subprocesses find this module through PYTHONPATH (this folder), so a config can name
``test_scale_common.RecordSamples`` like any other callback.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
CONFIGS = REPO / "configs"
TASKS = ("temperature", "segmentation", "nowcasting")


# ---- tiny data and the command-line overrides that point a task's config at it ----

def make_data(task: str, root: Path) -> Path:
    """Small sample data for ``task`` under ``root`` (written once; seconds)."""
    out = root / task
    if out.exists():
        return out
    if task == "temperature":
        from climateml.data.synthetic import Grid, generate_climatebench

        generate_climatebench(out, grid=Grid(8, 12), progress=False)
    elif task == "segmentation":
        from climateml.data.synthetic.climatenet import generate_climatenet

        generate_climatenet(out, n_dates=16, nlat=16, nlon=24, seed=0, n_double_labelled=0)
    else:
        from climateml.data.synthetic.radar import generate_radar

        generate_radar(out, n_frames=96, ny=24, nx=24, timestep_minutes=5, seed=3)  # rain in every period
    return out


def task_args(task: str, data: Path, runs: Path, steps: int | None = None) -> list[str]:
    """``climateml fit`` arguments: the task's config on tiny data, a tiny network, no figures, runs under
    ``runs``; and what makes runs with different process counts comparable sample by sample: no random
    augmentation, GroupNorm (BatchNorm's statistics depend on how a batch is split over processes, and
    SyncBatchNorm needs GPUs), losses that are means over samples (cross entropy without class weights,
    no soft-CSI term: a loss normalised per batch, such as Jaccard or class-weighted cross entropy, is
    averaged over the processes' halves under DDP, which differs slightly from one value over the batch),
    and SGD for the U-Nets (Adam turns float-rounding noise in near-zero gradients into full-size steps)."""
    common = ["--config", str(CONFIGS / f"{task}.yaml"), "--trainer.logger.init_args.save_dir", str(runs),
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
              "--trainer.log_every_n_steps", "1"]
    if task == "temperature":
        return common + ["--data.data_dir", str(data), "--data.batch_size", "32",
                         "--trainer.max_steps", str(steps or 24), "--trainer.val_check_interval", "8",
                         "--evaluation.init_args.baselines", "[linear]", "--evaluation.init_args.make_figures", "false"]
    if task == "segmentation":
        return common + ["--data.data_dir", str(data), "--data.batch_size", "2", "--data.crop", "[]",
                         "--data.shift_lon", "false", "--data.flip_lat", "false",
                         "--data.val_fraction", "0.25", "--data.test_fraction", "0.25",
                         "--data.class_weighting", "none", "--model.loss", "cross_entropy",
                         "--model.optimizer", "sgd", "--model.lr", "0.05",
                         "--model.depth", "1", "--model.width", "4", "--model.norm", "group",
                         "--trainer.max_epochs", "2", "--evaluation.init_args.make_figures", "false"]
    # nowcasting: the U-Net on this data amplifies float-rounding differences within a few steps (the same
    # steps taken in one process on a batch and on its two halves diverge just as much), so one step per
    # epoch: batch 20 of the 40 training windows
    return common + ["--data.paths", str(data), "--data.batch_size", "20", "--data.augment", "false",
                     "--data.train_period", '["2024-06-01T00:00", "2024-06-01T04:55"]',
                     "--data.val_period", '["2024-06-01T05:00", "2024-06-01T06:25"]',
                     "--data.test_period", '["2024-06-01T06:30", "2024-06-01T07:55"]',
                     "--model.csi_weight", "0", "--model.optimizer", "sgd", "--model.lr", "0.005", "--model.depth", "1", "--model.width", "4", "--model.norm", "group",
                     "--trainer.max_epochs", "2",
                     "--evaluation.init_args.baselines", "[persistence]", "--evaluation.init_args.make_figures", "false"]


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``climateml fit <args>`` in a fresh process (as a user runs it); this folder on PYTHONPATH."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")]),
                "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "climateml.cli", "fit", *args]
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def run_dir(runs: Path, task: str, version: int = 0) -> Path:
    return runs / task / f"version_{version}"


def read_csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def last_value(rows: list[dict], key: str) -> float:
    """The last logged value of ``key`` in metrics.csv rows."""
    values = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
    assert values, f"{key} was never logged"
    return values[-1]


# ---- callbacks the subprocesses load ----

def sample_fingerprint(batch: dict) -> list[str]:
    """One short hash per sample of a batch, from its target (and input): equal samples, equal hashes."""
    out = []
    for i in range(len(batch["y"])):
        h = hashlib.sha1(np.ascontiguousarray(batch["y"][i].detach().cpu().float().numpy()).tobytes())
        if "x" in batch:
            h.update(np.ascontiguousarray(batch["x"][i].detach().cpu().float().numpy()).tobytes())
        out.append(h.hexdigest()[:16])
    return out


class RecordSamples(L.Callback):
    """Writes, per process, what it trained on: the sampler's indices and a fingerprint of every sample of
    every training batch, per epoch; its rank, world size and peak resident memory; the final weights.
    Output: ``$CLIMATEML_RECORD_DIR/rank<r>.json`` and ``rank<r>.pt``."""

    def __init__(self):
        self.epochs: dict[int, dict] = {}
        self.initial: dict | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self.initial = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        sampler = trainer.train_dataloader.sampler
        self.epochs[trainer.current_epoch] = {"indices": [int(i) for i in sampler.shard()], "fingerprints": []}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.epochs[trainer.current_epoch]["fingerprints"] += sample_fingerprint(batch)

    def on_fit_end(self, trainer, pl_module) -> None:
        out = Path(os.environ["CLIMATEML_RECORD_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        rank = trainer.global_rank
        record = {"rank": rank, "world_size": trainer.world_size,
                  "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "epochs": {str(k): v for k, v in self.epochs.items()}}
        (out / f"rank{rank}.json").write_text(json.dumps(record))
        torch.save({"initial": self.initial, "final": {k: v.detach().cpu() for k, v in pl_module.state_dict().items()}},
                   out / f"rank{rank}.pt")


class KillAtStep(L.Callback):
    """Sends its own process ``$CLIMATEML_KILL_SIGNAL`` (default SIGKILL: a hard crash, no handler runs;
    SIGTERM: a pre-emption) right after optimiser step ``$CLIMATEML_KILL_AT_STEP``, if that is set; with
    ``test`` instead of a step, SIGKILL when training is over and testing starts."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        at = os.environ.get("CLIMATEML_KILL_AT_STEP")
        if at and at.isdigit() and trainer.global_step == int(at):
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), getattr(signal, os.environ.get("CLIMATEML_KILL_SIGNAL", "SIGKILL")))

    def on_test_start(self, trainer, pl_module) -> None:
        if os.environ.get("CLIMATEML_KILL_AT_STEP") == "test":  # training done, killed before the evaluation
            os.kill(os.getpid(), signal.SIGKILL)
