"""The ``climateml`` command: a light dispatcher, so ``climateml --help`` and ``climateml synth`` start fast.

``climateml fit|validate|test|predict --config configs/<task>.yaml`` run the LightningCLI of
:mod:`climateml.lightning_cli` (the only subcommands that import Lightning; see there for ensembles,
resuming and scale). ``climateml synth <layout> --out DIR`` writes sample data in a real data set's layout
(``confounded``: a cue that tracks the target in training data only). ``climateml attribute --config ...
--ckpt_path ... --method ...`` writes attribution maps of a task's test samples; ``climateml demo
clever-hans --out DIR`` trains a model on confounded data and one on its clean twin and compares them.
Errors a user makes (bad data, bad options) end as one line ``climateml: error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from climateml.errors import ClimateMLError

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")

HELP = """usage: climateml <command> [options]

Machine learning on climate data with PyTorch and Lightning: xarray / NetCDF in, NetCDF with coordinates out.

commands:
  fit        train a task from its config (configs/<task>.yaml), then score it against the task's baselines:
             metrics.json, figures, test predictions and checkpoints in runs/<task>/version_N/
  validate   score a checkpoint (--ckpt_path) on the validation split
  test       score a checkpoint on the test split
  predict    write a checkpoint's predictions as NetCDF: <run directory>/predictions/predictions_<group>.nc
  attribute  attribution maps of a trained run on the task's inputs (NetCDF and figures)
  demo       clever-hans: a right-for-the-wrong-reason model next to its clean twin
  synth      sample data in the real layouts: climatebench | climatenet | nowcasting | confounded

