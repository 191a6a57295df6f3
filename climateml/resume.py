"""Exact resume: what Lightning does not do itself, in one place, and the Lightning internals it leans on.

Lightning's own machinery does most of it:

- the resume checkpoint is a :class:`~lightning.pytorch.callbacks.ModelCheckpoint` (``save_last``, every N
  optimiser steps: :class:`ResumeCheckpoint`), rewritten atomically by
  :class:`~climateml.callbacks.AtomicCheckpointIO`; Lightning restores weights, optimiser, schedulers, loop
  progress, callbacks and the DataModule's state from it;
- a pre-emption (SIGTERM) ends the fit through Lightning's own ``SIGTERMException`` and the checkpoint is
  written from ``on_exception`` (like ``ModelCheckpoint(save_on_exception=True)`` / ``OnExceptionCheckpoint``);
- on SLURM, Lightning's ``SLURMEnvironment(auto_requeue=True)`` saves ``hpc_ckpt_N.ckpt`` on SIGUSR1 and requeues
  the job (scripts/train_slurm.sbatch); ``climateml fit`` continues from the newer of the two files;
- the training loader is stateful (:class:`~climateml.data.base.ResumableDataLoader`: ``state_dict`` /
  ``load_state_dict``): Lightning stores its state in every checkpoint and gives it back before the resumed
  epoch's iteration starts, so the epoch continues with the next batch.

What remains ours, here: per-process random states, the running sums of the interrupted epoch's training
averages, early stopping's decision, metrics.csv up to the checkpoint (:class:`ResumeCheckpoint`), and the
plateau schedules' counters (:class:`ResumableSchedules`, a LightningModule mixin). They read Lightning state
that is not public API; :func:`check_lightning_internals` names each piece, runs when a fit starts, and is
tested (tests/test_resume.py), so a Lightning upgrade that moves one fails with the attribute's name instead of
resuming differently without a word.
"""

from __future__ import annotations

import csv
import importlib
import io
import random
import re
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torchmetrics
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torchmetrics.utilities.data import dim_zero_sum

from climateml.errors import check_positive
from climateml.writers import write_text

RESUME_FILENAME = "resume.ckpt"  # ResumeCheckpoint's file, by default in resume_checkpoint_dir(<run directory>)
INTERRUPTED_HISTORY = "metrics.csv.interrupted"  # metrics.csv of an interrupted run, kept while it resumes


# ---- the Lightning internals this module needs (checked at the start of every fit, and by a test) ----

#: (where, what for): attribute paths that exact resume reads, from the trainer (``trainer.``), the running
#: LightningModule (``module.``), the ModelCheckpoint class (``ModelCheckpoint.``) or an instance of it
#: (``checkpoint.``), and a torchmetrics Metric (``metric.``). Besides these, the stateful training loader
#: counts on Lightning fetching no batch ahead from a loader with a length (tests/test_resume.py checks it).
LIGHTNING_INTERNALS = (
    ("trainer.fit_loop.epoch_loop.batch_progress.is_last_batch", "no resume checkpoint at an epoch's last batch"),
    ("trainer.fit_loop.epoch_loop.batch_progress.current.ready", "a pre-emption is saved between two steps only"),
    ("trainer.fit_loop.epoch_loop.batch_progress.current.completed", "a pre-emption is saved between two steps only"),
    ("trainer.fit_loop.epoch_loop._results", "the interrupted epoch's logged training averages"),
    ("trainer.fit_loop.epoch_loop._batches_that_stepped", "metrics.csv is put back up to the checkpoint's step"),
    ("trainer.fit_loop.epoch_loop.update_lr_schedulers", "the plateau update Lightning skips in a resumed epoch"),
    ("trainer.fit_loop.epoch_loop._num_ready_batches_reached", "the plateau update Lightning skips in a resumed epoch"),
    ("trainer.fit_loop.restarting", "whether this fit resumed mid-epoch"),
    ("trainer.lr_scheduler_configs", "which schedules are plateau schedules, and what they monitor"),
    ("ModelCheckpoint._save_last_checkpoint", "ResumeCheckpoint writes its file as ModelCheckpoint's last"),
    ("ModelCheckpoint._monitor_candidates", "ResumeCheckpoint writes its file as ModelCheckpoint's last"),
    ("ModelCheckpoint._should_skip_saving_checkpoint", "no save under fast_dev_run, outside fit, twice a step"),
    ("checkpoint._last_global_step_saved", "the file is written again at the end of training"),
    ("metric._reductions", "the running sums of the module's torchmetrics"),
    ("metric._update_count", "the running sums of the module's torchmetrics"),
    ("metric._computed", "the running sums of the module's torchmetrics"),
    ("module._non_persistent_buffers_set", "a task's per-epoch running sums kept in non-persistent buffers"),
    ("module._buffers", "a task's per-epoch running sums kept in non-persistent buffers"),
)
#: what :func:`_epoch_sums` reads of each logged value in ``trainer.fit_loop.epoch_loop._results`` (checked on
#: the first logged value, once the fit has logged one)
RESULT_INTERNALS = ("is_tensor", "value", "cumulated_batch_size", "meta.fx", "meta.on_epoch", "meta.is_mean_reduction",
                    "meta.is_sum_reduction")
