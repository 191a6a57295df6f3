"""Data loading throughput of ClimateBenchDataModule.train_dataloader() against an in-memory tensor.

Setup: the lab's default data module (inputs CO2, CH4; target tas on the full 96 x 144 grid, 13 824
outputs per sample; batch_size 64; 20 % of the training years held out for validation), on the
sample data of ``climateml.data.synthetic.generate_climatebench``.

* **candidate**: iterate every batch of one epoch of ``dm.train_dataloader()``: the package's training
  loader (``ResumableDataLoader`` with a ``ClimateSampler``, climateml/data/base.py) over a
  ``TensorDictDataset``, whose ``__getitems__`` serves each batch as one dict ``{"x", "y"}`` by a single
  fancy index per tensor (no per-sample indexing, no collation). ``sampler.set_epoch(e)`` is called
  before each epoch, as Lightning does.
* **baseline**: the same training tensors ``dm.train_dataset.tensors["x"/"y"]`` held in memory, the
  epoch's permutation drawn exactly as the sampler draws it (``randperm`` from a generator seeded with
  seed + epoch), and batches of 64 taken by fancy indexing ``x[idx], y[idx]``. Both yield identical
  batches in identical order; the script checks that before timing.

Both sides produce materialised (64, 13 824) float32 batches, so the ratio is the cost of the
DataLoader path relative to a hand-written loop over the same shuffled batches. The package's dataset
gathers rows with ``torch.index_select`` (about 3x faster than ``y[idx]`` for 64 rows of 13 824 values);
a second baseline that gathers the same way (``--strict`` line) is the least work the batches need, so
its ratio is the DataLoader machinery alone (iterator, sampler, batch sampler: a fixed ~0.2 ms per epoch). One timing sample is
``--epochs`` consecutive epochs (an epoch is only ~600 samples); candidate and baseline samples are
interleaved in ``--repeats`` rounds so both see the same machine load. Reported: samples/s from the
median and from the fastest sample, and the median of the per-round ratios (baseline time / candidate
time, i.e. how many times faster the in-memory path is).

Separately, for context, the one-off cost of ``ClimateBenchDataModule(...).setup("fit")`` (open and
check 7 scenarios' NetCDF files, average the ensemble members, build the splits), measured
``--setup-repeats`` times on fresh instances; the first read may be slower (cold page cache).

Run: ``python benchmarks/bench_datamodule.py [--repeats 15] [--epochs 10] [--data-dir DIR]``
"""

from __future__ import annotations

import argparse

import _common  # noqa: F401  (puts the repository root on sys.path)
from _common import add_data_dir_argument, set_threads, footer, header, median, sample_data, summary, timed


