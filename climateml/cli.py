"""The ``climateml`` command.

``climateml fit|validate|test|predict --config configs/<task>.yaml`` (LightningCLI), with
``--ensemble N`` to train N members with seeds seed, seed+1, ...; ``fit`` ends by running the task's
evaluation (the YAML's ``evaluation:``) on the best weights: metrics.json, predictions and figures in
the run directory. ``climateml synth <layout> --out DIR`` writes sample data in a real data set's layout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lightning.pytorch import seed_everything
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger

from climateml.errors import ClimateMLError, ConfigError
from climateml.evaluation.base import Evaluation


class ClimateCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--ensemble", type=int, default=1,
                            help="fit: train this many members with seeds seed_everything + 0, 1, ...")
        parser.add_subclass_arguments(Evaluation, "evaluation", required=False,
                                      help="how fit scores the trained model against the task's baselines")
        # the one data -> model link: sizes, names and training statistics travel in the DataModule's spec
        parser.link_arguments("data.spec", "model.init_args.spec", apply_on="instantiate")

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
            if self.trainer.logger is not None:
                histories[f"member {i}" if n_members > 1 else "model"] = Path(self.trainer.logger.log_dir) / "metrics.csv"
        evaluation = self.config_init[self.subcommand].get("evaluation")
        print(f"\nrun directory: {run_dir}")
        if evaluation is None:
            print("  no `evaluation:` in the config: metrics.json and figures were not written")
            return
        device = self.trainer.strategy.root_device.type
        result = evaluation.run(members, self.datamodule, run_dir, histories, accelerator="gpu" if device == "cuda" else "cpu")
        print("\n".join(evaluation.summary(result)))


def _synth_climatebench(argv: list[str]) -> int:
    from climateml.data.synthetic import Grid, generate_climatebench
    from climateml.data.synthetic.climatebench import SCENARIOS

    parser = argparse.ArgumentParser(prog="climateml synth climatebench",
                                     description="Write sample data in the ClimateBench layout.")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=["netcdf", "zarr"], default="netcdf")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--members", type=int, default=None, help="members per scenario (default: as ClimateBench)")
    parser.add_argument("--nlat", type=int, default=96)
    parser.add_argument("--nlon", type=int, default=144)
    args = parser.parse_args(argv)
    paths = generate_climatebench(args.out, args.scenarios, Grid(args.nlat, args.nlon), args.seed, args.format, args.members)
    print(f"wrote {len(paths)} files to {args.out}")
    return 0


def _synth_climatenet(argv: list[str]) -> int:
    from climateml.data.synthetic import generate_climatenet

    parser = argparse.ArgumentParser(prog="climateml synth climatenet",
                                     description="Write sample data in the ClimateNet layout (data-YYYY-MM-DD-01-1_N.nc).")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--n", type=int, default=20, help="number of dates (snapshots)")
    parser.add_argument("--nlat", type=int, default=96)
    parser.add_argument("--nlon", type=int, default=144)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--double-labelled", type=int, default=3, help="dates with a second expert labelling")
    args = parser.parse_args(argv)
    paths = generate_climatenet(args.out, n_dates=args.n, nlat=args.nlat, nlon=args.nlon, seed=args.seed,
                                n_double_labelled=min(args.double_labelled, args.n))
    print(f"wrote {len(paths)} files to {args.out}")
    return 0


def _synth_nowcasting(argv: list[str]) -> int:
    from climateml.data.synthetic.radar import generate_radar

    parser = argparse.ArgumentParser(prog="climateml synth nowcasting",
                                     description="Write sample radar frames, one CF NetCDF file per frame.")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--n-frames", type=int, default=288, help="frames at the time step (some are left missing)")
    parser.add_argument("--ny", type=int, default=64)
    parser.add_argument("--nx", type=int, default=64)
    parser.add_argument("--timestep-minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = generate_radar(args.out, n_frames=args.n_frames, ny=args.ny, nx=args.nx,
                           timestep_minutes=args.timestep_minutes, seed=args.seed)
    print(f"wrote {len(paths)} files to {args.out}")
    return 0


SYNTH_LAYOUTS = {"climatebench": _synth_climatebench, "climatenet": _synth_climatenet,
                 "nowcasting": _synth_nowcasting}


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


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        if args and args[0] == "synth":
            return synth_main(args[1:])
        ClimateCLI(subclass_mode_model=True, subclass_mode_data=True, args=argv, auto_configure_optimizers=False,
                   save_config_kwargs={"overwrite": True})
    except BaseException as err:  # jsonargparse exits with SystemExit after printing; ours are one clear line
        user_err = _user_error_in(err)
        if user_err is None:
            raise
        print(f"climateml: error: {user_err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
