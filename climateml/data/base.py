"""What every task's DataModule shares: loaders, public datasets, dict batches, the data->model spec.

A task's DataModule subclasses :class:`ClimateDataModule` and fills in the members it declares (abstract):
:meth:`~ClimateDataModule.build` (read, split, fit statistics on training data only, set the four public
datasets), ``spec``, ``layout`` and the xarray hooks;
batch size, workers, pinned memory and the loaders live here once. Samples are dicts of tensors
(``{"x": ..., "y": ...}``), so a task can add keys (masks, weights) without changing the loop.

The loaders are built for scale once, here, for every task:

- :class:`ClimateSampler`: the order of an epoch depends only on (seed, epoch), so a restarted run sees
  the same batches; under DDP each rank takes its own shard and no sample is seen twice in an epoch.
- :class:`ResumableDataLoader` (training): a run resumed from a mid-epoch checkpoint continues with the
  next batch of that epoch instead of starting the epoch again.
- Statistics a task fits on its training files (:meth:`ClimateDataModule.fit_once`) are fitted by one process
  and sent to the others under DDP, instead of every rank reading every training file, whichever launcher
  started the processes (Lightning's, srun, torchrun).
- DataLoader worker processes are safe for lazily opened NetCDF / Zarr: dask's thread pools are not
  carried over a fork, and each worker reads with dask's synchronous scheduler (readers that keep files
  open, like the radar reader, open their own in each worker).
"""

from __future__ import annotations

import atexit
import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import lightning as L
import pandas as pd
import torch
import xarray as xr
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from climateml.contracts import PostInit, check_properties, check_provides, then_post_init
from climateml.errors import ConfigError, check_choice, check_positive


@dataclass
class DataSpec:
    """What a model must know about its data, linked once from the DataModule to the model by the CLI.

    Args:
        inputs: names of the input features or channels, in tensor order.
        outputs: names of the output variables (or classes), in tensor order.
        input_shape: shape of one sample's input tensor.
        output_shape: shape of one sample's output tensor.
        statistics: tensors fitted on training data only (e.g. x_mean, x_std, y_mean, y_std, class
            weights, area weights); the model keeps them as buffers, so checkpoints carry them.
        options: plain task-specific facts (e.g. the grid's spacing in km).
    """

    inputs: list[str]
    outputs: list[str]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    statistics: dict[str, torch.Tensor] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict:
        """Plain types only (no tensors): what a checkpoint's hyperparameters store to rebuild the model."""
        d = asdict(self)
        d["statistics"] = {k: list(v.shape) for k, v in self.statistics.items()}
        d["input_shape"], d["output_shape"] = list(self.input_shape), list(self.output_shape)
        return d

    @classmethod
    def coerce(cls, spec: "DataSpec | Mapping | None") -> "DataSpec | None":
        """A DataSpec from itself, from :meth:`describe`'s dict (statistics as zeros of the saved shapes), or None."""
        if spec is None or isinstance(spec, DataSpec):
            return spec
        spec = dict(spec)
        stats = {k: torch.zeros(*shape) for k, shape in dict(spec.get("statistics", {})).items()}
        return cls(list(spec["inputs"]), list(spec["outputs"]), tuple(spec["input_shape"]),
                   tuple(spec["output_shape"]), stats, dict(spec.get("options", {})))


class TensorDictDataset(Dataset):
    """In-memory samples: a dict of tensors sharing their first dim; serves whole batches by slicing.

    ``__getitems__`` returns one already-batched dict for a list of indices, so a DataLoader with
    :func:`batched_collate` indexes memory once per batch instead of once per sample. Rows are gathered
    with ``torch.index_select``: for 64 rows of 13,824 values it is about 3x faster than advanced
    indexing (``v[idx]``), which dominates the cost of an epoch's data loading for in-memory data.
    """

    def __init__(self, **tensors: torch.Tensor):
        lengths = {k: len(v) for k, v in tensors.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"tensors differ in length: {lengths}")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, i) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}

    def __getitems__(self, indices) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {k: torch.index_select(v, 0, idx) for k, v in self.tensors.items()}


def batched_collate(batch):
    """Collate for datasets whose ``__getitems__`` already returns a batch (a dict); otherwise torch's default."""
    if isinstance(batch, Mapping):
        return batch
    return torch.utils.data.default_collate(batch)


