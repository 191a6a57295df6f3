"""Loading at scale: epoch order from (seed, epoch), shards per rank, mid-epoch resumption of the training
loader, and lazily read data in DataLoader worker processes (num_workers=2) for each task."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from climateml.data.base import ClimateSampler, ResumableDataLoader
from climateml.errors import ConfigError
from test_scale_common import REPO, make_data


class _Range(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"x": torch.tensor([float(i)])}


def test_sampler_order_depends_only_on_seed_and_epoch():
    a, b = ClimateSampler(_Range(50), shuffle=True, seed=3), ClimateSampler(_Range(50), shuffle=True, seed=3)
    torch.manual_seed(123)  # the global random state plays no part
    a.set_epoch(4)
    torch.manual_seed(999)
    b.set_epoch(4)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    b.set_epoch(5)
    assert list(a) != list(b)
    assert list(ClimateSampler(_Range(50), shuffle=True, seed=4)) != list(ClimateSampler(_Range(50), shuffle=True, seed=3))


@pytest.mark.parametrize("n", [10, 11, 13])
def test_training_shards_are_disjoint_and_equal(n):
    whole = ClimateSampler(_Range(n), shuffle=True, seed=1, even=True)
    shards = [ClimateSampler(_Range(n), num_replicas=3, rank=r, shuffle=True, seed=1, even=True) for r in range(3)]
    for s in [whole, *shards]:
        s.set_epoch(2)
    seen = [list(s) for s in shards]
    assert len({len(x) for x in seen}) == 1 and all(len(x) == len(s) == n // 3 for x, s in zip(seen, shards))
    flat = [i for x in seen for i in x]
    assert len(set(flat)) == len(flat) == n - n % 3  # no sample twice, none padded in
    assert set(flat) == set(list(whole)[: n - n % 3])  # the same samples as the one-process epoch, minus its tail


@pytest.mark.parametrize("n", [2, 7, 10])
def test_evaluation_shards_score_every_sample_once(n):
    shards = [list(ClimateSampler(_Range(n), num_replicas=3, rank=r)) for r in range(3)]
    if n < 3:  # fewer samples than ranks: every rank scores them all (means are unchanged)
        assert all(s == list(range(n)) for s in shards)
    else:
        assert sorted(i for s in shards for i in s) == list(range(n))


def test_too_few_training_samples_for_the_ranks_is_a_clear_error():
    with pytest.raises(ConfigError, match="2 training samples cannot be split over 3 processes"):
        ClimateSampler(_Range(2), num_replicas=3, rank=0, even=True)


def test_resumable_loader_continues_the_epoch_lightning_gives_back():
    """The loader's state after 2 batches of epoch 1, given back to a fresh loader (as Lightning does when a fit
    resumes), makes the next iteration of epoch 1 the rest of that epoch; a complete epoch's state starts the next
    epoch whole; another batch size mid-epoch is a clear error."""
    ds = _Range(20)

    def loader(batch_size=4):
        return ResumableDataLoader(ds, batch_size=batch_size, sampler=ClimateSampler(ds, shuffle=True, seed=0))

    first = loader()
    first.sampler.set_epoch(1)
    full = [b["x"].flatten().tolist() for b in first]
    assert len(full) == 5 and first.state_dict()["batches"] == 5
    it = iter(first)
    next(it), next(it)
    state = first.state_dict()
    assert state["epoch"] == 1 and state["batches"] == 2
    resumed = loader()
    resumed.load_state_dict(state)
    assert resumed.sampler.epoch == 1
    assert [b["x"].flatten().tolist() for b in resumed] == full[2:]
    assert resumed.state_dict()["batches"] == 5
    assert [b["x"].flatten().tolist() for b in resumed] == full  # skipped once only
    done = loader()
    done.load_state_dict({**state, "batches": 5})
    assert done.sampler.epoch == 2 and len(list(done)) == 5
    with pytest.raises(ConfigError, match="same devices"):
        loader(batch_size=5).load_state_dict(state)


def _datamodule(task: str, data: Path, **kw):
    if task == "temperature":
        from climateml.data import ClimateBenchDataModule

        return ClimateBenchDataModule(str(data), batch_size=32, **kw)
    if task == "segmentation":
        from climateml.data.climatenet import SegmentationDataModule

        return SegmentationDataModule(str(data), batch_size=2, crop=[], shift_lon=False, flip_lat=False,
                                      val_fraction=0.25, test_fraction=0.25, **kw)
    from climateml.data.nowcasting import NowcastingDataModule

    return NowcastingDataModule(str(data), batch_size=4, augment=False, train_period=["2024-06-01T00:00", "2024-06-01T04:55"],
                                val_period=["2024-06-01T05:00", "2024-06-01T06:25"],
                                test_period=["2024-06-01T06:30", "2024-06-01T07:55"], **kw)


def _batches(loader) -> list[dict]:
    return [{k: v.clone() for k, v in b.items()} for b in loader]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scale_data")


@pytest.mark.parametrize("task", ["temperature", "segmentation", "nowcasting"])
def test_two_worker_processes_load_what_the_main_process_loads(task, data_root):
    """Each task's loaders with num_workers=2 (fork; each worker reads its own files) give the batches of
    num_workers=0, in the same order, for a shuffled training epoch and every evaluation split; a training
    epoch is every training sample once; Lightning trains through such workers (segmentation: one epoch)."""
    data = make_data(task, data_root)
    serial, parallel = _datamodule(task, data), _datamodule(task, data, num_workers=2)
    for dm in (serial, parallel):
        dm.setup()
    if task == "nowcasting":
        parallel.reader.read(0)  # the parent holds an open file when the workers fork
    for split, shuffle in (("train", True), ("val", False), ("test", False), ("predict", False)):
        a, b = serial.dataloader(split, shuffle=shuffle), parallel.dataloader(split, shuffle=shuffle)
        a.sampler.set_epoch(1)
        b.sampler.set_epoch(1)
        got, want = _batches(b), _batches(a)
        assert len(got) == len(want) > 0, split
        for g, w in zip(got, want):
            assert g.keys() == w.keys()
            for k in g:
                torch.testing.assert_close(g[k], w[k], equal_nan=True)
        if split == "train":
            assert sum(len(batch["y"]) for batch in got) == len(parallel.dataset("train"))
        if hasattr(b, "_iterator") and b._iterator is not None:
            b._iterator._shutdown_workers()
    if task == "segmentation":  # the workers open the files themselves
        import lightning as L

        from climateml.models.segmentation import SegmentationModel

        L.seed_everything(0)
        trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(SegmentationModel(parallel.spec, depth=1, width=4), parallel)
        assert trainer.global_step == -(-len(parallel.train_dataset) // parallel.batch_size) > 0


def test_dask_reads_in_forked_workers_do_not_deadlock(tmp_path):
    """A dataset computing dask-backed xarray (open_mfdataset) with dask's threads in forked workers, after the
    parent used dask's thread pool: a plain DataLoader hangs for ever (the pool's threads stay in the parent);
    ours finishes, as worker_init starts each worker on fresh pools. Importing climateml leaves forks alone."""
    script = textwrap.dedent(f"""
        import numpy as np, torch, xarray as xr
        from climateml.data.base import BaseDataModule

        paths = []
        for i in range(4):
            p = rf"{tmp_path}/part{{i}}.nc"
            xr.Dataset({{"v": (("time", "x"), np.full((20, 100), float(i), "f4"))}},
                       coords={{"time": np.arange(20) + 20 * i}}).to_netcdf(p)
            paths.append(p)
        ds = xr.open_mfdataset(paths, combine="by_coords", chunks={{"time": 5}})
        assert float(ds.v.mean().compute(scheduler="threads")) == 1.5  # the parent's thread pool now exists

        class Frames(torch.utils.data.Dataset):
            def __len__(self):
                return 16
            def __getitem__(self, i):
                return {{"x": torch.from_numpy(ds.v.isel(time=slice(5 * i, 5 * i + 5)).compute(scheduler="threads").values)}}

        class DM(BaseDataModule):
            def build(self):
                self.train_dataset = self.val_dataset = self.test_dataset = self.predict_dataset = Frames()

        dm = DM(batch_size=2, num_workers=2)
        total = sum(float(b["x"].sum()) for b in dm.dataloader("val"))
        print("TOTAL", total)
        import os, dask.threaded
        pid = os.fork()  # no at-fork hook of ours: the child keeps the parent's pools
        if pid == 0:
            os._exit(0 if dask.threaded.default_pool is not None else 3)
        print("CHILD", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    """)
    # its own session, so that a hang ends with its worker processes too (they would outlive a killed parent)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the loader's forked workers hung on the parent's dask thread pool")
    assert proc.returncode == 0, stderr[-2000:]
    assert "TOTAL 12000.0" in stdout and "CHILD 0" in stdout


def _reads(task: str, dm) -> list[tuple]:
    """(owner, name) of what reads the training data for the statistics: segmentation's file reader (looked up in
    the module its fit reads through), the radar reader's frame read (nowcasting scans every frame); then of what
    reads each file's metadata: segmentation's grid, the radar archive's per-file header."""
    if task == "segmentation":
        from climateml.data import climatenet_reader

        return [(sys.modules[type(dm)._fit_statistics.__module__], "read_snapshot"), (climatenet_reader, "read_grid")]
    from climateml.data import radar_header
    from climateml.data.radar import RadarReader

    return [(RadarReader, "read"), (radar_header, "read_header")]


