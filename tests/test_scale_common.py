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

        generate_radar(out, n_frames=96, ny=24, nx=24, timestep_minutes=5, seed=3, progress=False)  # rain in every period
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
    # nowcasting: one step per epoch: batch 20 of the 40 training windows (the 60 frames' windows of 4 + 6
    # frames, less those that include one of the two missing frames)
    return common + ["--data.paths", str(data), "--data.batch_size", "20", "--data.augment", "false",
                     "--data.train_period", '["2024-06-01T00:00", "2024-06-01T04:55"]',
                     "--data.val_period", '["2024-06-01T05:00", "2024-06-01T06:25"]',
                     "--data.test_period", '["2024-06-01T06:30", "2024-06-01T07:55"]',
                     "--model.csi_weight", "0", "--model.optimizer", "sgd", "--model.lr", "0.005", "--model.depth", "1", "--model.width", "4", "--model.norm", "group",
                     "--trainer.max_epochs", "2",
                     "--evaluation.init_args.baselines", "[persistence]", "--evaluation.init_args.make_figures", "false"]


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 300,
            torchrun: int = 0) -> subprocess.CompletedProcess:
    """``climateml fit <args>`` in a fresh process (as a user runs it); this folder on PYTHONPATH. With ``torchrun``
    N: ``torchrun --standalone --nproc_per_node N`` starts N such processes at once (their output is torchrun's).

    A fresh interpreter imports torch and Lightning again (~8 s on two cores): only for what needs one, such
    as DDP, whose launcher starts the other ranks by running the command line again. Otherwise use
    :func:`run_forked`."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")]),
                "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(torchrun)] if torchrun else []
    cmd = [sys.executable, *launcher, "-m", "climateml.cli", "fit", *args]
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def run_forked(target, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``target()`` in a child process forked from this one: a process of its own (it may be killed, or kill
    itself, mid-run, and its global state does not leak into the tests), without a new interpreter's imports.

    ``target``: a callable returning the exit status, or a list of ``climateml fit`` arguments (the command
    line's ``main``). The child runs in ``cwd`` with ``env`` added to its environment, one torch thread (as
    :func:`run_cli`'s ``OMP_NUM_THREADS=1``; one thread is also what makes a forked child safe to use OpenMP),
    Lightning's messages on stderr as in a fresh process. Returns its exit status (minus the signal number if
    a signal ended it), stdout and stderr; a child still running after ``timeout`` seconds is killed and
    raises ``subprocess.TimeoutExpired``.
    """
    import logging
    import tempfile
    import time
    import traceback

    if isinstance(target, (list, tuple)):
        argv = ["fit", *target]

        def target():
            from climateml.cli import main

            return main(argv)

    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            rc = 1
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout = open(1, "w", buffering=1, closefd=False)
                sys.stderr = open(2, "w", buffering=1, closefd=False)
                os.chdir(cwd)
                os.environ.update(env or {})
                torch.set_num_threads(1)
                for name in ("lightning.pytorch", "lightning.fabric"):  # as Lightning sets itself up in a fresh process
                    log = logging.getLogger(name)
                    log.handlers, log.propagate = [logging.StreamHandler(sys.stderr)], False
                    log.setLevel(logging.INFO)
                rc = target()
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
                rc = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(rc if isinstance(rc, int) else 1)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise subprocess.TimeoutExpired(f"forked {target}", timeout)
            time.sleep(0.02)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(target, os.waitstatus_to_exitcode(status), out.read(), err.read())


def run_dir(runs: Path, task: str, version: int = 0) -> Path:
    return runs / task / f"version_{version}"


def read_csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def logged_values(rows: list[dict], key: str) -> list[float]:
    """Every logged value of ``key`` in metrics.csv rows, in order (it must have been logged)."""
    values = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
    assert values, f"{key} was never logged"
    return values


def first_value(rows: list[dict], key: str) -> float:
    """The first logged value of ``key`` in metrics.csv rows."""
    return logged_values(rows, key)[0]


def last_value(rows: list[dict], key: str) -> float:
    """The last logged value of ``key`` in metrics.csv rows."""
    return logged_values(rows, key)[-1]


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


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, MiB (a forked child's starts at its parent's current RSS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


class RecordSamples(L.Callback):
    """Writes, per process, what it trained on: the sampler's indices and a fingerprint of every sample of
    every training batch, per epoch; its rank, world size, peak resident memory and how much the run added
    to it (data, model, training: the imports before it left out); the initial and final
    weights, and the gradients the first optimiser step applied (under DDP: after they were averaged over
    the processes). Output: ``$CLIMATEML_RECORD_DIR/rank<r>.json`` and ``rank<r>.pt``."""

    def __init__(self):
        self.epochs: dict[int, dict] = {}
        self.initial: dict | None = None
        self.first_gradients: dict | None = None
        self.peak_rss_at_start = peak_rss_mib()  # built with the trainer: after the imports, before any data

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.first_gradients is None:  # called after backward, so after DDP's all-reduce of the gradients
            self.first_gradients = {n: p.grad.detach().cpu().clone() for n, p in pl_module.named_parameters()
                                    if p.grad is not None}

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
        from climateml.data.base import _fitted_by_the_launcher

        record = {"rank": rank, "world_size": trainer.world_size,
                  # statistics this process fitted through fit_once, and those the DDP launcher handed down
                  "fitted": sorted(trainer.datamodule._fitted), "handed_down": sorted(_fitted_by_the_launcher()),
                  "fitted_by": sorted(set(trainer.datamodule.fitted_by.values())),
                  "max_rss_mib": peak_rss_mib(), "rss_growth_mib": peak_rss_mib() - self.peak_rss_at_start,
                  "epochs": {str(k): v for k, v in self.epochs.items()}}
        (out / f"rank{rank}.json").write_text(json.dumps(record))
        torch.save({"initial": self.initial, "final": {k: v.detach().cpu() for k, v in pl_module.state_dict().items()},
                    "first_gradients": self.first_gradients}, out / f"rank{rank}.pt")


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