#: internals that other climateml modules use, by their import path: fetched with :func:`internal` (which fails
#: naming the path, never falls back) and checked with the ones above by :func:`check_lightning_internals`
IMPORTED_INTERNALS = {
    "lightning.pytorch.core.mixins.hparams_mixin._given_hyperparameters":
        "ClimateTask saves the init_args a LightningCLI config gave (load_from_checkpoint rebuilds the model from them)",
    "torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model":
        "ClimateTask keeps per-process non-persistent buffers out of DDP's buffer broadcast",
}


def _moved(path: str, part: str, why: str) -> AssertionError:
    return AssertionError(f"Lightning internal moved: {path} ({part!r} is gone) - climateml needs it ({why}); "
                          f"installed lightning {L.__version__}, torch {torch.__version__}, "
                          f"torchmetrics {torchmetrics.__version__}")


def _walk(node, parts: list[str], path: str, why: str):
    """The object reached from ``node`` through the attributes ``parts``; :func:`_moved` naming ``path`` at the first
    that is missing."""
    for part in parts:
        if not hasattr(node, part):
            raise _moved(path, part, why)
        node = getattr(node, part)
    return node


def internal(path: str):
    """The object at ``path``, one of :data:`IMPORTED_INTERNALS` (a module path, then attributes); an
    AssertionError naming the path and the missing part if the installed Lightning or torch moved it."""
    why = IMPORTED_INTERNALS[path]
    parts = path.split(".")
    node, i = None, len(parts)
    while i > 0:  # the longest prefix that imports as a module
        try:
            node = importlib.import_module(".".join(parts[:i]))
            break
        except ImportError:
            i -= 1
    if node is None:
        raise _moved(path, parts[0], why)
    return _walk(node, parts[i:], path, why)


def check_lightning_internals(trainer: L.Trainer) -> None:
    """Raise an AssertionError naming the first of :data:`LIGHTNING_INTERNALS` (then :data:`RESULT_INTERNALS`, then
    :data:`IMPORTED_INTERNALS`) that is missing (the installed Lightning, torch or torchmetrics moved it): exact
    resume would otherwise be silently inexact."""
    roots = {"trainer": trainer, "module": trainer.lightning_module, "ModelCheckpoint": ModelCheckpoint,
             "metric": torchmetrics.MeanMetric(), "checkpoint": ModelCheckpoint()}
    for path, why in LIGHTNING_INTERNALS:
        root, *parts = path.split(".")
        _walk(roots[root], parts, path, why)
    check_logged_results(trainer)
    for path in IMPORTED_INTERNALS:
        internal(path)


