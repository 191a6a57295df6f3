"""Shared helpers for the benchmarks: repo on sys.path, sample data, timing statistics, quiet Lightning.

Not a benchmark itself. Every script imports this first (``import _common``), which puts the repository
root at the front of ``sys.path`` so that the ``climateml`` measured is the one in this checkout, even
when the virtual environment's editable install points at another copy.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def add_data_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None,
                        help="existing ClimateBench-layout sample data to reuse (default: generate the full "
                             "96x144 sample data into a temporary directory, ~10-20 s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's, one per core); on a machine other jobs "
                             "keep busy, 1 avoids oversubscribed thread barriers that swamp the measurement")


def set_threads(threads: int | None) -> None:
    """Apply --threads (both sides of every comparison run in this process with the same setting)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


@contextlib.contextmanager
def sample_data(data_dir: str | None) -> Iterator[Path]:
    """``data_dir`` if given (must hold the files), else freshly generated sample data, removed afterwards."""
    if data_dir:
        path = Path(data_dir)
        if not any(path.glob("inputs_*")):
            raise SystemExit(f"--data-dir {path}: no inputs_<scenario> files there")
        yield path
        return
    from climateml.data.synthetic import generate_climatebench

    with tempfile.TemporaryDirectory(prefix="climateml-bench-") as tmp:
        path = Path(tmp) / "climatebench"
        t0 = time.perf_counter()
        generate_climatebench(path, progress=False)
        print(f"generated sample data in {path} ({time.perf_counter() - t0:.1f} s)", flush=True)
        yield path


def quiet_lightning() -> None:
    """Silence Lightning's info lines and the usual 'few workers' / 'small log interval' warnings."""
    import lightning  # noqa: F401  (it sets its loggers to INFO on import, so import it first)

    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def summary(values: Sequence[float]) -> str:
    return f"min {min(values):.4g}  median {statistics.median(values):.4g}  max {max(values):.4g}  (n={len(values)})"


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def header(title: str) -> None:
    import torch

    print(f"== {title} ==")
    print(f"python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} CPU cores, "
          f"torch threads {torch.get_num_threads()}, load average {load_average()}", flush=True)


def footer() -> None:
    print(f"load average at the end: {load_average()} (a busy machine inflates every number; compare ratios)",
          flush=True)