# ---- sampling: order from (seed, epoch), shards per rank, resumable ----

def distributed_world() -> tuple[int, int]:
    """(world size, global rank) of the running torch.distributed process group; (1, 0) outside one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def global_seed() -> int:
    """The run's seed (``seed_everything``, which sets PL_GLOBAL_SEED); 0 if none was set."""
    try:
        return int(os.environ.get("PL_GLOBAL_SEED", 0))
    except ValueError:
        return 0


class ClimateSampler(DistributedSampler):
    """Indices of one rank for one epoch: a permutation that depends only on (seed, epoch), cut into shards.

    Training (``even=True``): every rank gets the same number of samples, so DDP ranks step in lockstep;
    the last ``len % num_replicas`` samples of the epoch's permutation are left out (others each epoch),
    never padded by repeating samples, so no sample is seen twice in an epoch across ranks.
    Evaluation (``even=False``): rank r takes samples r, r + W, ... of the (unshuffled) order; shards differ
    by at most one sample and every sample is scored exactly once. With fewer samples than ranks every
    rank takes them all (epoch means are unchanged when every rank sees the same samples).

    A subclass of DistributedSampler, so Lightning keeps it instead of injecting its own; it calls
    :meth:`set_epoch` every epoch. ``skip`` samples of the shard are left out once, at the next iteration
    (set by :class:`ResumableDataLoader` when a run resumes mid-epoch).
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = False,
                 seed: int = 0, even: bool = False):
        n = len(dataset)
        if even and 1 < num_replicas and n < num_replicas:
            raise ConfigError(f"{n} training samples cannot be split over {num_replicas} processes; use fewer "
                              "devices or more data")
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=even)
        self.n, self.even, self.skip = n, even, 0
        self.sharded = num_replicas > 1 and (even or n >= num_replicas)

    def order(self) -> list[int]:
        """This epoch's order of all samples (before sharding)."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            return torch.randperm(self.n, generator=g).tolist()
        return list(range(self.n))

    def shard(self) -> list[int]:
        """This rank's indices for this epoch, in order."""
        order = self.order()
        if not self.sharded:
            return order
        if self.even:
            order = order[: self.n - self.n % self.num_replicas]
        return order[self.rank::self.num_replicas]

    def __len__(self) -> int:
        if not self.sharded:
            return self.n
        if self.even:
            return self.n // self.num_replicas
        return len(range(self.rank, self.n, self.num_replicas))

    def __iter__(self) -> Iterator[int]:
        indices = self.shard()
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])


class ResumableDataLoader(DataLoader):
    """The training DataLoader, stateful in Lightning's sense: a run resumed from a mid-epoch checkpoint continues
    with the next batch of that epoch.

    Lightning stores :meth:`state_dict` (the epoch and the batches of it this loader has handed out) in every
    checkpoint and, when a fit resumes, gives it back through :meth:`load_state_dict` before the epoch's iteration
    starts; the next iteration of that epoch then skips those batches through the sampler, so the rest of the
    epoch is exactly what an uninterrupted run would have seen. (Lightning fetches no batch ahead from a loader
    with a length, so the batches handed out are the batches trained on when a checkpoint is written between
    two steps; tests/test_resume.py checks it.)
    """

    _position = 0  # batches of the current iteration handed out so far
    _pending: tuple[int, int] | None = None  # (epoch, batches) restored from a checkpoint, for the next iteration

    def __iter__(self):
        pending, self._pending = self._pending, None
        done = pending[1] if pending is not None and pending[0] == getattr(self.sampler, "epoch", 0) else 0
        if done and isinstance(self.sampler, ClimateSampler):
            self.sampler.skip = done * int(self.batch_size or 1)
        self._position = done
        return self._count(super().__iter__())

    def _count(self, batches):
        for batch in batches:
            self._position += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": int(getattr(self.sampler, "epoch", 0)), "batches": int(self._position),
                "num_replicas": int(getattr(self.sampler, "num_replicas", 1)), "batch_size": int(self.batch_size or 1)}

    def load_state_dict(self, state: dict) -> None:
        epoch, batches = int(state.get("epoch", 0)), int(state.get("batches", 0))
        saved = (state.get("num_replicas", 1), state.get("batch_size", self.batch_size))
        now = (getattr(self.sampler, "num_replicas", 1), self.batch_size)
        if saved != now and 0 < batches < len(self):
            raise ConfigError(f"the checkpoint was written mid-epoch by {saved[0]} process(es) with batch size "
                              f"{saved[1]}; resume it with the same devices x nodes and data.batch_size (now "
                              f"{now[0]} and {now[1]}), or from a checkpoint written at the end of an epoch")
        if batches >= len(self):  # the epoch was complete: the next one comes
            epoch, batches = epoch + 1, 0
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        self._pending = (epoch, batches) if batches else None


