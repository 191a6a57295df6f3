"""Shared fixtures: one small synthetic ClimateBench data set per test session, and helpers to read it by hand."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from climateml.data.synthetic import Grid, generate_climatebench

SMALL_GRID = Grid(nlat=8, nlon=12)
ALL_SCENARIOS = ("historical", "ssp126", "ssp245", "ssp370", "ssp585", "hist-GHG", "hist-aer")
CSV_PATH = Path(__file__).resolve().parents[1] / "climateml" / "data" / "synthetic" / "rcmip_emissions.csv"


@pytest.fixture(scope="session")
def small_climatebench(tmp_path_factory) -> Path:
    """All 7 scenarios on an 8 x 12 grid, seed 0, NetCDF; read-only: copy it before changing anything."""
    out = tmp_path_factory.mktemp("climatebench_small")
    generate_climatebench(out, grid=SMALL_GRID, progress=False)
    return out


@pytest.fixture
def writable_copy(tmp_path):
    """``writable_copy(folder) -> path``: a private copy of a read-only session data set that a test may corrupt."""

    def copy(source: Path) -> Path:
        return Path(shutil.copytree(source, tmp_path / "data"))

    return copy


@pytest.fixture
def cb_copy(small_climatebench, writable_copy) -> Path:
    """A private copy of the small data set that a test may corrupt."""
    return writable_copy(small_climatebench)


@pytest.fixture(scope="session")
def rcmip() -> dict[str, dict[str, np.ndarray]]:
    """The emission CSV parsed here with the csv module (independently of the package's reader).

    {scenario: {"year", "co2" [GtCO2/yr], "ch4" [MtCH4/yr], "so2" [MtSO2/yr], "bc" [MtBC/yr]}}
    """
    rows: dict[str, list[list[float]]] = {}
    with open(CSV_PATH, newline="") as f:
        lines = [line for line in f if not line.startswith("#")]
    reader = csv.DictReader(lines)
    for r in reader:
        rows.setdefault(r["scenario"], []).append(
            [float(r["year"]), float(r["co2_GtCO2_per_yr"]), float(r["ch4_MtCH4_per_yr"]),
             float(r["so2_MtSO2_per_yr"]), float(r["bc_MtBC_per_yr"])])
    out = {}
    for s, v in rows.items():
        a = np.array(v)
        out[s] = {"year": a[:, 0].astype(int), "co2": a[:, 1], "ch4": a[:, 2], "so2": a[:, 3], "bc": a[:, 4]}
    return out


@pytest.fixture
def cli_error(capsys):
    """``cli_error(args) -> (exit code, stderr lines)``: ``climateml <args>`` run in this process, its stderr
    without Python warnings (pytest shows them) and Lightning's "Seed set" line."""
    from climateml.cli import main

    warning = re.compile(r"^\S+\.py:\d+: ")

    def run(args: list[str]) -> tuple[int, list[str]]:
        try:
            rc = main(list(args))
        except SystemExit as exc:  # jsonargparse's own errors (wrong types) exit after printing
            rc = exc.code
        err = capsys.readouterr().err
        return rc, [line for line in err.splitlines()
                    if line.strip() and "Seed set" not in line and not warning.match(line)]

    return run



@pytest.fixture(autouse=True)
def _restore_environment():
    """Each test leaves ``os.environ`` as it found it. Lightning's DDP set-up, run in-process by a test (the
    launch scripts' commands), exports MASTER_PORT, WORLD_SIZE, LOCAL_RANK ...; a later test's DDP subprocess
    that inherits them takes itself for an already-launched rank and waits for a peer that never comes."""
    import os

    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
