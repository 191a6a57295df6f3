"""Every command README.md and data/README.md show, run as written on small generated data (issue 12).

The commands are extracted from the READMEs (tests/readme_commands.py) and run in one workspace folder that
holds a copy of configs/, as a user would run them from the repository: relative paths (``data/...``,
``runs/<task>/version_0/...``) resolve there. Each command keeps every option the README gives; extra options
appended after them only shrink the cost (small sample grids, few frames and dates, one epoch, small networks),
and ``--out`` folders go to fresh subfolders so that ``synth`` never overwrites the data the runs use.

The three quick-start fits run once per session (the ``workspace`` fixture); every other command that needs a
trained run (``--ckpt_path runs/<task>/version_0/...`` or ``...``) uses their checkpoints. In-process through
``climateml.cli.main``, not in a subprocess: an interpreter start with torch and Lightning costs seconds.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

try:
    import tomllib
except ImportError:  # Python 3.10: pytest's own TOML reader
    import tomli as tomllib

from climateml.evaluation.base import VERDICT_KEY
from climateml.evaluation.base import variables as metric_variables
from readme_commands import TASKS, Command, commands, option, task_of

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "data/README.md")
COMMANDS = [c for doc in DOCS for c in commands(ROOT / doc, ROOT)]
CLIMATEML = ("climateml", ".venv/bin/climateml")

DAY = "2024-06-01"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
# appended to every command with --config configs/<task>.yaml: the same small data and network for every subcommand
# (validate / test / predict rebuild the model from the config before loading a checkpoint)
SMALL = {
    "temperature": ["--data.sample_options", "{nlat: 8, nlon: 12}", "--model.hidden_sizes", "[16]"],
    "segmentation": ["--data.sample_options", "{n_dates: 10, nlat: 16, nlon: 24, seed: 0, n_double_labelled: 1}",
                     "--data.crop", "[8, 24]", "--model.depth", "2", "--model.width", "4"],
    "nowcasting": ["--data.sample_options", "{n_frames: 48, ny: 16, nx: 16, missing: [10], progress: false}",
                   "--data.train_period", f"[{DAY}T00:00, {DAY}T01:55]", "--data.val_period",
                   f"[{DAY}T02:00, {DAY}T02:40]", "--data.test_period", f"[{DAY}T02:45, {DAY}T03:55]",
                   "--data.n_in", "3", "--data.n_out", "2", "--model.depth", "1", "--model.width", "4"],
}
FIT = ["--trainer.max_epochs", "1"]
# fits beyond the quick start: figures and the costly baselines (random forest, Gaussian process) are tested there
NO_FIGURES = ["--evaluation.init_args.make_figures", "false"]
LINEAR_ONLY = ["--evaluation.init_args.baselines", "[linear]"]
# appended to commands that are not task runs: small sizes, few samples and epochs
SMALL_SYNTH = {
    "climatebench": ["--nlat", "4", "--nlon", "6", "--scenarios", "ssp126", "ssp245"],
    "climatenet": ["--n", "3", "--nlat", "8", "--nlon", "12", "--double-labelled", "1"],
    "nowcasting": ["--n-frames", "6", "--ny", "8", "--nx", "8"],
    "confounded": ["--n-train", "24", "--n-val", "12", "--n-test", "12", "--nlat", "8", "--nlon", "12"],
}
SMALL_DEMO = ["--n-train", "96", "--n-val", "32", "--n-test", "32", "--epochs", "1", "--n-attribution", "8",
              "--no-figures", "--threads", "1", "--score-methods", "integrated_gradients"]
SMALL_ATTRIBUTE = ["--n_samples", "2", "--n_figures", "1", "--options", "{n_steps: 4}"]


class Workspace:
    """A folder set up like the repository (a copy of configs/), where README commands run; results are kept,
    so a command that two tests need runs once."""

    def __init__(self, root: Path):
        self.root = root
        shutil.copytree(ROOT / "configs", root / "configs")
        self.results: dict[tuple[str, ...], tuple[int, str, str]] = {}
        self.count = 0

    def run(self, argv: list[str]) -> tuple[int, str, str]:
        """``climateml <argv>`` in this folder: (exit status, stdout, stderr), each command once."""
        from climateml.cli import main

        key = tuple(argv)
        if key not in self.results:
            out, err = io.StringIO(), io.StringIO()
            cwd = os.getcwd()
            os.chdir(self.root)
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    try:
                        rc = main(list(argv))
                    except SystemExit as exc:  # argparse and jsonargparse exit after --help or a parse error
                        rc = exc.code if isinstance(exc.code, int) else 1
            finally:
                os.chdir(cwd)
            self.results[key] = (rc, out.getvalue(), err.getvalue())
        return self.results[key]

    def checkpoint(self, task: str) -> Path:
        """The best checkpoint of the task's quick-start fit (runs/<task>/version_0)."""
        found = sorted((self.root / "runs" / task / "version_0" / "checkpoints").glob("best-*.ckpt"))
        assert len(found) == 1, f"runs/{task}/version_0 has checkpoints {found}"
        return found[0]

    def prepared(self, command: Command) -> list[str]:
        """The command's argv (without the program) with README placeholders resolved and the cost-shrinking options
        appended."""
        argv = list(command.argv[1:])
        task = task_of(command.argv)
        for i, a in enumerate(argv[:-1]):
            if argv[i] == "--ckpt_path" and "..." in argv[i + 1]:  # `best-....ckpt` and a bare `...`
                argv[i + 1] = str(self.checkpoint(task).relative_to(self.root))
            if argv[i] == "--out":  # a fresh folder, so no synth overwrites what the runs read
                self.count += 1
                argv[i + 1] = str(Path("outputs") / f"{self.count}" / argv[i + 1].replace("DIR", "out"))
        if argv[0] == "synth" and len(argv) > 1:
            argv += SMALL_SYNTH[argv[1]]
        elif argv[0] == "demo":
            argv += SMALL_DEMO
        elif task is not None and "--help" not in argv:
            argv += SMALL[task] + QUIET
            if argv[0] == "fit":
                if not self.is_quick_start(command):
                    chosen = option(argv, "--evaluation.init_args.baselines") or option(argv, "--evaluation.baselines")
                    argv += NO_FIGURES + (LINEAR_ONLY if task == "temperature" and chosen is None else [])
                argv += FIT
            if argv[0] == "attribute":
                argv += SMALL_ATTRIBUTE
        return argv

    @staticmethod
    def is_quick_start(command: Command) -> bool:
        return command.argv[1:2] == ("fit",) and len(command.argv) == 4 and task_of(command.argv) is not None

    def run_command(self, command: Command) -> tuple[list[str], int, str, str]:
        argv = self.prepared(command)
        return (argv, *self.run(argv))


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Workspace:
    """A workspace in which the README's quick-start fits (``climateml fit --config configs/<task>.yaml``, one per
    task, as the README writes them) have run: runs/<task>/version_0 with metrics, figures and checkpoints."""
    ws = Workspace(tmp_path_factory.mktemp("readme"))
    for c in COMMANDS:
        if c.argv[0] in CLIMATEML and ws.is_quick_start(c):
            _, rc, out, err = ws.run_command(c)
            assert rc == 0, f"{c} failed:\n{err[-3000:]}"
    assert all((ws.root / "runs" / t / "version_0" / "metrics.json").is_file() for t in TASKS)
    return ws


