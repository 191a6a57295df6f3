"""Skill of the temperature lab's default emulator against its baselines, on data sets it was not tuned on.

Not a speed benchmark: it runs ``climateml fit --config configs/temperature.yaml`` (the defaults, unchanged)
on each data set and prints the ClimateBench NRMSE total of tas (2080-2100 of the test scenario, spatial +
5 x global) of the model and of every baseline, as the Markdown table in README.md:

* ``default``: the sample data (``climateml synth climatebench``);
* ``regional``, ``saturating_aerosol``, ``noisy``: ClimateBench-layout data from other physics
  (:data:`climateml.data.synthetic.PHYSICS`);
* ``record``: a 1 x 1 grid, one member, 140 years of one scenario split in time
  (:func:`climateml.data.synthetic.generate_record`), like an observed record.

    python benchmarks/temperature_skill.py                       # 96 x 144, ~10 min on 2 busy cores
    python benchmarks/temperature_skill.py --nlat 24 --nlon 36   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import _common  # noqa: F401  (this checkout first on sys.path)

from climateml.cli import main
from climateml.data.synthetic import Grid, generate_climatebench, generate_record

CONFIG = str(Path(_common.REPO_ROOT) / "configs" / "temperature.yaml")
DATA_SETS = ("default", "regional", "saturating_aerosol", "noisy", "record")
ENTRIES = ("model", "pattern_scaling", "random_forest", "gaussian_process", "linear_baseline")


def make_data(name: str, out: Path, grid: Grid, seed: int = 0) -> None:
    """Write a data set into ``out``."""
    if name == "record":
        generate_record(out, seed=seed)
    else:
        generate_climatebench(out, grid=grid, seed=seed, physics=name, progress=False)


def fit_args(name: str) -> list[str]:
    """The extra ``climateml fit`` arguments a data set needs: the record trains and tests on its two parts."""
    if name == "record":
        return ["--data.init_args.train_scenarios", "[record_train]", "--data.init_args.test_scenarios", "[record_test]"]
    return []


def fit(data_dir: Path, run_root: Path, extra: list[str]) -> dict:
    """``climateml fit`` with the lab's config on ``data_dir``; returns metrics.json."""
    args = ["fit", "--config", CONFIG, "--data.init_args.data_dir", str(data_dir),
            "--trainer.logger.init_args.save_dir", str(run_root), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", *extra]
    if main(args) != 0:
        raise RuntimeError(f"climateml {' '.join(args)} failed")
    runs = sorted((run_root / "temperature").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    return json.loads((runs[-1] / "metrics.json").read_text())


def table(results: dict[str, dict], grid: Grid) -> str:
    head = "| data set | " + " | ".join(ENTRIES) + " | winner |"
    lines = [head, "|" + "---|" * (len(ENTRIES) + 2)]
    for name, m in results.items():
        tas = m["tas"]
        scores = {e: tas[e]["nrmse_total"] for e in ENTRIES if e in tas}
        best = min(scores, key=scores.get)
        cells = ["—" if e not in scores else f"**{scores[e]:.3f}**" if e == best else f"{scores[e]:.3f}"
                 for e in ENTRIES]
        size = "1 x 1" if name == "record" else f"{grid.nlat} x {grid.nlon}"
        lines.append(f"| {name} ({size}) | " + " | ".join(cells) + f" | {best} |")
    return "\n".join(lines)


def run(data_sets=DATA_SETS, grid: Grid = Grid(), seed: int = 0, work: Path | None = None,
        extra: list[str] = ()) -> dict[str, dict]:
    """metrics.json of a ``climateml fit`` on each data set (generated into ``work`` or a temporary folder)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(work or tmp)
        out = {}
        for name in data_sets:
            data = work / f"data_{name}_{grid.nlat}x{grid.nlon}_s{seed}"
            if not data.exists():
                make_data(name, data, grid, seed)
            out[name] = fit(data, work / f"runs_{name}", [*fit_args(name), *extra])
        return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nlat", type=int, default=96)
    parser.add_argument("--nlon", type=int, default=144)
    parser.add_argument("--seed", type=int, default=0, help="seed of the data sets' internal variability")
    parser.add_argument("--data-sets", nargs="+", default=list(DATA_SETS), choices=DATA_SETS)
    parser.add_argument("--work", default=None, help="keep data and runs here (default: a temporary folder)")
    parser.add_argument("extra", nargs="*", help="more `climateml fit` arguments, after --")
    a = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    grid = Grid(a.nlat, a.nlon)
    results = run(a.data_sets, grid, a.seed, Path(a.work) if a.work else None, a.extra)
    print("\nNRMSE total of tas (ClimateBench: 2080-2100, spatial + 5 x global; lower is better)\n")
    print(table(results, grid))
    sys.exit(0)
