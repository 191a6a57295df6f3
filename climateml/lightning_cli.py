"""The Lightning side of the ``climateml`` command: ``fit``, ``validate``, ``test`` and ``predict`` (LightningCLI).

Imported only by the subcommands that train or predict (:mod:`climateml.cli` dispatches), so ``climateml
--help`` and ``climateml synth`` start without importing Lightning.

``fit`` trains (``--ensemble N``: N members with seeds seed, seed+1, ...) and ends by running the task's
evaluation (the YAML's ``evaluation:``) on the best weights: metrics.json, predictions and figures in the run
directory. ``predict`` writes the predict split as NetCDF through :class:`~climateml.callbacks.NetCDFPredictionWriter`
(added when the config lists none) into ``<run directory>/predictions``. Each subcommand prints its run directory.

Scale, from the config alone (see scripts/ for launch scripts):

- GPUs and DDP: ``trainer.accelerator``, ``devices``, ``num_nodes``, ``strategy: ddp``, ``precision``.
  Under DDP every process trains and tests on its shard; then, when the evaluation streams (its DataModule
  serves batches as xarray: :meth:`~climateml.evaluation.base.Evaluation.streams`), every process scores its
  shard and writes its part of the predictions, the sums are added across them, and global rank 0 writes
  metrics.json, merges the predictions and draws the figures; any other evaluation runs once, on global rank 0.
- Fault tolerance: ``fit`` keeps ``<run>/checkpoints/resume.ckpt`` up to date (:class:`~climateml.resume.ResumeCheckpoint`,
  a ModelCheckpoint, added if the config lists none; ``every_n_train_steps`` is set there). Started again with the same
  command after a kill or pre-emption, ``fit`` finds the latest run of its logger left unfinished and
  continues it in the same run directory (``--resume false`` starts afresh instead). On SLURM, a newer
  ``hpc_ckpt_*.ckpt`` that Lightning wrote on SIGUSR1 before requeueing the job is used instead.
- Every checkpoint is written atomically (:class:`AtomicCheckpointIO`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningCLI, instantiate_class
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import ParallelStrategy

from climateml.callbacks import AtomicCheckpointIO, NetCDFPredictionWriter
from climateml.data.base import hand_down_fitted
from climateml.errors import ConfigError
from climateml.evaluation.base import Evaluation
from climateml.resume import RESUME_FILENAME, ResumeCheckpoint, continue_interrupted_run


class ClimateCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--ensemble", type=int, default=1,
                            help="fit: train this many members with seeds seed_everything + 0, 1, ...")
        parser.add_argument("--resume", type=bool, default=True,
                            help="fit: continue the latest run of the logger if it was interrupted (it still has "
                                 f"checkpoints/{RESUME_FILENAME}); false: always start a new run")
        parser.add_subclass_arguments(Evaluation, "evaluation", required=False,
                                      help="how fit scores the trained model against the task's baselines")
        # the one data -> model link: sizes, names and training statistics travel in the DataModule's spec
        parser.link_arguments("data.spec", "model.init_args.spec", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        """fit: pick up the run this command left unfinished (same run directory, its resume checkpoint). Every
        subcommand: under srun or torchrun, connect the processes before the DataModule is built
        (:func:`connect_processes_started_outside`)."""
        if self.subcommand == "fit":
            continue_interrupted_run(self.config["fit"])
        if self.subcommand is not None:
            connect_processes_started_outside(self.config[self.subcommand]["trainer"])

    def instantiate_trainer(self, **kwargs):
        """The config's Trainer, with checkpoints written atomically, a ResumeCheckpoint (for fit) and, for
        predict, a NetCDFPredictionWriter when the config has no prediction writer: predict always writes files."""
        trainer = super().instantiate_trainer(**kwargs)
        strategy = trainer.strategy
        if (self.datamodule is not None and isinstance(strategy, ParallelStrategy) and strategy.cluster_environment
                and not strategy.cluster_environment.creates_processes_externally):
            # Lightning's launcher will start the other processes, and the DataModule is built (its spec linked):
            # they fit nothing again (processes srun or torchrun started were connected before building theirs)
            hand_down_fitted(self.datamodule, trainer.world_size)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if not any(isinstance(c, ResumeCheckpoint) for c in trainer.callbacks):
            trainer.callbacks.append(ResumeCheckpoint())  # inert outside fit; test/predict load its state quietly
        if self.subcommand == "predict" and not any(isinstance(c, BasePredictionWriter) for c in trainer.callbacks):
            trainer.callbacks.append(NetCDFPredictionWriter())
        return trainer

    def _print_run_directory(self) -> None:
        if self.trainer.is_global_zero:
            print(f"\nrun directory: {Path(self.trainer.log_dir or self.trainer.default_root_dir)}")

    after_validate = after_test = after_predict = _print_run_directory

    def _finish_run(self) -> None:
        """The run is complete: delete its resume checkpoint, so the same command next time starts a new run."""
        for cb in self.trainer.callbacks:
            if isinstance(cb, ResumeCheckpoint):
                cb.remove()

    def predict(self, model, datamodule=None, return_predictions=None, ckpt_path=None, **kwargs):
        """``Trainer.predict``, holding no predictions when every prediction writer writes batch by batch (ours
        does): the written files are the result, so a predict split larger than memory is never held."""
        writers = [c for c in self.trainer.callbacks if isinstance(c, BasePredictionWriter)]
        if return_predictions is None and writers and all(w.interval.on_batch for w in writers):
            return_predictions = False
        return self.trainer.predict(model, datamodule=datamodule, return_predictions=return_predictions,
                                    ckpt_path=ckpt_path, **kwargs)

    def fit(self, model, datamodule=None, ckpt_path=None, **kwargs) -> None:
        config = self.config[self.subcommand]
        n_members = int(config.get("ensemble", 1))
        if n_members < 1:
            raise ConfigError(f"--ensemble must be at least 1, got {n_members}")
        if n_members > 1 and ckpt_path:
            raise ConfigError("--ckpt_path resumes one run; it cannot be combined with --ensemble > 1")
        seed = config.get("seed_everything")
        seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else 0
        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        members, histories = [], {}
        for i in range(n_members):
            if i > 0:
                seed_everything(seed + i, workers=True)
                self.instantiate_classes()
            if n_members > 1:
                self.trainer.loggers = [CSVLogger(run_dir, name="", version=f"member_{i}")]
            self.trainer.fit(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path)
            self.trainer.test(self.model, datamodule=self.datamodule)
            members.append(self.model)
            if getattr(self.trainer.logger, "log_dir", None):  # none under fast_dev_run (a DummyLogger)
                histories[f"member {i}" if n_members > 1 else "model"] = Path(self.trainer.logger.log_dir) / "metrics.csv"
            if n_members > 1:
                self._finish_run()
        evaluation = self.config_init[self.subcommand].get("evaluation")
        accelerator = "gpu" if self.trainer.strategy.root_device.type == "cuda" else "cpu"
        result = None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # DDP: every process has trained and tested. A streaming evaluation runs on every rank, each scoring
            # its shard (the sums are reduced, rank 0 writes); otherwise rank 0 evaluates alone, below. Then no
            # collective call is left, so the processes part here (and exit cleanly)
            self.trainer.strategy.barrier("climateml fit done")
            if evaluation is not None and evaluation.streams(self.datamodule):
                result = evaluation.run(members, self.datamodule, run_dir, histories, accelerator=accelerator)
            torch.distributed.destroy_process_group()
        if not self.trainer.is_global_zero:
            return
        print(f"\nrun directory: {run_dir}")
        if evaluation is None:
            print("  no `evaluation:` in the config: metrics.json and figures were not written")
            self._finish_run()
            return
        if result is None:
            result = evaluation.run(members, self.datamodule, run_dir, histories, accelerator=accelerator)
        print("\n".join(evaluation.summary(result)))
        self._finish_run()


#: the Trainer arguments that decide its strategy, its cluster environment and so its process group
_CONNECTION_ARGUMENTS = ("accelerator", "devices", "num_nodes", "strategy", "plugins")


def _instantiated(value):
    """A config value given as ``{class_path, init_args}`` (or a list of them) as the object; others as they are."""
    if isinstance(value, (list, tuple)):
        return [_instantiated(v) for v in value]
    as_dict = value.as_dict() if hasattr(value, "as_dict") else value
    if isinstance(as_dict, dict) and "class_path" in as_dict:  # its arguments may be classes too (a cluster environment)
        init_args = {k: _instantiated(v) for k, v in (as_dict.get("init_args") or {}).items()}
        return instantiate_class((), {"class_path": as_dict["class_path"], "init_args": init_args})
    return value


def connect_processes_started_outside(trainer_config) -> bool:
    """Set up the process group now when a launcher outside Lightning started every process at once (SLURM's
    srun, torchrun, LSF, MPI: a cluster environment that creates its processes externally), so that the
    DataModule, built next, fits its statistics on rank 0 alone and sends them to the others
    (:meth:`~climateml.data.base.BaseDataModule.fit_once`) instead of every process reading every training file.

    The connection is Lightning's own: a Trainer with the config's ``accelerator``, ``devices``, ``num_nodes``,
    ``strategy`` and ``plugins`` (built for this only) runs its strategy's ``setup_environment`` (the device, then
    ``init_process_group`` with the backend, address, port, ranks and timeout the run's Trainer would use). The
    run's Trainer later finds the group set up and keeps it. Nothing is done (False) for a single process, under
    Lightning's own DDP launcher (the processes it starts take what this one fitted: :func:`hand_down_fitted`),
    or when a group already exists (the members of ``--ensemble`` after the first). Returns True when it connected.
    """
    import logging

    from lightning.fabric.plugins.environments import (LSFEnvironment, MPIEnvironment, SLURMEnvironment,
                                                        TorchElasticEnvironment)
    from lightning.pytorch import Trainer

    if not torch.distributed.is_available() or torch.distributed.is_initialized():
        return False
    args = {name: _instantiated(trainer_config.get(name)) for name in _CONNECTION_ARGUMENTS if name in trainer_config}
    outside = (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment)
    if not args.get("plugins") and not any(env.detect() for env in outside):
        return False  # the common case, a process started by hand or by Lightning's launcher: no Trainer built
    quiet = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # its device lines come with the run's Trainer
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        strategy = Trainer(**args, logger=False, callbacks=[], enable_checkpointing=False, enable_progress_bar=False,
                           enable_model_summary=False).strategy
    finally:
        quiet.setLevel(level)
    if not isinstance(strategy, ParallelStrategy) or strategy.cluster_environment is None:
        return False
    if not strategy.cluster_environment.creates_processes_externally or strategy.world_size <= 1:
        return False
    strategy.setup_environment()
    return torch.distributed.is_initialized()


def build_task(config: str, overrides: list[str]):
    """(model, datamodule) of a task config, instantiated as `fit` would, without running anything."""
    cli = ClimateCLI(subclass_mode_model=True, subclass_mode_data=True, run=False, auto_configure_optimizers=False,
                     args=["--config", config, *overrides])
    return cli.model, cli.datamodule