`climateml <command> --help` lists a command's options, e.g.
`climateml fit --config configs/temperature.yaml --help` (every option of that task).
"""


def _synth_parser(layout: str, description: str, grid: tuple[str, int, str, int]) -> argparse.ArgumentParser:
    """A layout's argument parser with the options every generator shares: --out, --seed and the grid size
    (``grid``: the two dimension names and their default sizes)."""
    parser = argparse.ArgumentParser(prog=f"climateml synth {layout}", description=description)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed (the same seed writes the same files)")
    for name, size in (grid[:2], grid[2:]):
        parser.add_argument(f"--{name}", type=int, default=size, help=f"grid size along {name[1:]} (default {size})")
    return parser


def _wrote(paths: list, out: str) -> int:
    print(f"wrote {len(paths)} files to {out}")
    return 0


def _synth_climatebench(argv: list[str]) -> int:
    from climateml.data.synthetic import Grid, generate_climatebench
    from climateml.data.synthetic.climatebench import SCENARIOS

    parser = _synth_parser("climatebench", "Write sample data in the ClimateBench layout.", ("nlat", 96, "nlon", 144))
    parser.add_argument("--format", choices=["netcdf", "zarr"], default="netcdf")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--members", type=int, default=None, help="members per scenario (default: as ClimateBench)")
    args = parser.parse_args(argv)
    return _wrote(generate_climatebench(args.out, args.scenarios, Grid(args.nlat, args.nlon), args.seed, args.format,
                                        args.members), args.out)


def _synth_climatenet(argv: list[str]) -> int:
    from climateml.data.synthetic import generate_climatenet

    parser = _synth_parser("climatenet", "Write sample data in the ClimateNet layout (data-YYYY-MM-DD-01-1_N.nc).",
                           ("nlat", 96, "nlon", 144))
    parser.add_argument("--n", type=int, default=20, help="number of dates (snapshots)")
    parser.add_argument("--double-labelled", type=int, default=3, help="dates with a second expert labelling")
    args = parser.parse_args(argv)
    return _wrote(generate_climatenet(args.out, n_dates=args.n, nlat=args.nlat, nlon=args.nlon, seed=args.seed,
                                      n_double_labelled=min(args.double_labelled, args.n)), args.out)


def _synth_nowcasting(argv: list[str]) -> int:
    from climateml.data.synthetic.radar import generate_radar

    parser = _synth_parser("nowcasting", "Write sample radar frames, one CF NetCDF file per frame.",
                           ("ny", 64, "nx", 64))
    parser.add_argument("--n-frames", type=int, default=1152, help="frames at the time step; the default, 4 days at "
                        "5 min, fits the periods of configs/nowcasting.yaml")
    parser.add_argument("--timestep-minutes", type=float, default=5.0)
    args = parser.parse_args(argv)
    return _wrote(generate_radar(args.out, n_frames=args.n_frames, ny=args.ny, nx=args.nx,
                                 timestep_minutes=args.timestep_minutes, seed=args.seed), args.out)


def _synth_confounded(argv: list[str]) -> int:
    from climateml.attribution.commands import synth_confounded_main

    return synth_confounded_main(argv)


SYNTH_LAYOUTS = {"climatebench": _synth_climatebench, "climatenet": _synth_climatenet,
                 "nowcasting": _synth_nowcasting, "confounded": _synth_confounded}


def synth_main(argv: list[str]) -> int:
    """``climateml synth <layout> ...``: dispatch to the layout's own argument parser."""
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SYNTH_LAYOUTS:
        print(f"usage: climateml synth {{{','.join(SYNTH_LAYOUTS)}}} --out DIR [options]; "
              f"`climateml synth <layout> --help` lists a layout's options", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return SYNTH_LAYOUTS[argv[0]](argv[1:])


def _user_error_in(err: BaseException | None) -> ClimateMLError | None:
    """The ClimateMLError behind ``err``, also when jsonargparse re-raised it as another exception."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, ClimateMLError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _demo_main(argv: list[str]) -> int:
    from climateml.attribution.commands import demo_clever_hans_main

    if argv[:1] != ["clever-hans"]:
        print("usage: climateml demo clever-hans --out DIR [options]", file=sys.stderr)
        return 2
    return demo_clever_hans_main(argv[1:])


def _build_task(config: str, overrides: list[str]):
    """(model, datamodule) of a task config, instantiated as ``fit`` would, without running anything."""
    from climateml.lightning_cli import build_task

    return build_task(config, overrides)


def _lightning_main(argv: list[str] | None) -> int:
    """fit / validate / test / predict (and LightningCLI's own options): ``argv`` None reads sys.argv."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from climateml.lightning_cli import ClimateCLI

    try:
        ClimateCLI(subclass_mode_model=True, subclass_mode_data=True, args=argv, auto_configure_optimizers=False,
                   save_config_kwargs={"overwrite": True})
    except SIGTERMException:  # pre-empted: the resume checkpoint is saved; not a success (exit 0) for a scheduler
        print("climateml: stopped on SIGTERM; the same command continues from the run's resume checkpoint",
              file=sys.stderr)
        return 128 + 15
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        if not args or args[0] in ("-h", "--help"):
            print(HELP, end="", file=sys.stdout if args else sys.stderr)
            return 0 if args else 2
        if args[0] == "synth":
            return synth_main(args[1:])
        if args[0] == "attribute":
            from climateml.attribution.commands import attribute_main

            return attribute_main(args[1:], _build_task)
        if args[0] == "demo":
            return _demo_main(args[1:])
        return _lightning_main(argv)
    except BaseException as err:  # jsonargparse exits with SystemExit after printing; ours are one clear line
        user_err = _user_error_in(err)
        if user_err is None:
            raise
        print(f"climateml: error: {user_err}", file=sys.stderr)
        return 2


def __getattr__(name: str):
    # the Lightning side, importable from here as before (imported on first use: `import climateml.cli` stays light)
    if name == "find_interrupted_run":
        from climateml import resume

        return resume.find_interrupted_run
    if name == "ClimateCLI":
        from climateml import lightning_cli

        return getattr(lightning_cli, name)
    raise AttributeError(f"module 'climateml.cli' has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main())