def check_logged_results(trainer: L.Trainer) -> None:
    """:data:`RESULT_INTERNALS` on the first value the fit has logged (nothing before it has logged one)."""
    logged = next(iter(trainer.fit_loop.epoch_loop._results.values()), None)
    if logged is not None:
        for p in RESULT_INTERNALS:
            _walk(logged, p.split("."), f"trainer.fit_loop.epoch_loop._results[...].{p}",
                  "the interrupted epoch's logged training averages")


def batches_done(trainer: L.Trainer) -> tuple[int, int]:
    """(batches the training epoch has started, batches it has completed): equal between two steps."""
    current = trainer.fit_loop.epoch_loop.batch_progress.current
    return int(current.ready), int(current.completed)


def resume_checkpoint_dir(run_dir: str | Path | None, dirpath: str | Path | None = None) -> Path:
    """Folder of the ResumeCheckpoint file: ``dirpath`` when given, else ``<run_dir>/checkpoints`` (the callback
    writes it there, as ModelCheckpoint does, and the CLI looks for an interrupted run there)."""
    return Path(dirpath) if dirpath else Path(run_dir) / "checkpoints"


# ---- finding the run a `climateml fit` left unfinished ----

def _get(ns, dotted: str, default=None):
    """A value of a (nested) jsonargparse Namespace or dict by dotted key; ``default`` if any part is missing."""
    node = ns
    for part in dotted.split("."):
        if node is None:
            return default
        try:
            node = node[part] if isinstance(node, dict) else getattr(node, part)
        except (KeyError, AttributeError, TypeError):
            return default
    return default if node is None else node


def _resume_callback_args(config) -> dict:
    """dirpath and filename of the config's ResumeCheckpoint (or its defaults)."""
    for cb in _get(config, "trainer.callbacks", []) or []:
        if str(_get(cb, "class_path", "")).endswith("ResumeCheckpoint"):
            return {"dirpath": _get(cb, "init_args.dirpath"),
                    "filename": _get(cb, "init_args.filename", RESUME_FILENAME)}
    return {"dirpath": None, "filename": RESUME_FILENAME}


def find_interrupted_run(config) -> tuple[int | str | None, Path, Path | None] | None:
    """(logger version, checkpoint, run directory) of the run a ``fit`` with this config left unfinished, or None.

    The run is the logger's explicit version, else its latest ``version_N`` folder (``save_dir/name``; the
    default logger's is ``default_root_dir/lightning_logs``); with ``logger: false``, ``default_root_dir``.
    It is unfinished if it still holds the ResumeCheckpoint file (deleted when a run ends). On SLURM, a
    newer ``hpc_ckpt_*.ckpt`` in default_root_dir (written by Lightning on SIGUSR1 before it requeued the
    job) wins: the checkpoint returned is then ``Path("hpc")``, and Lightning loads it itself.
    """
    args = _resume_callback_args(config)
    default_root = Path(_get(config, "trainer.default_root_dir", ".") or ".")
    logger = _get(config, "trainer.logger")
    version, run_dir, root = None, None, None
    if logger is False:
        run_dir = default_root
    elif logger is None or logger is True:
        root = default_root / "lightning_logs"
    elif _get(logger, "init_args.save_dir") is not None:
        root = Path(_get(logger, "init_args.save_dir")) / str(_get(logger, "init_args.name", "") or "")
        explicit = _get(logger, "init_args.version")
        if explicit not in (None, ""):
            version = explicit
            run_dir = root / (explicit if isinstance(explicit, str) else f"version_{explicit}")
    if run_dir is None and root is not None and root.is_dir():
        numbers = [int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := re.fullmatch(r"version_(\d+)", p.name))]
        if numbers:
            version = max(numbers)
            run_dir = root / f"version_{version}"
    if not args["dirpath"] and run_dir is None:
        return None
    ckpt = resume_checkpoint_dir(run_dir, args["dirpath"]) / args["filename"]
    if SLURMEnvironment.detect():
        hpc = sorted(default_root.glob("hpc_ckpt_*.ckpt"), key=lambda p: p.stat().st_mtime)
        if hpc and (not ckpt.is_file() or hpc[-1].stat().st_mtime > ckpt.stat().st_mtime):
            return version, Path("hpc"), run_dir
    return (version, ckpt, run_dir) if ckpt.is_file() else None


