"""Window throughput of NowcastingDataModule.train_dataloader() on a one-file-per-frame radar archive,
against indexing an in-memory tensor of the same windows.

Setup: sample radar frames from ``climateml.data.synthetic.radar.generate_radar`` in the operational
layout (one CF NetCDF file per frame, scalar ``valid_time``, accumulations in kg m-2, y descending, NaN
beyond the radar's range; ``--frames`` frames of ``--size`` x ``--size`` cells at 5 min, a few missing),
windows of ``--n-in`` past + ``--n-out`` future frames, batch size ``--batch-size``, shuffled, no crops,
no augmentation, ``--workers`` DataLoader workers (0: read in the main process), ``--threads`` torch
threads (1, as the task's configuration sets them: on a busy 2-core machine two threads make even
the in-memory indexing several times slower and noisier).

* **candidate**: iterate every batch of one epoch of ``dm.train_dataloader()`` with ``cache_mb=0``.
  Each sample reads its ``n_in + n_out`` frames straight from their files through the DataModule's
  per-frame index (netCDF4, at most ``max_open_files`` = 64 files kept open per process, so a shuffled
  epoch over hundreds of files keeps opening files) and converts kg m-2 per 5 min to mm/h: the archive is
  never in memory.
* **for context**: the same with the configuration's frame cache (``cache_mb=128``; the sample day is
  4.5 MiB, so after the first pass every frame comes from memory).
* **baseline**: every training window already in memory as one (windows, n_in + n_out, y, x) float32
  tensor (read once, untimed, through the same DataModule, so the values are identical), one random
  permutation per epoch, batches by fancy indexing and slicing into x and y: the least work the same
  shuffled batches need.

Timing samples of ``--epochs`` epochs are interleaved in ``--repeats`` rounds so both paths see the same
machine load; reported: windows/s from the median and the fastest sample, the median of the per-round
ratios, and, for context, the cached candidate and the one-off ``setup()`` (index every file's metadata, one streaming pass over
all frames to check them and fit the transform) and the memory a whole archive would need. The last
line is the ratio (candidate time / baseline time).

Run: ``python benchmarks/bench_nowcasting.py [--frames 288] [--size 64] [--repeats 7] [--epochs 2]
[--workers 0] [--cache-mb 128] [--data-dir DIR]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (puts the repository root on sys.path)
from _common import footer, header, median, quiet_lightning, set_threads, summary, timed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=288, help="frames at 5 min (default 288: one day)")
    parser.add_argument("--size", type=int, default=64, help="grid cells per side (default 64)")
    parser.add_argument("--n-in", type=int, default=4)
    parser.add_argument("--n-out", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the candidate (default 0)")
    parser.add_argument("--cache-mb", type=float, default=128.0, help="frame cache of the context run (default 128)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads on both paths (default 1, as configs/nowcasting.yaml; 0: torch's)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved timing rounds (default 7)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per timing sample (default 2)")
    parser.add_argument("--data-dir", default=None, help="an existing one-file-per-frame archive to reuse")
    args = parser.parse_args(argv)

    quiet_lightning()
    import numpy as np
    import torch

    set_threads(args.threads)

    from climateml.data.nowcasting import NowcastingDataModule
    from climateml.data.radar import RadarReader
    from climateml.data.synthetic.radar import generate_radar

    header("bench_nowcasting: NowcastingDataModule.train_dataloader (one file per frame) vs in-memory windows")
    with tempfile.TemporaryDirectory(prefix="climateml-bench-radar-") as tmp:
        data = Path(args.data_dir) if args.data_dir else Path(tmp) / "radar"
        if not args.data_dir:
            t0 = time.perf_counter()
            generate_radar(data, n_frames=args.frames, ny=args.size, nx=args.size, progress=False)
            print(f"generated {args.frames} frames of {args.size} x {args.size} in {time.perf_counter() - t0:.1f} s",
                  flush=True)
        files = sorted(data.glob("*.nc"))
        times = RadarReader(data, "precipitation_amount").times
        first, last = times[0], times[-1]
        periods = {"train_period": [str(first), str(last - np.timedelta64(2, "h"))],
                   "val_period": [str(last - np.timedelta64(115, "m")), str(last - np.timedelta64(1, "h"))],
                   "test_period": [str(last - np.timedelta64(55, "m")), str(last)]}

        def make_dm(cache_mb: float = 0.0) -> NowcastingDataModule:
            return NowcastingDataModule(str(data), n_in=args.n_in, n_out=args.n_out, batch_size=args.batch_size,
                                        num_workers=args.workers, cache_mb=cache_mb, **periods)

        setup_times = []
        for _ in range(3):
            dm = make_dm()
            setup_times.append(timed(dm.setup))
        ds = dm.dataset("train")
        n = len(ds)
        windows = torch.stack([torch.cat([s["x"], s["y"]]) for s in (ds[i] for i in range(n))])
        loader = dm.train_dataloader()
        cached_dm = make_dm(args.cache_mb)
        cached_dm.setup()
        cached_loader = cached_dm.train_dataloader()

        def epochs_of(batches):
            def run():
                for _ in range(args.epochs):
                    for batch in batches:
                        pass
            return run

        run_loader, run_cached = epochs_of(loader), epochs_of(cached_loader)

        def run_memory():
            for _ in range(args.epochs):
                perm = torch.randperm(n)
                for start in range(0, n, args.batch_size):
                    block = windows[perm[start:start + args.batch_size]]
                    x, y = block[:, :args.n_in], block[:, args.n_in:]

        run_loader(), run_memory(), run_cached()  # warm-up (workers started, files opened, page cache filled)
        t_dm, t_mem, t_cached, ratios = [], [], [], []
        for r in range(args.repeats):
            first_fn, second_fn = (run_loader, run_memory) if r % 2 == 0 else (run_memory, run_loader)
            t1, t2 = timed(first_fn), timed(second_fn)
            td, tm = (t1, t2) if r % 2 == 0 else (t2, t1)
            t_dm.append(td), t_mem.append(tm), ratios.append(td / tm)
            t_cached.append(timed(run_cached))
        n_frames = len(dm.reader)

    samples = n * args.epochs
    window_mib = windows[0].numel() * 4 / 2**20
    archive_mib = n_frames * args.size * args.size * 4 / 2**20
    print(f"archive: {n_frames} frames of {args.size} x {args.size} in {len(files)} files ({archive_mib:.1f} MiB as "
          f"float32; a day of 512 x 512 would be {288 * 512 * 512 * 4 / 2**30:.2f} GiB); training windows: {n} of "
          f"{args.n_in} + {args.n_out} frames ({window_mib:.2f} MiB each), batch {args.batch_size}, "
          f"workers {args.workers}")
    print(f"DataModule setup (index {len(files)} files, check every frame, fit the transform): first "
          f"{setup_times[0]:.2f} s; {summary(setup_times)} s")
    print(f"seconds per {args.epochs} epochs, DataModule train_dataloader: {summary(t_dm)}")
    print(f"seconds per {args.epochs} epochs, in-memory windows:           {summary(t_mem)}")
    print(f"seconds per {args.epochs} epochs, DataModule with cache_mb={args.cache_mb:g}: {summary(t_cached)} "
          f"({median(t_cached) / median(t_mem):.1f}x the in-memory time)")
    print(f"DataModule train_dataloader: {samples / median(t_dm):,.0f} windows/s (median), "
          f"{samples / min(t_dm):,.0f} (best); {median(t_dm) / samples * 1e3:.2f} ms per window, "
          f"{median(t_dm) / samples / (args.n_in + args.n_out) * 1e3:.3f} ms per frame read")
    print(f"in-memory windows:           {samples / median(t_mem):,.0f} windows/s (median), "
          f"{samples / min(t_mem):,.0f} (best)")
    footer()
    ratio = median(ratios)
    print(f"RATIO DataModule (lazy, one file per frame, no cache) time / in-memory time: {ratio:.1f}x (median of {args.repeats} interleaved rounds; "
          f"ratio of best times {min(t_dm) / min(t_mem):.1f}x)")
    return {"ratio": ratio, "datamodule_windows_per_s": samples / median(t_dm),
            "memory_windows_per_s": samples / median(t_mem), "setup_s_first": setup_times[0]}


if __name__ == "__main__":
    main()