def n_baselines(task: str) -> int:
    """How many baselines the task's config scores the model against."""
    init = yaml.safe_load((ROOT / "configs" / f"{task}.yaml").read_text())["evaluation"]["init_args"]
    return len(init["baselines"]) if "baselines" in init else int(init.get("heuristic") is not None)


def run_directory(stdout: str, ws: Workspace) -> Path:
    """The run directory a command printed (`run directory: ...`)."""
    found = re.findall(r"^run directory: (.+)$", stdout, flags=re.M)
    assert found, f"no run directory printed:\n{stdout[-2000:]}"
    return ws.root / found[-1].strip()


# ------------------------------------------------------------------------------------------ the extractor
def test_the_extractor_finds_every_kind_of_readme_command():
    """What the READMEs show, as the tests see it (a README may show more; then this still holds): fit of each task,
    validate / test / predict of each task, attribute, demo, synth of every layout, and the shorthands resolved."""
    runs = [c.argv[1:] for c in COMMANDS if c.argv[0] in CLIMATEML]
    shown = Counter((a[0], task_of(("x", *a)) or (a[1] if a[0] in ("synth", "demo") else None)) for a in runs
                    if "--help" not in a)
    wanted = Counter([*[(sub, t) for sub in ("fit", "validate", "test", "predict") for t in TASKS],
                      ("fit", "temperature"), ("fit", "temperature"), ("fit", "segmentation"),  # --ensemble, eof, bf16
                      ("attribute", "segmentation"), ("demo", "clever-hans"), ("synth", "confounded"),
                      *[("synth", layout) for layout in ("climatebench", "climatenet", "nowcasting") for _ in range(2)]])
    assert not wanted - shown, f"missing from the READMEs as extracted: {wanted - shown}"
    # the attribution line's continuation and quotes survive: its target is one YAML word
    attribute = [a for a in runs if a[0] == "attribute"]
    assert option(attribute[0], "--target") == "{kind: class_score, cls: 1, region: {lat: [5, 35]}}"
    # data/README.md's optional group [--nlat 96 --nlon 144] is run with its options; [options] is dropped
    assert ("synth", "climatenet", "--out", "data/climatenet", "--n", "60", "--nlat", "96", "--nlon", "144") in runs
    assert ("synth", "climatebench", "--out", "DIR") in runs
    others = {c.argv[0] for c in COMMANDS if c.argv[0] not in CLIMATEML}
    assert others == {"python3", ".venv/bin/pip", ".venv/bin/pytest"}, "a README command of another program: check it"