def continue_interrupted_run(config) -> None:
    """``climateml fit``: point ``config`` (the fit subcommand's, before instantiation) at the run this command
    left unfinished: its logger version (the same run directory) and its resume checkpoint; its metrics.csv is
    kept aside for :class:`ResumeCheckpoint` to put back. Nothing when ``--resume false``, ``--ckpt_path`` or
    ``--ensemble`` > 1 is given, or no run is unfinished."""
    if not config.get("resume", True) or config.get("ckpt_path") or int(config.get("ensemble") or 1) > 1:
        return
    found = find_interrupted_run(config)
    if found is None:
        return
    version, ckpt, run_dir = found
    if version is not None and _get(config, "trainer.logger.init_args") is not None:
        config["trainer"]["logger"]["init_args"]["version"] = version
    history = run_dir / "metrics.csv" if run_dir is not None else None
    if history is not None and history.is_file():  # CSVLogger empties it on opening the folder again
        write_text(history.read_text(), run_dir / INTERRUPTED_HISTORY)
    config["ckpt_path"] = None if str(ckpt) == "hpc" else str(ckpt)
    rank_zero_info(f"climateml: resuming the interrupted run (version {version}) from "
                   f"{'the SLURM hpc checkpoint' if str(ckpt) == 'hpc' else ckpt}; --resume false starts afresh")