# ---- statistics fitted once for every process ----

T = TypeVar("T")
#: a file of the statistics the launching process fitted, for the DDP processes it starts (:func:`hand_down_fitted`)
FITTED_ENV = "CLIMATEML_FITTED_STATISTICS"
_handed_down: tuple[str, dict[str, Any]] = ("", {})  # (file, what it holds), read once


def _fitted_by_the_launcher() -> dict[str, Any]:
    """What :func:`hand_down_fitted` wrote for this process (empty when it wrote nothing)."""
    global _handed_down
    path = os.environ.get(FITTED_ENV, "")
    if path != _handed_down[0]:
        # a file of our own (written by the launching process, mode 0600, named in the environment it handed down):
        # pickled objects (an archive's index, a grid) are loaded as well as tensors
        _handed_down = (path, torch.load(path, weights_only=False) if path and os.path.isfile(path) else {})
    return _handed_down[1]


def hand_down_fitted(datamodule: "ClimateDataModule", world_size: int) -> None:
    """Before Lightning's DDP launcher starts the other processes of this machine (the command run again, each
    building its DataModule before any process group exists): leave them what this process fitted through
    :meth:`ClimateDataModule.fit_once`, in a temporary file named by ``$CLIMATEML_FITTED_STATISTICS`` (inherited
    by the processes it starts; deleted when this one exits). Processes started by SLURM or torchrun, all at once,
    are connected before they build their DataModule instead, and rank 0 fits for all
    (:func:`climateml.lightning_cli.connect_processes_started_outside`)."""
    if world_size <= 1 or not datamodule._fitted or FITTED_ENV in os.environ:
        return
    fd, path = tempfile.mkstemp(prefix="climateml-fitted-", suffix=".pt")
    os.close(fd)
    torch.save(datamodule._fitted, path)
    atexit.register(lambda: os.path.exists(path) and os.remove(path))
    os.environ[FITTED_ENV] = path


# ---- checks every task's splits and crops share ----

def check_periods(periods: Mapping[str, Sequence], required: bool = True,
                  disjoint: bool = True) -> dict[str, tuple[pd.Timestamp, pd.Timestamp]]:
    """The inclusive ``[start, end]`` of each split, by its config name (e.g. ``{"train_period": [...], ...}``),
    checked: two time strings, start not after end and, with ``disjoint``, no two periods overlapping (so no
    sample is in two splits; a task that checks its samples' times itself, naming the file, passes False).
    Empty periods are errors with ``required``, else left out. Returns the parsed bounds of the periods given."""
    bounds = {}
    for name, period in periods.items():
        if not period and not required:
            continue
        if len(period) != 2:
            raise ConfigError(f"data.{name} must be [start, end] time strings{'' if required else ' or empty'}, "
                              f"got {list(period)}")
        try:
            bounds[name] = (pd.Timestamp(period[0]), pd.Timestamp(period[1]))
        except ValueError as err:
            raise ConfigError(f"data.{name}: {list(period)} are not time strings ({err})") from err
        if bounds[name][0] > bounds[name][1]:
            raise ConfigError(f"data.{name} starts after it ends: {list(period)}")
    names = list(bounds) if disjoint else []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if bounds[a][0] <= bounds[b][1] and bounds[b][0] <= bounds[a][1]:
                raise ConfigError(f"data.{a} {list(map(str, bounds[a]))} and data.{b} {list(map(str, bounds[b]))} "
                                  "overlap; periods must be disjoint so that no sample is in two splits")
    return bounds