def test_the_extractor_on_shell_shorthands(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("text `climateml ignored`\n\n```bash\n# a comment\nclimateml a|b --x '1|2' \\\n   --y \"# not a comment\"  # a comment\n"
                   "echo 1 && echo 2; echo 3\nclimateml synth <task> [--n 3] [options]\n```\n\n```python\nclimateml no\n```\n"
                   "\n    climateml indented --z 1\n    data/layout.nc   not a command\n")
    got = [(c.line, c.argv) for c in commands(doc, tmp_path)]
    assert got == [(5, ("climateml", "a", "--x", "1|2", "--y", "# not a comment")),
                   (5, ("climateml", "b", "--x", "1|2", "--y", "# not a comment")),
                   (7, ("echo", "1")), (7, ("echo", "2")), (7, ("echo", "3")),
                   *[(8, ("climateml", "synth", t, "--n", "3")) for t in TASKS],
                   (15, ("climateml", "indented", "--z", "1"))]


def test_quick_start_install_lines_name_this_package_and_its_extras():
    """The quick start's `python3 -m venv .venv` and `.venv/bin/pip install -e ...` need a network and minutes, so
    they are not run: what they name is checked instead (the package, its extras, its console script, pytest's
    configuration). The `climateml fit` after them is run by the other tests."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    install = [c for c in COMMANDS if c.argv[:2] == (".venv/bin/pip", "install")]
    assert install
    for c in install:
        assert c.argv[2] == "-e", c
        m = re.fullmatch(r"\.(?:\[([\w,]+)\])?", c.argv[3])
        assert m, f"{c}: installs {c.argv[3]!r}, not this repository"
        for extra in (m.group(1) or "").split(",") if m.group(1) else []:
            assert extra in project["project"]["optional-dependencies"], f"{c}: no extra {extra!r}"
    assert project["project"]["scripts"]["climateml"] == "climateml.cli:main"
    venv = [c for c in COMMANDS if c.argv[0] == "python3"]
    assert venv and all(c.argv[1:] == ("-m", "venv", ".venv") for c in venv)
    assert [c.argv for c in COMMANDS if c.argv[0] == ".venv/bin/pytest"] == [(".venv/bin/pytest",)]
    assert project["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]
    assert (ROOT / "tests" / Path(__file__).name).is_file()


# ------------------------------------------------------------------------------------------ every command, run
RUN = [c for c in COMMANDS if c.argv[0] in CLIMATEML]


@pytest.mark.parametrize("command", RUN, ids=[f"{c.doc}:{c.line}:{' '.join(c.argv[1:4])}" for c in RUN])
def test_readme_command_runs_and_does_what_the_readme_says(command, workspace):
    argv, rc, out, err = workspace.run_command(command)
    assert rc == 0, f"{command}\nran as climateml {' '.join(argv)}\n{err[-3000:]}"
    sub, task, ws = argv[0], task_of(command.argv), workspace
    if "--help" in argv:
        assert "--config" in out and "--trainer.max_epochs" in out and "--data" in out
    elif sub == "fit":
        run = run_directory(out, ws)
        metrics = json.loads((run / "metrics.json").read_text())
        # who won, in words: one verdict per variable and headline score (the reserved key, not a variable)
        assert set(metrics[VERDICT_KEY]) == set(metric_variables(metrics)) and all(metrics[VERDICT_KEY].values())
        metrics = metric_variables(metrics)
        for by_name in metrics.values():  # the model and every baseline, scored by the same code
            assert "model" in by_name and len(by_name) >= 2, by_name.keys()
            if workspace.is_quick_start(command):
                assert len(by_name) == 1 + n_baselines(task), by_name.keys()
        assert len(list((run / "checkpoints").glob("best-*.ckpt"))) >= 1 or "--ensemble" in argv
        if workspace.is_quick_start(command):
            assert len(list((run / "figures").glob("*.png"))) >= 3
            assert list(run.glob("test_predictions_*.nc"))
        n_members = int(option(argv, "--ensemble") or 1)
        assert metrics[next(iter(metrics))]["model"]["ensemble_size"] == n_members
        if n_members > 1:
            assert len(list(run.glob("member_*/checkpoints/best-*.ckpt"))) == n_members
        saved = sorted(run.rglob("config.yaml"))[0].read_text()  # an ensemble keeps it per member
        for opt in ("--data.map_reduction", "--trainer.precision"):
            if option(command.argv, opt):
                assert f"{opt.split('.')[-1]}: {option(command.argv, opt)}" in saved
        if option(command.argv, "--data.inputs"):
            assert "- SO2" in saved and "- BC" in saved
    elif sub in ("validate", "test"):
        prefix = "val" if sub == "validate" else "test"
        assert re.search(rf"\b{prefix}_loss\b", out), out[-2000:]
    elif sub == "predict":
        run = run_directory(out, ws)
        files = sorted((run / "predictions").glob("predictions_*.nc"))
        assert files and all(f"wrote {f.relative_to(ws.root)}" in out for f in files)
        variables = {"temperature": {"tas"}, "segmentation": {"LABELS", "probability"},
                     "nowcasting": {"rain_rate"}}[task]
        for f in files:
            with xr.open_dataset(f) as ds:
                assert set(ds.data_vars) == variables
    elif sub == "synth":
        out_dir = ws.root / option(argv, "--out")
        names = sorted(p.name for p in out_dir.rglob("*") if p.suffix in (".nc", ".zarr"))
        layout = argv[1]
        if layout == "climatebench":
            suffix = ".zarr" if option(argv, "--format") == "zarr" else ".nc"
            assert names == [f"{k}_{s}{suffix}" for k in ("inputs", "outputs") for s in ("ssp126", "ssp245")]
            with xr.open_dataset(out_dir / f"outputs_ssp245{suffix}", engine="zarr" if suffix == ".zarr" else None) as ds:
                assert ds.sizes["lat"] == 4 and ds.sizes["lon"] == 6
        elif layout == "climatenet":
            assert len(names) == 4 and all(re.fullmatch(r"data-\d{4}-\d\d-\d\d-01-1_\d\.nc", n) for n in names)
        elif layout == "nowcasting":
            assert len(names) == 6 and all(n.startswith("RAD_") for n in names)
        else:
            assert {"train.nc", "val.nc", "test.nc"} <= set(names)
    elif sub == "attribute":
        method, split = option(argv, "--method") or "integrated_gradients", option(argv, "--split") or "test"
        out_dir = ws.root / (option(argv, "--out") or Path(option(argv, "--ckpt_path")).parent.parent / "attribution")
        with xr.open_dataset(out_dir / f"attribution_{method}_{split}.nc") as ds:
            a = next(ds[v] for v in ds.data_vars if str(v).startswith("attribution"))
            dims = {"temperature": ("sample", "feature"), "segmentation": ("time", "channel", "lat", "lon"),
                    "nowcasting": ("time", "input_frame", "y", "x")}[task]
            assert a.dims == dims and np.isfinite(a.values).all()
            assert ds.attrs["baseline"].startswith("training climatology")  # the README's default
            region = (yaml.safe_load(option(argv, "--target") or "{}") or {}).get("region") or {}
            for dim, (low, high) in region.items():
                assert f"{dim} {low:g}..{high:g}" in ds.attrs["target"], ds.attrs["target"]
        scores = json.loads((out_dir / f"scores_{method}_{split}.json").read_text())
        assert {"faithfulness_correlation", "region_perturbation_auc", "max_sensitivity", "sparseness",
                "randomisation_spearman"} <= set(scores)
    elif sub == "demo":
        res = json.loads((ws.root / option(argv, "--out") / "clever_hans.json").read_text())
        assert set(res) >= {"confounded", "clean"}
    else:
        pytest.fail(f"{command}: a README command this test does not check; add a check")


# ------------------------------------------------------------------------------------------ predict's files
PREDICT = {task_of(c.argv): c for c in RUN if c.argv[1] == "predict"}


@pytest.mark.parametrize("task", TASKS)
def test_predict_writes_the_models_output_on_the_inputs_coordinates(task, workspace):
    """The README's `climateml predict --config configs/<task>.yaml --ckpt_path ...`: the file in the run directory
    the command printed holds, for the first sample of the predict split, what the checkpoint's model returns through
    its predict_step, on the input data's own coordinates."""
    from climateml.attribution.commands import load_checkpoint
    from climateml.cli import _build_task

    argv, rc, out, err = workspace.run_command(PREDICT[task])
    assert rc == 0, err[-3000:]
    files = sorted((run_directory(out, workspace) / "predictions").glob("predictions_*.nc"))
    assert len(files) == 1
    ds = xr.load_dataset(files[0])
    cwd = os.getcwd()
    os.chdir(workspace.root)
    try:
        ckpt = option(argv, "--ckpt_path")
        overrides = [a for a in argv[argv.index("--config") + 2:] if a not in ("--ckpt_path", ckpt)]
        model, dm = _build_task(f"configs/{task}.yaml", overrides)
        load_checkpoint(model, dm, ckpt)
        dm.setup("predict")
        sample = dm.dataset("predict")[0]
        with torch.no_grad():
            first = model.eval().predict_step({k: v[None] for k, v in sample.items()}, 0)[0].double().numpy()
    finally:
        os.chdir(cwd)
    data = workspace.root / "data"
    if task == "temperature":
        truth = xr.open_dataset(data / "climatebench" / "outputs_ssp245.nc")
        assert ds["tas"].dims == ("time", "lat", "lon") and ds["tas"].attrs["units"] == "K"
        np.testing.assert_array_equal(ds["lat"], truth["lat"])
        np.testing.assert_array_equal(ds["lon"], truth["lon"])
        np.testing.assert_array_equal(ds["time"], truth["time"])
        np.testing.assert_allclose(ds["tas"].isel(time=0).values, first.reshape(ds.sizes["lat"], ds.sizes["lon"]),
                                   rtol=1e-5)
    elif task == "segmentation":
        src = xr.open_dataset(sorted((data / "climatenet").glob("data-*.nc"))[0])
        assert ds["LABELS"].dims == ("time", "lat", "lon") and ds["probability"].dims == ("time", "class", "lat", "lon")
        np.testing.assert_allclose(ds["lat"], src["lat"])
        np.testing.assert_allclose(ds["lon"], src["lon"])
        assert list(ds["time"].values) == dm.dates("test") and list(ds["class"].values) == ["background", "tc", "ar"]
        prob = np.exp(first - first.max(0)) / np.exp(first - first.max(0)).sum(0)  # softmax over classes, by hand
        np.testing.assert_allclose(ds["probability"].isel(time=0).values, prob, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(ds["LABELS"].isel(time=0).values, first.argmax(0))
        np.testing.assert_allclose(ds["probability"].sum("class").values, 1.0, rtol=1e-5)
    else:
        src = xr.open_dataset(sorted((data / "radar").glob("RAD_*.nc"))[0])
        rain = ds["rain_rate"]
        assert rain.dims == ("time", "lead_time", "y", "x") and rain.attrs["units"] == "mm h-1"
        np.testing.assert_array_equal(ds["y"], src["y"])
        np.testing.assert_array_equal(ds["x"], src["x"])
        np.testing.assert_array_equal(ds["time"].values, dm.issue_times("predict"))
        assert ds["valid_time"].dims == ("time", "lead_time")
        np.testing.assert_array_equal(ds["valid_time"].values, ds["time"].values[:, None] + ds["lead_time"].values)
        assert list(ds["lead_time"].values) == [np.timedelta64(5, "m"), np.timedelta64(10, "m")]
        unseen = np.isnan(sample["x"][-1].numpy())  # beyond the radar's range at issue time: NaN, as observed
        np.testing.assert_allclose(rain.isel(time=0).values, np.where(unseen, np.nan, first), rtol=1e-5, atol=1e-6)
        assert unseen.any() and np.isfinite(rain.isel(time=0).values[:, ~unseen]).all()


# ------------------------------------------------------------------------------------------ launch scripts
SCRIPTS = sorted(p for p in (ROOT / "scripts").iterdir() if p.suffix in (".sh", ".sbatch"))
SHIM = """#!/usr/bin/env bash
# records how the launch script called it: the folder, then one argument per line
{ pwd; printf '%s\\n' "$@"; } > "$CLIMATEML_CALLED"
"""
SRUN = """#!/usr/bin/env bash
# srun without SLURM: drop srun's own options, run the command once
while [[ "${1:-}" == -* ]]; do shift; done
exec "$@"
"""


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_launch_script_parses_and_its_command_runs_on_the_cpu(script, workspace, tmp_path):
    """`bash -n`, then the script itself with `climateml` (and `srun`) replaced by a recorder on PATH, then the
    recorded `climateml fit` command run here on the CPU with `--trainer.fast_dev_run` (the GPU options the script
    sets stay in; later options win, so the accelerator becomes the CPU)."""
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("climateml", SHIM), ("srun", SRUN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    called = tmp_path / "called.txt"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CLIMATEML_CALLED": str(called),
           "GPUS": "1", "PRECISION": "32-true", "WORKERS": "0",
           "SLURM_JOB_ID": "4242", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1", "SLURM_CPUS_PER_TASK": "1",
           "SLURM_SUBMIT_DIR": str(ROOT)}
    proc = subprocess.run(["bash", str(script), "temperature", "--data.batch_size", "32"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    cwd, *argv = called.read_text().splitlines()
    assert Path(cwd).resolve() == ROOT and argv[:3] == ["fit", "--config", "configs/temperature.yaml"]
    assert option(argv, "--trainer.accelerator") == "gpu" and option(argv, "--data.batch_size") == "32"
    assert option(argv, "--trainer.precision") == "32-true" and option(argv, "--data.num_workers") == "0"
    runs = tmp_path / "runs"
    rc, out, err = workspace.run(argv + SMALL["temperature"] + QUIET + NO_FIGURES + LINEAR_ONLY + [
        "--trainer.accelerator", "cpu", "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(runs),
        "--trainer.logger.init_args.save_dir", str(runs), "--data.data_dir", str(workspace.root / "data" / "climatebench")])
    assert rc == 0, err[-3000:]
    assert list(runs.rglob("metrics.json"))


def test_predictions_of_a_projected_archive_carry_its_2d_lat_lon(tmp_path):
    """A radar archive on projected y, x with CF auxiliary lat(y, x), lon(y, x): nowcasts come back with them (and
    with valid_time), and the written file keeps them as coordinates with CF units and no axis."""
    from climateml.data import NowcastingDataModule
    from climateml.writers import write_cf

    y, x = np.array([20.0, 10.0, 0.0, -10.0]), np.arange(5) * 10.0
    lat = 52.0 + y[:, None] / 111.0 + 0.0 * x[None, :]
    lon = 5.0 + x[None, :] / 68.0 + 0.001 * y[:, None]
    for k in range(10):
        rain = np.full((4, 5), float(k), np.float32)
        ds = xr.Dataset({"rain": (("y", "x"), rain, {"units": "mm h-1"}),
                         "valid_time": ((), np.datetime64(f"{DAY}T00:00", "ns") + np.timedelta64(5 * k, "m"))},
                        coords={"y": y, "x": x, "lat": (("y", "x"), lat, {"units": "degrees_north"}),
                                "lon": (("y", "x"), lon, {"units": "degrees_east"})})
        ds.to_netcdf(tmp_path / f"frame_{k:02d}.nc")
    dm = NowcastingDataModule(str(tmp_path), variable="rain", n_in=2, n_out=1, train_period=[f"{DAY}T00:00", f"{DAY}T00:15"],
                              val_period=[f"{DAY}T00:20", f"{DAY}T00:30"], test_period=[f"{DAY}T00:35", f"{DAY}T00:45"])
    dm.setup()
    n = len(dm.dataset("predict"))
    out = dm.to_xarray(torch.ones(n, 1, 4, 5), "predict")["test"]
    path = write_cf(out, tmp_path / "out" / "predictions_test.nc")
    back = xr.load_dataset(path)
    np.testing.assert_allclose(back["lat"].values, lat)
    np.testing.assert_allclose(back["lon"].values, lon)
    assert back["lat"].dims == ("y", "x") and back["lat"].attrs["units"] == "degrees_north"
    assert "axis" not in back["lat"].attrs and back["y"].attrs["axis"] == "Y"
    np.testing.assert_array_equal(back["valid_time"].values[:, 0],
                                  np.datetime64(f"{DAY}T00:45") + np.arange(n) * np.timedelta64(5, "m"))  # issue 00:40 + 5 min