class ResumeCheckpoint(ModelCheckpoint):
    """Fault tolerance: keeps ``<run>/checkpoints/resume.ckpt`` so an interrupted fit can continue exactly.

    A ModelCheckpoint that keeps only its "last" file (``save_top_k=0``, ``save_last=True``), written every
    ``every_n_train_steps`` optimiser steps (deferred by one step when that is an epoch's last batch), at the
    end of training, and when the fit stops on an exception raised between two steps (SIGTERM, e.g. a SLURM
    pre-emption: Lightning raises ``SIGTERMException``; the job then exits with status 143). ``climateml fit``
    started again with the same command finds the file and resumes (see :mod:`climateml.lightning_cli`); it
    deletes the file once the run, evaluation included, has finished.

    What makes the resumed run the uninterrupted one: the epoch's order depends only on (seed, epoch) and the
    stateful training loader continues the epoch (:mod:`climateml.data.base`); Lightning restores weights,
    optimiser, schedulers, loop progress and callbacks; this callback restores, per process, the global random
    state (dropout, augmentation drawn in the main process) and early stopping's decision, and flushes the
    loggers before each save so metrics.csv on disk reaches exactly as far as the checkpoint (the CLI puts
    those rows back when it resumes; CSVLogger would otherwise empty the file). The running sums of the
    interrupted epoch's training averages (Lightning's logged means, torchmetrics states, the module's
    non-persistent buffers) travel in the checkpoint too, per process, so even that epoch's logged averages
    are the uninterrupted run's. Not restored: random draws made inside DataLoader worker processes
    (augmentation with num_workers > 0). Under DDP a checkpoint is not written on an exception (the ranks may
    have stopped at different steps, and saving is collective): the run resumes from the last periodic one.

    Args:
        every_n_train_steps: optimiser steps between two checkpoints (>= 1).
        dirpath: folder of the file; default ``<run directory>/checkpoints``.
        filename: name of the file.
        save_on_signal: also save when the fit stops on an exception between two steps (SIGTERM).
    """

    def __init__(self, every_n_train_steps: int = 100, dirpath: str | None = None, filename: str = RESUME_FILENAME,
                 save_on_signal: bool = True):
        check_positive("ResumeCheckpoint.every_n_train_steps", every_n_train_steps)
        name = Path(filename)
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=True, every_n_train_steps=int(every_n_train_steps),
                         enable_version_counter=False, save_on_train_epoch_end=False)
        self.CHECKPOINT_NAME_LAST, self.FILE_EXTENSION = name.stem, name.suffix or ".ckpt"
        self.every_n_train_steps, self.filename_arg, self.save_on_signal = int(every_n_train_steps), name.name, save_on_signal
        self._checked_results = False
        self._trainer: L.Trainer | None = None
        self._due = False
        self._sums: dict | None = None
        self._restored: dict | None = None
        self._csv_before: tuple[Path, str] | None = None

    @property
    def state_key(self) -> str:
        return "ResumeCheckpoint"

    @property
    def path(self) -> Path | None:
        """Where the checkpoint is written (known once the trainer has set up)."""
        return Path(self.dirpath) / self.filename_arg if self.dirpath else None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)  # resolves dirpath as ModelCheckpoint does: <run>/checkpoints
        self._trainer = trainer
        if stage != "fit":
            return
        check_lightning_internals(trainer)
        self._due, self._checked_results = False, False
        # CSVLogger empties metrics.csv when it opens a run folder again; the CLI copied it aside when it chose
        # to resume, to be put back (up to the checkpoint) once training restarts
        self._csv_before = None
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                if isinstance(logger, CSVLogger):
                    saved = Path(logger.log_dir) / INTERRUPTED_HISTORY
                    if saved.is_file():
                        self._csv_before = (Path(logger.log_dir) / "metrics.csv", saved.read_text())
                        saved.unlink()

    # ---- saving: ModelCheckpoint's "last" file, on our schedule ----
    def _save(self, trainer: L.Trainer, same_step: bool = False) -> None:
        """Write the file; ``same_step``: even if it was written at this optimiser step already (at the end of
        training: the loops' state has moved on since, e.g. to the next epoch)."""
        if same_step:
            self._last_global_step_saved = -1
        if self._should_skip_saving_checkpoint(trainer):  # fast_dev_run, not fitting, already saved at this step
            return
        for logger in trainer.loggers:  # the logged history on disk reaches as far as the checkpoint
            logger.save()
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._checked_results:  # once per fit, now that the first batch has logged (the rest: in setup)
            check_logged_results(trainer)
            self._checked_results = True
        if self._sums is not None:
            self._add_back_epoch_sums(trainer, pl_module)
        step = trainer.global_step
        if step > 0 and step % self.every_n_train_steps == 0:
            self._due = True
        # never at an epoch's last batch: a run resumed there would log empty training averages for that epoch
        if self._due and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._save(trainer)
            self._due = False

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        """Nothing: saved on the schedule above only (ModelCheckpoint would save "last" again here)."""

    def on_validation_end(self, trainer, pl_module) -> None:
        """Nothing: saved on the schedule above only (ModelCheckpoint would save "last" again here)."""

    def on_train_end(self, trainer, pl_module) -> None:
        self._save(trainer, same_step=True)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """Save when the fit stops between two steps (Lightning's SIGTERMException after a pre-emption, Ctrl-C):
        the state is then a consistent one. An exception inside a step leaves the last periodic checkpoint."""
        if not self.save_on_signal or self._trainer is None or not trainer.training:
            return
        ready, completed = batches_done(trainer)
        if ready != completed:
            return
        if trainer.world_size > 1:
            rank_zero_warn(f"ResumeCheckpoint: {type(exception).__name__} under DDP: no checkpoint written now (the "
                           f"processes may have stopped at different steps); the run resumes from {self.path} "
                           f"as last written periodically")
            return
        self._save(trainer)

    def remove(self) -> None:
        """Delete the checkpoint (the CLI calls this once a run has finished, so the next fit starts afresh)."""
        if self.path is not None and (self._trainer is None or self._trainer.is_global_zero):
            self.path.unlink(missing_ok=True)

    # ---- what the checkpoint carries beside ModelCheckpoint's own state ----
    def state_dict(self) -> dict:
        """Per process: the random states and the running sums of the epoch's training averages; whether early
        stopping had decided to stop. (Called on every process when any checkpoint is saved.)"""
        trainer = self._trainer
        mine = {"rng": rng_states(), "epoch_sums": _epoch_sums(trainer)}
        ranks = [mine]
        if trainer is not None and trainer.world_size > 1 and torch.distributed.is_initialized():
            ranks = [None] * trainer.world_size
            torch.distributed.all_gather_object(ranks, mine)
        return {**super().state_dict(), "ranks": ranks,
                "should_stop": bool(trainer.should_stop) if trainer is not None else False}

    def load_state_dict(self, state_dict: dict) -> None:
        if "dirpath" in state_dict:  # a checkpoint written before ResumeCheckpoint was a ModelCheckpoint has none
            super().load_state_dict(state_dict)
        ranks = state_dict.get("ranks", [])
        rank = self._trainer.global_rank if self._trainer is not None else 0
        self._restored = dict(ranks[rank] if rank < len(ranks) else ranks[0]) if ranks else {}
        if self._trainer is not None:
            # early stopping had decided: a run resumed after that point does not train on
            self._trainer.should_stop = bool(state_dict.get("should_stop", False))

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        if self._restored is not None:
            if "rng" in self._restored:
                set_rng_states(self._restored["rng"])  # the next draw is the one the uninterrupted run made
            self._sums = self._restored.get("epoch_sums") if trainer.fit_loop.restarting else None
            for name, value in (self._sums or {}).get("buffers", {}).items():
                buf = pl_module.get_buffer(name)  # raises, naming the buffer, if the module no longer has it
                if buf.shape != value.shape:
                    raise ValueError(f"ResumeCheckpoint: buffer {name} has shape {tuple(buf.shape)}, the checkpoint's "
                                     f"running sum {tuple(value.shape)}: resume with the same model options")
                buf.copy_(value)
            self._restored = None
            self._restore_metrics_csv(trainer)
            self._remove_checkpoints_after_resume_point(trainer)
        self._csv_before = None

    def on_fit_end(self, trainer, pl_module) -> None:
        # resumed from the checkpoint written at the end of training (killed during test or evaluation):
        # the fit loop had nothing left to do and on_train_start never ran
        if self._restored is not None:
            self._restored = None
            self._restore_metrics_csv(trainer)
        self._csv_before = None

    def _remove_checkpoints_after_resume_point(self, trainer: L.Trainer) -> None:
        """Checkpoints the interrupted run wrote after its resume checkpoint (a new best, say) are unknown to the
        restored ModelCheckpoints; they would linger (or make the redone save take a ``-v1`` name): delete them."""
        if not trainer.is_global_zero or self.dirpath is None:
            return
        folder = Path(self.dirpath).resolve()
        known, watched = {str(self.path.resolve())}, False
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb is not self and cb.dirpath and Path(cb.dirpath).resolve() == folder:
                watched = True
                known |= {str(Path(p).resolve()) for p in [*cb.best_k_models, cb.best_model_path, cb.last_model_path,
                                                           cb.kth_best_model_path] if p}
        if watched:
            for f in folder.glob("*.ckpt"):
                if str(f.resolve()) not in known:
                    f.unlink(missing_ok=True)

    def _add_back_epoch_sums(self, trainer, pl_module) -> None:
        """After the first batch of a resumed epoch: add what the batches before the checkpoint had summed into
        the epoch's training averages (Lightning's logged values and the module's torchmetrics). A key logged
        before the checkpoint and not in this batch is still summed: it is logged at its next batch."""
        sums, self._sums = self._sums, None
        results = trainer.fit_loop.epoch_loop._results
        for key, (value, count) in sums.get("results", {}).items():
            item = results.get(key)
            if item is None:
                rank_zero_warn(f"ResumeCheckpoint: {key} was logged before the checkpoint but not in the resumed "
                               f"epoch's first batch: its epoch average covers the batches after the restart only")
                continue
            item.value = item.value + value.to(item.value.device, item.value.dtype)
            if count is not None:
                item.cumulated_batch_size = item.cumulated_batch_size + count.to(item.cumulated_batch_size.device)
        for name, states in sums.get("metrics", {}).items():
            metric = pl_module.get_submodule(name)
            for k, v in states.items():
                setattr(metric, k, getattr(metric, k) + v.to(getattr(metric, k).device))
            metric._computed = None

    def _restore_metrics_csv(self, trainer: L.Trainer) -> None:
        """Put back the rows the interrupted run logged up to its checkpoint (later ones are logged again)."""
        if self._csv_before is None:
            return
        csv_path, text = self._csv_before
        resumed_step = trainer.fit_loop.epoch_loop._batches_that_stepped  # the step of the checkpoint's last batch
        rows = list(csv.DictReader(io.StringIO(text)))
        keep = [r for r in rows if _as_step(r.get("step")) <= resumed_step]
        fields = sorted({k for r in rows for k in r})
        writers = [logger.experiment for logger in trainer.loggers  # opening it (first use) empties the file:
                   if isinstance(logger, CSVLogger) and Path(logger.log_dir) / "metrics.csv" == csv_path]  # before
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        writer.writerows(keep)
        write_text(out.getvalue(), csv_path)
        for experiment in writers:  # it appends to the file: it must know the columns already there
            experiment.metrics_keys = sorted(set(experiment.metrics_keys) | set(fields))


