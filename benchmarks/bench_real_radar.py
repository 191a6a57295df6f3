"""Nowcasting on real radar archives: the default model against persistence and optical flow, per data set.

Not a test and never run by one: it needs a local copy of the public pysteps example data
(https://github.com/pySTEPS/pysteps-data), which the user provides, either a clone (work tree) or a bare
mirror; nothing is downloaded. The archives are placed (copied out of a bare mirror with ``git archive``)
under ``--data-dir`` (default ``data/real_radar``, git-ignored) and each data set is then trained and
scored with ``climateml fit --config configs/nowcasting.yaml`` as a user would run it:

* **melbourne**: BOM Rainfields radar 2 (Melbourne) 2018-06-16, 6-min CF NetCDF accumulations
  (``radar/bom/prcp-cscn/2/2018/06/16``, variable ``precipitation``), 512 x 512 cells of 0.5 km;
  4 frames in, 10 out (60 min); train 10:00-12:24, validate 12:30-13:48, test 13:54-16:00. Whole frames
  are validated and tested; training reads random 128 x 128 crops (``--data.crop``) for CPU time.
* **opera**: the OPERA ODIM HDF5 composite 2018-08-24 18:00-23:45, 15-min (``radar/OPERA/20180824``,
  ``--data.variable RATE``), 2200 x 1900 cells of 2 km over Europe. For CPU time only a rainy 384 x 384
  region (768 km square over central Europe, ``--data.region``) is read; 3 frames in, 4 out (60 min), as
  the 24 frames of the archive leave no room for 4 in: train 18:00-19:45, validate 20:00-21:30, test
  21:45-23:45.
* **generated**: the sample frames ``climateml fit --config configs/nowcasting.yaml`` writes
  (``--data.paths`` a fresh folder; the configuration's own periods, 4 in, 6 out).

The results table (markdown: CSI at 1 mm/h and MAE [mm/h], means over lead times, for the model, persistence
and optical flow, plus the training loss and the winner) is printed and written to
``<runs>/real_radar_results.md``; each run's metrics.json and figures stay in ``<runs>/<data set>/``.

Licences: the pysteps-data README states terms only for the RMI data (not used here). The BOM files carry
``licence: http://www.bom.gov.au/other/copyright.shtml``; OPERA data are EUMETNET's. Neither is copied into
this repository.

Run: ``python benchmarks/bench_real_radar.py --pysteps-data PATH [--only melbourne opera generated]
[--max-epochs 25] [--runs runs/real_radar]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import _common  # noqa: F401  (puts the repository root on sys.path)
from _common import REPO_ROOT

CONFIG = REPO_ROOT / "configs" / "nowcasting.yaml"
DATASETS = {
    "melbourne": {
        "source": "radar/bom/prcp-cscn/2/2018/06/16",
        "args": ["--data.variable", "precipitation", "--data.n_in", "4", "--data.n_out", "10",
                 "--data.train_period", '["2018-06-16T10:00", "2018-06-16T12:24"]',
                 "--data.val_period", '["2018-06-16T12:30", "2018-06-16T13:48"]',
                 "--data.test_period", '["2018-06-16T13:54", "2018-06-16T16:00"]',
                 "--data.crop", "[128, 128]", "--data.batch_size", "4"],
    },
    "opera": {
        "source": "radar/OPERA/20180824",
        "args": ["--data.variable", "RATE", "--data.n_in", "3", "--data.n_out", "4",
                 "--data.region", "{y: [1264, 2032], x: [2048, 2816]}",
                 "--data.train_period", '["2018-08-24T18:00", "2018-08-24T19:45"]',
                 "--data.val_period", '["2018-08-24T20:00", "2018-08-24T21:30"]',
                 "--data.test_period", '["2018-08-24T21:45", "2018-08-24T23:45"]',
                 "--data.crop", "[128, 128]", "--data.batch_size", "4"],
    },
    "generated": {"source": None, "args": []},
}


def place(pysteps_data: Path, source: str, data_dir: Path) -> Path:
    """The archive folder ``source`` of a pysteps-data clone, or copied out of a bare mirror into ``data_dir``."""
    if (pysteps_data / source).is_dir():
        return pysteps_data / source
    target = data_dir / source
    if target.is_dir() and any(target.iterdir()):
        return target
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile() as tar:
        subprocess.run(["git", "-C", str(pysteps_data), "archive", "HEAD", source], stdout=tar, check=True)
        tar.seek(0)
        with tarfile.open(fileobj=tar) as archive:
            archive.extractall(data_dir, filter="data")
    return target


def run(name: str, folder: Path, runs: Path, max_epochs: int, extra: list[str]) -> dict:
    """``climateml fit`` on one data set; its metrics.json (``{rain_rate: {model, persistence, optical_flow}}``)."""
    save_dir = runs / name
    cmd = [sys.executable, "-m", "climateml.cli", "fit", "--config", str(CONFIG), "--data.paths", str(folder),
           *DATASETS[name]["args"], "--trainer.max_epochs", str(max_epochs),
           "--trainer.logger.init_args.save_dir", str(save_dir), "--trainer.enable_progress_bar", "false", *extra]
    print("$", " ".join(cmd[2:]), flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run(cmd, check=True, cwd=REPO_ROOT, env=env)
    run_dir = max((save_dir / "nowcasting").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    return json.loads((run_dir / "metrics.json").read_text())["rain_rate"] | {"_run": str(run_dir)}


def table(results: dict) -> str:
    """One row per data set: CSI at 1 mm/h and MAE of the model, persistence and optical flow, and the verdict."""
    entries = ("model", "persistence", "optical_flow")
    lines = ["| data set | CSI at 1 mm/h: model | persistence | optical flow | MAE (mm/h): model | persistence | "
             "optical flow | verdict (model against optical flow) |", "| --- |" + " ---: |" * 6 + " --- |"]
    for name, by in results.items():
        model, flow = by["model"], by["optical_flow"]
        words = []
        for key, label, higher in (("csi_1.0", "CSI", True), ("mae", "MAE", False)):
            diff = model[key] - flow[key]
            words.append(f"{label} tie" if abs(diff) < 5e-5 else
                         f"{label} {'model' if (diff > 0) == higher else 'optical flow'} by {abs(diff):.3f}")
        cells = [f"{by[e]['csi_1.0']:.3f}" for e in entries] + [f"{by[e]['mae']:.3f}" for e in entries]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'; '.join(words)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pysteps-data", type=Path, required=False,
                        help="a local clone or bare mirror of github.com/pySTEPS/pysteps-data (needed for melbourne, opera)")
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT / "data" / "real_radar",
                        help="where archives copied out of a bare mirror are placed (default data/real_radar)")
    parser.add_argument("--runs", type=Path, default=REPO_ROOT / "runs" / "real_radar")
    parser.add_argument("--only", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--max-epochs", type=int, default=25, help="a ceiling; early stopping ends runs sooner")
    parser.add_argument("extra", nargs="*", help="more `climateml fit` options for every run (after --)")
    args = parser.parse_args(argv)
    results = {}
    for name in args.only:
        source = DATASETS[name]["source"]
        if source is None:
            folder = args.data_dir / "generated"
        elif args.pysteps_data is None:
            parser.error(f"{name} needs --pysteps-data (a local copy of pysteps-data)")
        else:
            folder = place(args.pysteps_data, source, args.data_dir)
        results[name] = run(name, folder, args.runs, args.max_epochs, args.extra)
    text = table(results)
    print(text)
    args.runs.mkdir(parents=True, exist_ok=True)
    (args.runs / "real_radar_results.md").write_text(text + "\n")
    return results


if __name__ == "__main__":
    main()
