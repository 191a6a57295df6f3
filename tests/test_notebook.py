"""The global temperature lab notebook runs end to end on small sample data and writes what it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "01_global_temperature_lab.ipynb"
NLAT, NLON, EPOCHS, ENSEMBLE = 12, 18, 3, 2
SSP245_YEARS = np.arange(2015, 2101)  # 86 years


def _kernel_python() -> str | None:
    """The interpreter the 'python3' kernelspec starts (jupyter_client runs a bare 'python' as sys.executable)."""
    try:
        argv = KernelSpecManager().get_kernel_spec("python3").argv
    except NoSuchKernel:
        return None
    bare = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}
    return sys.executable if argv[0] in bare else argv[0]


def _runs_this_environment(python: str | None) -> bool:
    """Whether ``python`` has this interpreter's sys.prefix (a venv's python is a symlink, so paths would not tell)."""
    if python is None:
        return False
    try:
        out = subprocess.run([python, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.strip() == sys.prefix


def _use_this_python_as_kernel(tmp_path: Path, monkeypatch) -> None:
    """Make 'python3' start this interpreter (which has climateml): a private kernelspec first on JUPYTER_PATH."""
    if _runs_this_environment(_kernel_python()):
        return
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (climateml tests)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    assert _runs_this_environment(_kernel_python()), "could not point the python3 kernel at this interpreter"


def test_committed_notebook_is_valid_and_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"cell {cell.id} was committed with outputs"
    source = "\n".join(c.source for c in code)
    for name in ("CLIMATEML_LAB_DATA", "CLIMATEML_LAB_NLAT", "CLIMATEML_LAB_NLON", "CLIMATEML_LAB_EPOCHS",
                 "CLIMATEML_LAB_ENSEMBLE", "CLIMATEML_LAB_RUNS"):
        assert name in source, f"the settings cell does not read {name}"


def _tagged_text(nb, tag: str) -> str:
    cells = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}"
    return "".join(o.get("text", "") for o in cells[0].outputs if o.output_type == "stream" and o.name == "stdout")


def _table(text: str, labels: list[str]) -> pd.DataFrame:
    """Parse a DataFrame printed with to_string() whose row labels (which may contain spaces) are ``labels``."""
    lines = text.strip("\n").splitlines()
    assert len(lines) == len(labels) + 1, text
    rows = {}
    for label, line in zip(labels, lines[1:]):
        assert line.startswith(label), f"expected a row {label!r} in\n{text}"
        rows[label] = [float(v) for v in line[len(label):].split()]
    return pd.DataFrame.from_dict(rows, orient="index", columns=lines[0].split())


def test_lab_notebook_runs_on_small_sample_data(tmp_path, monkeypatch):
    data, runs = tmp_path / "climatebench", tmp_path / "runs"
    for name, value in {"CLIMATEML_LAB_DATA": data, "CLIMATEML_LAB_RUNS": runs, "CLIMATEML_LAB_NLAT": NLAT,
                        "CLIMATEML_LAB_NLON": NLON, "CLIMATEML_LAB_EPOCHS": EPOCHS,
                        "CLIMATEML_LAB_ENSEMBLE": ENSEMBLE, "MPLBACKEND": "Agg"}.items():
        monkeypatch.setenv(name, str(value))
    _use_this_python_as_kernel(tmp_path, monkeypatch)

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError, with the traceback, if a cell fails

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code"), "a code cell did not run"

    # the sample data was generated on the requested grid, in the ClimateBench layout
    with xr.open_dataset(data / "outputs_ssp245.nc") as raw:
        assert dict(raw["tas"].sizes) == {"member": 3, "time": 86, "lat": NLAT, "lon": NLON}

    # the scores table: the emulator and ClimateBench's three baselines, every score, finite numbers
    scores = _table(_tagged_text(nb, "metrics"), ["emulator [64, 64]", "linear baseline", "random forest",
                                                  "gaussian process"])
    assert list(scores) == ["rmse", "mae", "bias", "r2", "nrmse_spatial", "nrmse_global", "nrmse_total"]
    assert np.isfinite(scores.to_numpy()).all() and (scores["rmse"] > 0).all()
    assert (scores["mae"] <= scores["rmse"]).all()
    # ensemble and architecture tables: one row per member plus the mean; two architectures
    _table(_tagged_text(nb, "ensemble"), [f"member {i}" for i in range(ENSEMBLE)] + ["ensemble mean"])
    archs = _table(_tagged_text(nb, "architectures"), ["[64, 64]", "[128, 128], dropout 0.2"])
    assert list(archs["epochs"]) == [EPOCHS, EPOCHS] and (archs["best_val_loss"] > 0).all()
    assert archs.loc["[64, 64]", "parameters"] == (2 * 64 + 64) + (64 * 64 + 64) + (64 + 1) * NLAT * NLON

    # training honoured the epoch setting and logged learning curves for every network
    logs = sorted(p.relative_to(runs).parts[0] for p in runs.glob("*/version_*/metrics.csv"))
    assert logs == ["arch_128x128_dropout"] + [f"ensemble_member{i}" for i in range(ENSEMBLE)] + ["temperature"]
    assert len(list((runs / "temperature").glob("version_*/checkpoints/best-*.ckpt"))) == 1

    history = pd.read_csv(next((runs / "temperature").glob("version_*/metrics.csv")))
    assert history["epoch"].max() == EPOCHS - 1 and history["val_loss"].notna().sum() == EPOCHS

    # the NetCDF output: tas(time, lat, lon) for the 86 years of ssp245, with coordinates and units
    path = runs / "lab_predictions_ssp245.nc"
    assert path.exists()
    with xr.open_dataset(path) as out:
        for name in ("tas", "tas_linear_baseline", "tas_ensemble_mean", "tas_ensemble_std"):
            assert out[name].dims == ("time", "lat", "lon"), name
            assert out[name].attrs["units"] == "K"
            assert np.isfinite(out[name].values).all(), name
        np.testing.assert_array_equal(out["time"].values, SSP245_YEARS)
        assert out.sizes["lat"] == NLAT and out.sizes["lon"] == NLON
        assert out["lat"].attrs["units"] == "degrees_north" and out.attrs["scenario"] == "ssp245"
        assert float(out["tas_ensemble_std"].min()) >= 0.0 and float(out["tas_ensemble_std"].max()) > 0.0
        # the linear baseline, fitted on the same years, must reproduce ssp245's warming (about 1 K -> 3 K)
        w = np.cos(np.deg2rad(out["lat"]))
        warming = out["tas_linear_baseline"].weighted(w).mean(("lat", "lon"))
        assert 0.5 < float(warming.sel(time=2015)) < float(warming.sel(time=2100)) < 5.0