def _epoch_sums(trainer: L.Trainer | None) -> dict:
    """The running sums behind this epoch's training averages: Lightning's logged tensors (sum and sample
    count of each mean), the states of the module's torchmetrics that reduce by summing, and the module's
    non-persistent buffers (state a task keeps out of its weights, e.g. an epoch's running sums)."""
    sums: dict = {"results": {}, "metrics": {}, "buffers": {}}
    if trainer is None or not trainer.training:
        return sums
    for prefix, module in trainer.lightning_module.named_modules():
        for name in module._non_persistent_buffers_set:
            buf = module._buffers.get(name)
            if isinstance(buf, torch.Tensor):
                sums["buffers"][f"{prefix}.{name}" if prefix else name] = buf.detach().cpu().clone()
    for key, item in trainer.fit_loop.epoch_loop._results.items():
        if not item.is_tensor or not item.meta.on_epoch or item.meta.fx == "on_train_epoch_end":
            continue  # (a value logged once at the epoch's end is no running sum)
        if item.meta.is_mean_reduction:
            sums["results"][key] = [item.value.detach().cpu(), item.cumulated_batch_size.detach().cpu()]
        elif item.meta.is_sum_reduction:
            sums["results"][key] = [item.value.detach().cpu(), None]
    for name, module in trainer.lightning_module.named_modules():
        if isinstance(module, torchmetrics.Metric) and module._update_count > 0:
            sums["metrics"][name] = {k: getattr(module, k).detach().cpu() for k, fx in module._reductions.items()
                                     if fx is dim_zero_sum and isinstance(getattr(module, k), torch.Tensor)}
    return sums