def check_crop(crop: Sequence[int], dims: tuple[str, str]) -> list[int]:
    """``data.crop``: [cells along dims[0], cells along dims[1]], both >= 1, or empty (whole fields)."""
    if crop and (len(crop) != 2 or min(crop) < 1):
        raise ConfigError(f"data.crop must be [{dims[0]} cells, {dims[1]} cells], both >= 1, or empty; got {list(crop)}")
    return [int(c) for c in crop]


# ---- worker processes ----

def worker_init(worker_id: int, rank: int = 0) -> None:
    """Runs first in every DataLoader worker process (every loader of :meth:`ClimateDataModule.dataloader`; pass
    it as ``worker_init_fn`` to a loader of your own): dask reads synchronously (one process = one reader;
    parallelism comes from the workers), then Lightning's per-worker seeds.

    A forked worker also forgets the dask thread pools it inherited: their threads stayed in the parent, so a
    threaded compute in the worker (a dataset asking for ``scheduler="threads"``) would otherwise wait on
    them for ever; it starts a fresh pool instead.
    """
    import dask
    import dask.threaded

    dask.threaded.default_pool = None
    dask.threaded.pools.clear()
    dask.config.set(scheduler="synchronous")
    if os.environ.get("PL_SEED_WORKERS") == "1":
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id, rank=rank)