def _setup_counting_reads(task: str, data: Path) -> tuple[tuple[int, int], dict]:
    """Set up ``task``'s DataModule, counting the reads of data: ((data reads, metadata reads), statistics)."""
    return _setup_counting_reads_of(task, _datamodule(task, data))


def _setup_counting_reads_of(task: str, dm) -> tuple[tuple[int, int], dict]:
    """Set up the DataModule ``dm`` of ``task``, counting the reads the statistics make of the training data and
    the reads of each file's metadata: ((data reads, metadata reads), statistics)."""
    originals, counts = [], []
    for owner, name in _reads(task, dm):
        read, reads = getattr(owner, name), []

        def counting(*args, _read=read, _reads=reads, **kwargs):
            _reads.append(args)
            return _read(*args, **kwargs)

        originals.append((owner, name, read))
        counts.append(reads)
        setattr(owner, name, counting)
    try:
        dm.setup("fit")
    finally:
        for owner, name, read in originals:
            setattr(owner, name, read)
    return (len(counts[0]), len(counts[1])), {k: v.numpy() for k, v in dm.spec.statistics.items()}


def n_files(dm) -> int:
    """The files of a set-up DataModule's data (segmentation: every snapshot's; nowcasting: the archive's)."""
    if hasattr(dm, "splits"):
        return sum(len(snap.files) for split in dm.splits.values() for snap in split)
    return len(dm.reader.files)