def rng_states() -> dict:
    """The global random states of torch (CPU and CUDA), numpy and Python, as tensors and plain types only
    (so a checkpoint holding them still loads with ``torch.load(weights_only=True)``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "torch.cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [str(kind), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                      float(cached)],
            "python": [int(version), torch.tensor(state, dtype=torch.int64), gauss]}


def set_rng_states(states: dict) -> None:
    """Restore what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"])
    if states.get("torch.cuda") and torch.cuda.is_available() and len(states["torch.cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["torch.cuda"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, state, gauss = states["python"]
    random.setstate((version, tuple(int(v) for v in state.tolist()), gauss))


def _as_step(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("inf")


class ResumableSchedules:
    """LightningModule mixin: plateau schedules step once per validation run, and stay on course across a resume.

    Lightning steps an epoch-interval ReduceLROnPlateau at every epoch end; when validation runs every N
    optimiser steps (``check_val_every_n_epoch: null``) a small data set has several epochs per validation,
    and the schedule would count the same validation loss as several non-improvements. So the module counts
    its validation runs and steps a plateau schedule once per run (:meth:`lr_scheduler_step`).

    Lightning (2.x) does not update plateau schedules at the end of the epoch a run resumed in (its fit loop is
    still "restarting" then; always, when max_steps is set), and keeps logged metrics out of checkpoints, so a
    plateau schedule has nothing to compare after a resume until the next validation. A resumed run would
    miss one schedule step, and its learning rate, and with it the final metrics, would differ from an
    uninterrupted run's. So the last value of each monitored metric travels in the checkpoint and is put back
    when the resumed run starts (unless a newer one was logged), and the plateau update Lightning skips is made
    at the end of the resumed epoch. (Other epoch schedules are updated by Lightning's epoch loop and need
    nothing.) The validation counters travel in the checkpoint too: a resumed run carries on with the
    interrupted run's counts, so a validation saved before the schedule had stepped for it is still stepped
    for. Module hooks, not a callback: every callback costs Lightning several hook calls per step.
    Subclasses that override these hooks call super().
    """

    MONITORED_KEY = "climateml_monitored"
    PLATEAU_COUNTERS_KEY = "climateml_plateau_counters"
    _validations = 0  # validation runs so far (a plateau schedule steps once per run, see lr_scheduler_step)
    _plateau_steps = 0  # ... and the one the plateau schedule last stepped for

    def _plateau_monitors(self) -> list[str]:
        configs = self._trainer.lr_scheduler_configs if self._trainer is not None else []
        return [c.monitor for c in configs
                if isinstance(c.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and c.monitor]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self._trainer is not None:
            logged = self._trainer.callback_metrics
            checkpoint[self.MONITORED_KEY] = {k: float(logged[k]) for k in self._plateau_monitors() if k in logged}
        checkpoint[self.PLATEAU_COUNTERS_KEY] = {"validations": int(self._validations),
                                                 "plateau_steps": int(self._plateau_steps)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the monitored values and the plateau counters; a checkpoint written before the counters were
        saved starts them at 0."""
        super().on_load_checkpoint(checkpoint)
        self._restored_monitored = dict(checkpoint.get(self.MONITORED_KEY) or {})
        counters = checkpoint.get(self.PLATEAU_COUNTERS_KEY) or {}
        self._validations = int(counters.get("validations", 0))
        self._plateau_steps = int(counters.get("plateau_steps", 0))

    def on_train_start(self) -> None:
        super().on_train_start()
        logged = self.trainer.callback_metrics
        for key, value in self.__dict__.pop("_restored_monitored", {}).items():
            logged.setdefault(key, torch.tensor(value))

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        loop = self.trainer.fit_loop
        if loop.restarting and loop.epoch_loop._num_ready_batches_reached():
            # where the fit loop would have, uninterrupted
            loop.epoch_loop.update_lr_schedulers("epoch", update_plateau_schedulers=True)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if not self.trainer.sanity_checking:
            self._validations += 1

    def lr_scheduler_step(self, scheduler, metric) -> None:
        """Step a plateau schedule once per validation run, however often Lightning asks."""
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if self._plateau_steps >= self._validations:
                return
            self._plateau_steps = self._validations
        super().lr_scheduler_step(scheduler, metric)