def in_memory_epoch_batches(x, y, batch_size: int, seed: int, epoch: int, gather: str = "index"):
    """One shuffled epoch over in-memory tensors, the permutation drawn as ClimateSampler draws it; rows
    gathered by advanced indexing (``x[idx]``, how one writes it by hand) or ``torch.index_select``."""
    import torch

    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + epoch))
    for start in range(0, len(x), batch_size):
        idx = perm[start:start + batch_size]
        if gather == "index":
            yield x[idx], y[idx]
        else:
            yield torch.index_select(x, 0, idx), torch.index_select(y, 0, idx)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="interleaved timing rounds (default 15)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per timing sample (default 10)")
    parser.add_argument("--setup-repeats", type=int, default=3, help="fresh DataModule setups timed (default 3)")
    parser.add_argument("--batch-size", type=int, default=64)
    add_data_dir_argument(parser)
    args = parser.parse_args(argv)

    import torch

    from climateml.data import ClimateBenchDataModule

    set_threads(args.threads)
    header("bench_datamodule: ClimateBenchDataModule.train_dataloader vs in-memory tensor")
    with sample_data(args.data_dir) as data_dir:
        # ---- one-off: DataModule setup (reading files) ----
        setup_times = []
        for _ in range(args.setup_repeats):
            dm = ClimateBenchDataModule(str(data_dir), batch_size=args.batch_size)  # lab defaults: CO2,CH4 -> tas map
            setup_times.append(timed(lambda: dm.setup("fit")))

        x, y = dm.train_dataset.tensors["x"], dm.train_dataset.tensors["y"]
        n = len(x)
        loader = dm.train_dataloader()
        seed = loader.sampler.seed

        # ---- both paths must yield the very same batches ----
        same = True
        for epoch in (0, 1):
            loader.sampler.set_epoch(epoch)
            a = [(b["x"].clone(), b["y"].clone()) for b in loader]
            b = list(in_memory_epoch_batches(x, y, args.batch_size, seed, epoch))
            same &= len(a) == len(b) and all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
        if not same:
            raise SystemExit("baseline does not reproduce the DataLoader's batches; the comparison would be unfair")
        del a, b

        def run_loader():
            for epoch in range(args.epochs):
                loader.sampler.set_epoch(epoch)
                for batch in loader:
                    xb, yb = batch["x"], batch["y"]

        def run_memory(gather="index"):
            for epoch in range(args.epochs):
                for xb, yb in in_memory_epoch_batches(x, y, args.batch_size, seed, epoch, gather):
                    pass

        run_strict = lambda: run_memory("index_select")  # noqa: E731
        run_loader(), run_memory(), run_strict()  # warm-up
        t_dm, t_mem, t_strict, ratios, strict_ratios = [], [], [], [], []
        for r in range(args.repeats):
            order = [("dm", run_loader), ("mem", run_memory), ("strict", run_strict)]
            order = order[r % 3:] + order[:r % 3]
            times = {name: timed(fn) for name, fn in order}
            t_dm.append(times["dm"]), t_mem.append(times["mem"]), t_strict.append(times["strict"])
            ratios.append(times["dm"] / times["mem"]), strict_ratios.append(times["dm"] / times["strict"])

    samples = n * args.epochs
    dm_med, mem_med = samples / median(t_dm), samples / median(t_mem)
    dm_best, mem_best = samples / min(t_dm), samples / min(t_mem)
    ratio = median(ratios)
    print(f"training split: {n} samples x {x.shape[1]} inputs -> {y.shape[1]} outputs "
          f"({y.element_size() * y[0].numel() / 1024:.0f} KiB per target row), batch size {args.batch_size}, "
          f"{-(-n // args.batch_size)} batches per epoch; batches identical on both paths: {same}")
    print(f"DataModule setup (one-off, reading 7 scenarios): first {setup_times[0]:.2f} s; {summary(setup_times)} s")
    print(f"epoch-iteration seconds per {args.epochs} epochs, DataModule train_dataloader: {summary(t_dm)}")
    print(f"epoch-iteration seconds per {args.epochs} epochs, in-memory tensor baseline:  {summary(t_mem)}")
    print(f"DataModule train_dataloader: {dm_med:,.0f} samples/s (median), {dm_best:,.0f} samples/s (best)")
    print(f"in-memory tensor baseline:   {mem_med:,.0f} samples/s (median), {mem_best:,.0f} samples/s (best)")
    print(f"RATIO DataModule time / in-memory time: {ratio:.2f}x (median of {args.repeats} interleaved rounds; "
          f"ratio of best times {min(t_dm) / min(t_mem):.2f}x)")
    print(f"  strict: DataModule time / in-memory time gathering with index_select too: {median(strict_ratios):.2f}x "
          f"(the DataLoader machinery alone)")
    print(f"per epoch: DataModule {median(t_dm) / args.epochs * 1e3:.2f} ms, in-memory x[idx] "
          f"{median(t_mem) / args.epochs * 1e3:.2f} ms, in-memory index_select {median(t_strict) / args.epochs * 1e3:.2f} ms")
    footer()
    return {"ratio": ratio, "strict_ratio": median(strict_ratios), "datamodule_samples_per_s": dm_med, "memory_samples_per_s": mem_med,
            "setup_s_first": setup_times[0], "setup_s_min": min(setup_times)}


if __name__ == "__main__":
    main()