def _build_on_rank(rank: int, store: str, task: str, data: str, out) -> None:
    """One of two gloo processes: set up the DataModule, counting the reads its statistics make; report them."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        out.put((rank, *_setup_counting_reads(task, Path(data))))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("task", ["segmentation", "nowcasting"])
def test_statistics_are_fitted_by_rank_zero_and_sent_to_the_others(task, data_root, tmp_path):
    """Two DDP ranks (gloo) set up the DataModule: rank 0 reads the training data for the statistics (segmentation:
    each training file; nowcasting: every frame, for the rain transform's moments, the rain cap and the outage
    frames), rank 1 reads none, and both end with the same statistics, those of one process alone."""
    import multiprocessing

    data = make_data(task, data_root)
    alone = _datamodule(task, data)
    alone.setup()
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_build_on_rank, args=(r, str(tmp_path / "store"), task, str(data), out))
             for r in range(2)]
    for p in procs:
        p.start()
    results = dict((r, (reads, stats)) for r, reads, stats in (out.get(timeout=120) for _ in procs))
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    expected = len(alone.splits["train"]) if task == "segmentation" else len(alone.reader)
    assert results[0][0][0] == expected > 0 and results[1][0][0] == 0
    assert results[0][0][1] == n_files(alone) > 0 and results[1][0][1] == 0  # each file's metadata: rank 0 alone
    for name, value in alone.spec.statistics.items():
        assert (results[0][1][name] == value.numpy()).all() and (results[1][1][name] == value.numpy()).all(), name


def _fail_on_rank(rank: int, store: str, out) -> None:
    """One of two gloo processes: fit_once with a fit that fails (rank 0 runs it); report the error each raised."""
    from climateml.data.base import BaseDataModule
    from climateml.errors import DataError

    def fit(path):
        raise DataError(f"{path}: damaged")

    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        BaseDataModule().fit_once("statistics", fit, "a.nc")
        out.put((rank, "no error"))
    except Exception as err:  # noqa: BLE001
        out.put((rank, f"{type(err).__name__}: {err}"))
    finally:
        torch.distributed.destroy_process_group()


def test_a_fit_that_fails_on_rank_zero_stops_every_rank_with_its_message(tmp_path):
    """Rank 0's fit raises a DataError naming a file: rank 0 raises it, rank 1 an error quoting it (not gloo's
    "Connection closed by peer", nor, with a backend that does not notice, a wait until the timeout)."""
    import multiprocessing
    import queue

    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_fail_on_rank, args=(r, str(tmp_path / "store"), out)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        errors = dict(out.get(timeout=60) for _ in procs)
    except queue.Empty:
        pytest.fail("a rank waited for ever for rank 0's statistics")
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    assert errors[0] == "DataError: a.nc: damaged"
    assert errors[1] == "RuntimeError: BaseDataModule: rank 0 failed to fit 'statistics' for every rank: DataError: a.nc: damaged"


def _launched_environment(launcher: str, rank: int, port: int) -> dict[str, str]:
    """The variables srun or torchrun gives process ``rank`` of 2 on one node (what Lightning's SLURMEnvironment and
    TorchElasticEnvironment read), the main address and port on this machine."""
    common = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    if launcher == "srun":
        return {**common, "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1", "SLURM_PROCID": str(rank),
                "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "climateml",
                "SLURM_NODELIST": "127.0.0.1"}
    return {**common, "RANK": str(rank), "LOCAL_RANK": str(rank), "GROUP_RANK": "0", "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "climateml-test"}


def _connect_and_build(launcher: str, rank: int, port: int, task: str, data: str, out) -> None:
    """One of two processes started at once, as srun or torchrun starts them: connect as ``climateml`` does before
    it builds the DataModule, then set the DataModule up counting its reads; report them and who fitted."""
    from climateml.lightning_cli import connect_processes_started_outside

    torch.set_num_threads(1)
    for name in [k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC_")) or k in ("RANK", "WORLD_SIZE")]:
        del os.environ[name]  # this machine's own (a test run inside a SLURM job) would mix with the simulated ones
    os.environ.update(_launched_environment(launcher, rank, port))
    try:
        # the strategy as a config names it: a string, or a class with its arguments
        strategy = "ddp" if launcher == "torchrun" else {"class_path": "lightning.pytorch.strategies.DDPStrategy",
                                                          "init_args": {"process_group_backend": "gloo"}}
        connected = connect_processes_started_outside({"accelerator": "cpu", "devices": 2, "strategy": strategy})
        if connected:
            assert torch.distributed.get_backend() == "gloo" and torch.distributed.get_rank() == rank
        dm = _datamodule(task, Path(data))
        reads, stats = _setup_counting_reads_of(task, dm)
        out.put((rank, connected, reads, stats, sorted(set(dm.fitted_by.values()))))
    except Exception as err:  # noqa: BLE001  reported to the test instead of a wait for the queue
        out.put((rank, f"{type(err).__name__}: {err}", None, None, None))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@pytest.mark.parametrize("launcher", ["srun", "torchrun"])
def test_processes_srun_or_torchrun_start_take_rank_zeros_statistics(launcher, data_root):
    """Under srun or torchrun every process starts at once and builds its DataModule before Lightning would set up
    the process group: ``climateml`` connects them first (with the config's Trainer strategy), so rank 0 reads the
    training data for the statistics and rank 1 reads none, both ending with one process's statistics."""
    import multiprocessing
    import queue
    import socket

    task = "segmentation"
    data = make_data(task, data_root)
    alone = _datamodule(task, data)
    alone.setup()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_connect_and_build, args=(launcher, r, port, task, str(data), out)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        results = {r: rest for r, *rest in (out.get(timeout=120) for _ in procs)}
    except queue.Empty:
        pytest.fail(f"the processes {launcher} started did not connect (or one waited for ever for rank 0)")
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert [results[r][0] for r in (0, 1)] == [True, True], results
    assert results[0][1] == (len(alone.splits["train"]), n_files(alone)) and results[1][1] == (0, 0)
    assert results[0][3] == ["this process"] and results[1][3] == ["rank 0"]
    for name, value in alone.spec.statistics.items():
        assert (results[0][2][name] == value.numpy()).all() and (results[1][2][name] == value.numpy()).all(), name


def test_a_process_started_by_hand_connects_nothing(monkeypatch):
    """No launcher's variables (a process started by hand, or by Lightning's own DDP launcher): no process group is
    set up and no Trainer is built; one srun task alone (world size 1) connects nothing either."""
    from climateml.lightning_cli import connect_processes_started_outside

    for name in [k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC_", "OMPI_", "PMI_", "LSB_"))
                 or k in ("RANK", "GROUP_RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "WORLD_SIZE")]:
        monkeypatch.delenv(name)
    assert connect_processes_started_outside({"accelerator": "cpu", "devices": 2, "strategy": "ddp"}) is False
    for name, value in _launched_environment("srun", 0, 29500).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "1")
    assert connect_processes_started_outside({"accelerator": "cpu", "devices": 1}) is False
    assert not torch.distributed.is_initialized()


def _build_in_child(task: str, data: str, out) -> None:
    torch.set_num_threads(1)
    out.put(_setup_counting_reads(task, Path(data)))


@pytest.mark.parametrize("task", ["segmentation", "nowcasting"])
def test_processes_the_ddp_launcher_starts_take_its_statistics(task, data_root, monkeypatch):
    """``climateml fit`` under DDP on one machine: the launching process fitted the statistics before any process
    group exists; the processes it starts (here a forked child, with its environment) build their DataModule
    from what it handed down, reading no training file."""
    import multiprocessing

    import climateml.data.base as base

    data = make_data(task, data_root)
    parent = _datamodule(task, data)
    parent.setup()
    monkeypatch.delenv(base.FITTED_ENV, raising=False)
    base.hand_down_fitted(parent, world_size=2)
    path = Path(os.environ[base.FITTED_ENV])
    try:
        out = multiprocessing.get_context("fork").Queue()
        child = multiprocessing.get_context("fork").Process(target=_build_in_child, args=(task, str(data), out))
        child.start()
        n_reads, stats = out.get(timeout=120)
        child.join(60)
    finally:
        path.unlink()
    assert child.exitcode == 0 and n_reads == (0, 0)
    assert all((stats[k] == v.numpy()).all() for k, v in parent.spec.statistics.items())


def test_statistics_handed_down_are_taken_only_for_the_same_options(data_root, monkeypatch):
    """What the launching process handed down is found by every input of the fit: a DataModule of other channels
    on the same training files (a second fit in the same script) fits its own statistics instead of taking those
    of the launcher's channels."""
    import climateml.data.base as base

    data = make_data("segmentation", data_root)
    parent = _datamodule("segmentation", data)
    parent.setup()
    monkeypatch.delenv(base.FITTED_ENV, raising=False)
    base.hand_down_fitted(parent, world_size=2)
    path = Path(os.environ[base.FITTED_ENV])
    try:
        same, other = _datamodule("segmentation", data), _datamodule("segmentation", data, channels=["TMQ"])
        same.setup()
        other.setup()
    finally:
        path.unlink()
    assert set(same.fitted_by.values()) == {"the launcher"}
    assert [by for key, by in other.fitted_by.items() if ".statistics:" in key] == ["this process"]
    assert other.statistics["x_mean"].shape == (1,) and parent.statistics["x_mean"].shape == (4,)
