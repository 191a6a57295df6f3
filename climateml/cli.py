"""The ``climateml`` command.

``climateml fit|validate|test|predict --config configs/<task>.yaml`` (LightningCLI), with
``--ensemble N`` to train N members with seeds seed, seed+1, ...; ``fit`` ends by scoring the best
weights on the test scenarios (metrics.json and figures in the run directory).
``climateml synth climatebench --out DIR`` writes sample data in the ClimateBench layout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lightning.pytorch import seed_everything
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger

from climateml.data.io import DataError


class ClimateCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--ensemble", type=int, default=1,
                            help="fit: train this many members with seeds seed_everything + 0, 1, ...")
        for src, dst in (("n_inputs", "n_inputs"), ("n_outputs", "n_outputs"), ("target_names", "target_names")):
            parser.link_arguments(f"data.{src}", f"model.init_args.{dst}", apply_on="instantiate")

    def fit(self, model, datamodule=None, ckpt_path=None, **kwargs) -> None:
        from climateml.evaluate import evaluate

        config = self.config[self.subcommand]
        n_members = int(config.get("ensemble", 1))
        if n_members < 1:
            raise DataError(f"--ensemble must be at least 1, got {n_members}")
        if n_members > 1 and ckpt_path:
            raise DataError("--ckpt_path resumes one run; it cannot be combined with --ensemble > 1")
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
                histories[f"member {i}" if n_members > 1 else "emulator"] = Path(self.trainer.logger.log_dir) / "metrics.csv"
        result = evaluate(members, self.datamodule, run_dir, histories)
        print(f"\nrun directory: {run_dir}")
        for target, by_model in result.items():
            for name, m in by_model.items():
                nrmse = f", NRMSE total {m['nrmse_total']:.3f}" if "nrmse_total" in m else ""
                print(f"  {target} {name:>15}: RMSE {m['rmse']:.4g}{nrmse}")


def synth_main(argv: list[str]) -> int:
    from climateml.data.synthetic import Grid, generate_climatebench
    from climateml.data.synthetic.climatebench import SCENARIOS

    parser = argparse.ArgumentParser(prog="climateml synth", description="Write sample data in a real data set's layout.")
    parser.add_argument("layout", choices=["climatebench"])
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


def _data_error_in(err: BaseException | None) -> DataError | None:
    """The DataError behind ``err``, also when jsonargparse re-raised it as another exception."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, DataError):
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
    except Exception as err:
        data_err = _data_error_in(err)
        if data_err is None:
            raise
        print(f"climateml: error: {data_err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