class BaseDataModule(L.LightningDataModule):
    """Loaders, public datasets and normalisation kept in the checkpoint, with no declared contract: what
    :class:`ClimateDataModule` builds on, and enough for a loader-only DataModule (a test's, a callback's).

    Subclasses implement :meth:`build` (set ``train_dataset``, ``val_dataset``, ``test_dataset``, and
    ``statistics``; ``predict_dataset`` only when prediction needs other samples or items than
    :attr:`predict_split`'s dataset, see :meth:`dataset`).

    Args:
        batch_size: samples per batch (per process under DDP: the global batch is batch_size x processes).
        num_workers: DataLoader worker processes (0 loads in the main process).
        pin_memory: page-locked host memory for faster copies to a GPU; None (every task's default): on when
            the trainer runs on CUDA.
        multiprocessing_context: how worker processes start: None (the platform's default, fork on Linux),
            "fork", "forkserver" or "spawn" (the dataset is pickled into each worker; slower start).
    """

    #: the split whose samples the predict split serves (see :meth:`sample_split`)
    predict_split = "test"

    def __init__(self, batch_size: int = 64, num_workers: int = 0, pin_memory: bool | None = None,
                 multiprocessing_context: str | None = None):
        super().__init__()
        check_positive("data.batch_size", batch_size)
        check_positive("data.num_workers", num_workers, allow_zero=True)
        if multiprocessing_context is not None:
            check_choice("data.multiprocessing_context", multiprocessing_context, ("fork", "forkserver", "spawn"))
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.pin_memory = None if pin_memory is None else bool(pin_memory)
        self.multiprocessing_context = multiprocessing_context
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        self.predict_dataset: Dataset | None = None
        self.statistics: dict[str, torch.Tensor] = {}
        self._fitted: dict[str, Any] = {}  # what fit_once fitted, by key
        self.fitted_by: dict[str, str] = {}  # who fitted it, by key: "this process", "rank 0" or "the launcher"

    def build(self) -> None:
        """Read the data, split it, fit statistics on the training split, set the four datasets."""
        raise NotImplementedError(f"{type(self).__name__} must define build()")

    def sample_split(self, split: str) -> str:
        """The split whose samples ``split`` serves: the predict split runs on :attr:`predict_split`'s samples
        (the test split's unless a task has its own predict samples), every other split on its own."""
        return self.predict_split if split == "predict" else split

    # ---- shared ----
    @property
    def is_built(self) -> bool:
        return self.train_dataset is not None

    def setup(self, stage: str | None = None) -> None:
        if not self.is_built:
            self.build()
            if self._restored_statistics is not None:  # a checkpoint's state was given before the build
                self._use_restored_statistics()

    def fit_once(self, name: str, fit: Callable[..., T], *args) -> T:
        """``fit(*args)`` (statistics read from the training files, or an index of the files' metadata) done by one
        process for all of them.

        Under a running torch.distributed process group (Lightning's DDP sets one up before it calls ``setup``;
        ``climateml`` under srun or torchrun sets it up before it builds the DataModule:
        :func:`climateml.lightning_cli.connect_processes_started_outside`), global rank 0 fits and sends the result
        to the other ranks (``broadcast_object_list``); they read no file. In a DDP process started by Lightning's
        launcher, before the group exists (``climateml fit`` builds the DataModule to link its spec), the launching
        process's result is taken (:func:`hand_down_fitted`). Otherwise this process fits; :attr:`fitted_by` says
        which of the three it was, by key. The result is found again by ``name`` and ``args`` (e.g. the training
        files); it is sent pickled, so keep it compact (tensors, arrays, an index; not the data). When rank 0's
        fit raises, it raises that error and every other rank a RuntimeError quoting it (none waits for ever).
        """
        key = f"{type(self).__qualname__}.{name}:{hashlib.sha1(repr(args).encode()).hexdigest()}"
        world, rank = distributed_world()
        if world > 1:
            # a failed fit is sent too (its message): the other ranks stop with it, not with a lost connection or a hang
            box, failure = [None], None
            if rank == 0:
                try:
                    box = [("value", fit(*args))]
                except Exception as err:  # noqa: BLE001  re-raised below, after the other ranks have been told
                    box, failure = [("error", f"{type(err).__name__}: {err}")], err
            torch.distributed.broadcast_object_list(box, src=0)
            if failure is not None:
                raise failure
            kind, value = box[0]
            if kind == "error":
                raise RuntimeError(f"{type(self).__name__}: rank 0 failed to fit {name!r} for every rank: {value}")
            by = "this process" if rank == 0 else "rank 0"
        else:
            value, by = _fitted_by_the_launcher().get(key), "the launcher"
            if value is None:
                value, by = fit(*args), "this process"
        self._fitted[key], self.fitted_by[key] = value, by
        return value

    def dataset(self, split: str) -> Dataset:
        """The built dataset of ``split``; for "predict", the :attr:`predict_split`'s when ``build`` set no
        ``predict_dataset`` of its own."""
        self.setup()
        ds = getattr(self, f"{split}_dataset")
        if ds is None and split == "predict" and self.predict_split != "predict":
            ds = getattr(self, f"{self.predict_split}_dataset")
        if ds is None:
            raise ValueError(f"{type(self).__name__} has no {split} dataset")
        return ds

    def _pin(self) -> bool:
        if self.pin_memory is not None:
            return self.pin_memory
        trainer = self.trainer
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def dataloader(self, split: str, shuffle: bool = False, distributed: bool = False) -> DataLoader:
        """A loader over the whole ``split`` (this process alone), or, with ``distributed``, this rank's shard
        of it when a torch.distributed process group is running (what the trainer's hooks below ask for).

        The order depends only on the run's seed and the epoch (:class:`ClimateSampler`); the training
        loader resumes mid-epoch (:class:`ResumableDataLoader`).
        """
        ds = self.dataset(split)
        world, rank = distributed_world() if distributed else (1, 0)
        sampler = ClimateSampler(ds, world, rank, shuffle=shuffle, seed=global_seed(), even=split == "train")
        workers = self.num_workers
        loader_cls = ResumableDataLoader if split == "train" else DataLoader
        # the loader's own generator: creating an iterator draws no number from the global RNG, so a resumed
        # run's random stream (dropout, augmentation in the main process) is the uninterrupted one's
        generator = torch.Generator().manual_seed(global_seed() + 7919 * rank)
        return loader_cls(
            ds, batch_size=self.batch_size, sampler=sampler, num_workers=workers, pin_memory=self._pin(),
            persistent_workers=workers > 0, generator=generator,
            collate_fn=batched_collate if hasattr(ds, "__getitems__") else None,
            worker_init_fn=partial(worker_init, rank=rank) if workers > 0 else None,
            multiprocessing_context=self.multiprocessing_context if workers > 0 else None)

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train", shuffle=True, distributed=True)

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val", distributed=True)

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test", distributed=True)

    def predict_dataloader(self) -> DataLoader:
        # every process predicts the whole split: prediction writers write whole files, never shards
        return self.dataloader("predict")

    # ---- the training statistics in checkpoints ----
    _restored_statistics: dict[str, torch.Tensor] | None = None

    def state_dict(self) -> dict:
        """Training statistics, saved in every checkpoint beside the model's copy of them."""
        return {"statistics": {k: v.clone() for k, v in self.statistics.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        """A checkpoint's training statistics replace the ones fitted on the data as it is now, and reach what is
        built from them (``statistics``, and so ``spec``): a resumed run goes on with the statistics it started
        with, even if the training files changed in between. Lightning calls this after ``setup`` (the module is
        built by then); given before the build, they replace the fitted ones when it is built."""
        restored = {k: v.detach().clone() for k, v in dict(state_dict.get("statistics", {})).items()}
        if not restored:
            return
        self._restored_statistics = restored
        if self.is_built:
            self._use_restored_statistics()

    def _use_restored_statistics(self) -> None:
        restored, fitted = self._restored_statistics, self.statistics
        for name, value in restored.items():
            if name in fitted and tuple(fitted[name].shape) != tuple(value.shape):
                raise ConfigError(f"{type(self).__name__}: the checkpoint's statistic {name} has shape "
                                  f"{tuple(value.shape)}, the data's {tuple(fitted[name].shape)}: resume with the data "
                                  "options the run started with")
        self.statistics = {**fitted, **restored}


class ClimateDataModule(PostInit, BaseDataModule, ABC):
    """Base of every task's DataModule: the members evaluation, attribution and prediction writers may call.

    A subclass defines every member below (the loaders, :meth:`dataset` and :meth:`sample_split` come from
    :class:`BaseDataModule`); one missing, or ``spec`` / ``layout`` defined as a method instead of a
    property, fails when the class is instantiated, with a TypeError naming the members and the class.
    Task-specific members that a task's evaluation calls are declared as protocols in
    :mod:`climateml.contracts`; a DataModule lists those it provides in ``PROTOCOLS``, checked the same way.
    """

    #: the members a subclass must define as properties, checked once its ``__init__`` has returned
    PROPERTIES = ("spec", "layout")
    #: the protocols of :mod:`climateml.contracts` a task's DataModule provides (what its evaluation requires):
    #: checked once its ``__init__`` has returned, a TypeError naming the missing members
    PROTOCOLS: tuple[type, ...] = ()

    __init__ = then_post_init(BaseDataModule.__init__)  # a subclass without an __init__ of its own is checked too

    def _post_init(self, init, args: tuple, kwargs: dict) -> None:
        check_properties(type(self), ClimateDataModule, self.PROPERTIES)
        check_provides(self, self.PROTOCOLS)

    @abstractmethod
    def build(self) -> None:
        """Read the data, split it, fit statistics on the training split, set the four datasets."""

    @property
    @abstractmethod
    def spec(self) -> DataSpec:
        """The data->model spec (sizes, names, training statistics)."""

    @property
    @abstractmethod
    def layout(self):
        """The :class:`~climateml.data.adapter.FieldLayout` of the model's output: its variables, field dims
        and coordinates (what attribution's targets and the prediction writers put outputs on)."""

    @abstractmethod
    def to_xarray(self, values: torch.Tensor, split: str) -> dict[str, xr.Dataset]:
        """Model outputs for every sample of ``split``, in order, as xarray on the data's coordinates,
        one Dataset per group (scenario, period)."""

    @abstractmethod
    def truth(self, split: str) -> dict[str, xr.Dataset]:
        """The targets of ``split`` as xarray, grouped like :meth:`to_xarray`."""

    @abstractmethod
    def inputs_xarray(self, split: str) -> xr.DataArray:
        """The model inputs of ``split`` in physical units on their coordinates, sample dim first: exactly
        the ``x`` the split's loader feeds the model (what attribution maps are computed on)."""

    @abstractmethod
    def batch_to_xarray(self, values: torch.Tensor, split: str, indices: Sequence[int],
                        batch: Mapping | None = None) -> dict[str, xr.Dataset]:
        """:meth:`to_xarray` of one batch: the outputs ``values`` of the samples ``indices`` of ``split`` (their
        positions in the split; ``batch`` the loader's batch they came from), so the evaluation scores and writes
        batch by batch and never holds a split (:class:`climateml.contracts.BatchData`)."""

    @abstractmethod
    def batch_truth(self, batch: Mapping, split: str, indices: Sequence[int]) -> dict[str, xr.Dataset]:
        """:meth:`truth` of one batch: the targets of the samples ``indices`` of ``split`` from ``batch``."""
