"""Sample data never lands in a user's data (issue 12, point 7): ``synthesize_if_missing`` writes only into a folder
that does not exist or is empty, for every task; a folder of other files is one clear error, and nothing is written."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from climateml.data.io import DataError, may_write_sample_data

DAY = "2024-06-01"
PERIODS = {"train_period": [f"{DAY}T00:00", f"{DAY}T00:05"], "val_period": [f"{DAY}T00:10", f"{DAY}T00:10"],
           "test_period": [f"{DAY}T00:15", f"{DAY}T00:15"]}


def _datamodule(task: str, folder: Path):
    """The task's DataModule on ``folder`` with sample data switched on (tiny sample options)."""
    if task == "temperature":
        from climateml.data import ClimateBenchDataModule

        return ClimateBenchDataModule(str(folder), synthesize_if_missing=True,
                                      sample_options={"nlat": 4, "nlon": 6, "scenarios": ["ssp245"], "progress": False})
    if task == "segmentation":
        from climateml.data import SegmentationDataModule

        return SegmentationDataModule(str(folder), synthesize_if_missing=True,
                                      sample_options={"n_dates": 2, "nlat": 8, "nlon": 12, "n_double_labelled": 0,
                                                      "progress": False})
    from climateml.data import NowcastingDataModule

    return NowcastingDataModule(str(folder), synthesize_if_missing=True, **PERIODS,
                                sample_options={"n_frames": 4, "ny": 8, "nx": 8, "progress": False})


# what each task's generator writes (names), and a file of its layout
WRITES = {"temperature": "*_ssp245.nc", "segmentation": "data-*.nc", "nowcasting": "RAD_*.nc"}


def _snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (hidden ones too) with a hash of its content."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("task", ["temperature", "segmentation", "nowcasting"])
def test_a_folder_of_other_files_is_an_error_and_is_left_untouched(task, tmp_path):
    """The reported case: a folder of 39 ODIM .hdf composites. Nothing is written; the error lists what is there
    (for nowcasting the composites are its frames: the reader's error names the first unreadable one)."""
    folder = tmp_path / "archive"
    folder.mkdir()
    for i in range(39):
        (folder / f"T_PAAH21_C_EUOC_2024060100{i:02d}00.hdf").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes([i]))
    (folder / "notes").mkdir()
    (folder / ".listing").write_text("hidden")
    before = _snapshot(folder)
    if task == "nowcasting":  # ODIM composites are radar frames: nothing is written, the reader judges them
        dm = _datamodule(task, folder)
        dm.prepare_data()
        with pytest.raises(DataError) as err:
            dm.setup()
        assert str(err.value).startswith(f"{folder / 'T_PAAH21_C_EUOC_20240601000000.hdf'}: cannot be read as ODIM")
        assert _snapshot(folder) == before
        return
    with pytest.raises(DataError) as err:
        _datamodule(task, folder).prepare_data()
    message = str(err.value)
    assert message.startswith(f"{folder}: holds 39 *.hdf files, 1 folder and no ")
    assert "is the format supported?" in message and "synthesize_if_missing" in message
    assert _snapshot(folder) == before


@pytest.mark.parametrize("task", ["temperature", "segmentation", "nowcasting"])
def test_sample_data_goes_into_an_empty_folder_once(task, tmp_path):
    """An empty folder (a hidden .gitkeep does not count) gets the sample data; the next run reads it, writing
    nothing more."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / ".gitkeep").write_text("")
    _datamodule(task, folder).prepare_data()
    written = _snapshot(folder)
    assert sorted(folder.glob(WRITES[task])) and len(written) > 1
    _datamodule(task, folder).prepare_data()
    assert _snapshot(folder) == written


def test_a_folder_that_holds_the_layouts_files_gets_nothing_more(tmp_path):
    """One file of the layout is enough to count as the user's data: the reader judges it, nothing is added."""
    folder = tmp_path / "radar"
    folder.mkdir()
    (folder / "frame.nc").write_bytes(b"not even NetCDF")
    (folder / "readme.txt").write_text("x")
    assert may_write_sample_data(folder, ("*.nc", "*.zarr"), "radar", "data.paths") is False
    assert may_write_sample_data(tmp_path / "missing", ("*.nc",), "radar", "data.paths") is True
    with pytest.raises(DataError, match="names a file"):
        may_write_sample_data(folder / "readme.txt", ("*.nc",), "radar", "data.paths")


def test_a_glob_writes_into_its_folder_only_when_that_is_empty(tmp_path):
    """``data.paths: archive/*.nc`` matching nothing: the sample frames go into archive/ if it is new or empty."""
    from climateml.data import NowcastingDataModule

    options = {"synthesize_if_missing": True, **PERIODS, "sample_options": {"n_frames": 3, "ny": 4, "nx": 4,
                                                                             "progress": False}}
    NowcastingDataModule(str(tmp_path / "new" / "*.nc"), **options).prepare_data()
    assert len(list((tmp_path / "new").glob("RAD_*.nc"))) == 3
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.grib2").write_bytes(b"x")
    with pytest.raises(DataError, match=r"holds 1 \*\.grib2 file and no radar files"):
        NowcastingDataModule(str(other / "*.nc"), **options).prepare_data()
    assert [p.name for p in other.iterdir()] == ["a.grib2"]


def test_the_command_line_reports_the_folder_in_one_line(tmp_path, cli_error):
    """`climateml fit --config configs/nowcasting.yaml --data.paths <folder of .hdf files>`: one error line, no frame
    written (the run reported in the issue wrote 1,147 sample frames there). ODIM .hdf files are radar frames: the
    line names the first one the ODIM reader cannot read."""
    folder = tmp_path / "odim"
    folder.mkdir()
    for i in range(3):
        (folder / f"composite_{i}.hdf").write_bytes(b"x")
    config = Path(__file__).resolve().parents[1] / "configs" / "nowcasting.yaml"
    rc, lines = cli_error(["fit", "--config", str(config), "--data.paths", str(folder),
                           "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")])
    assert rc == 2 and len(lines) == 1
    assert lines[0].startswith(f"climateml: error: {folder / 'composite_0.hdf'}: cannot be read as ODIM HDF5")
    assert sorted(p.name for p in folder.iterdir()) == [f"composite_{i}.hdf" for i in range(3)]


def _race_for_sample_data(folder: str, log: str, barrier) -> None:
    """One of two processes started at once: ``sample_data_folder``, with a slow writer that notes each call."""
    import time

    from climateml.data.io import sample_data_folder

    barrier.wait()
    with sample_data_folder(folder, ("*.nc",), "test", "data.data_dir") as out:
        if out is not None:
            with open(log, "a") as f:
                f.write(f"{os.getpid()}\n")
            for i in range(5):
                (out / f"part_{i}.nc").write_text(str(i))
                time.sleep(0.05)
    # when either process returns, the folder is whole: the other one's half-written copy is never visible
    assert sorted(p.name for p in Path(folder).iterdir()) == [".gitkeep"] + [f"part_{i}.nc" for i in range(5)]


def test_two_processes_at_once_write_the_sample_data_once(tmp_path):
    """Two processes (two DDP ranks' prepare_data, two jobs) start at once on an empty folder: one writes, the
    other waits and reads what it wrote; no temporary folder is left."""
    import multiprocessing

    folder = tmp_path / "data"
    folder.mkdir()
    (folder / ".gitkeep").write_text("")
    log = tmp_path / "writers.txt"
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_race_for_sample_data, args=(str(folder), str(log), barrier)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(log.read_text().split()) == 1  # written once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "writers.txt"]  # no temporary folder left


def test_a_failed_sample_data_write_leaves_nothing(tmp_path):
    from climateml.data.io import sample_data_folder

    folder = tmp_path / "data"
    with pytest.raises(RuntimeError, match="generator failed"):
        with sample_data_folder(folder, ("*.nc",), "test", "data.data_dir") as out:
            (out / "half.nc").write_text("x")
            raise RuntimeError("generator failed")
    assert list(tmp_path.iterdir()) == []


def test_what_a_killed_sample_data_write_left_is_removed_by_the_next(tmp_path):
    """A process killed while writing sample data (SIGKILL: no clean-up ran) leaves its temporary folder beside the
    data folder; the next write removes it, and the data folder is whole."""
    import multiprocessing
    import signal

    from climateml.data.io import sample_data_folder

    folder = tmp_path / "data"

    def killed_while_writing():
        with sample_data_folder(folder, ("*.nc",), "test", "data.data_dir") as out:
            (out / "half.nc").write_text("x")
            os.kill(os.getpid(), signal.SIGKILL)

    child = multiprocessing.get_context("fork").Process(target=killed_while_writing)
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert len(list(tmp_path.iterdir())) == 1 and not folder.exists()  # its temporary folder, left behind
    with sample_data_folder(folder, ("*.nc",), "test", "data.data_dir") as out:
        (out / "whole.nc").write_text("x")
    assert [p.name for p in tmp_path.iterdir()] == ["data"] and [p.name for p in folder.iterdir()] == ["whole.nc"]
