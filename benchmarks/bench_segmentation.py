"""One epoch of TC / AR segmentation training: the lazily read SegmentationDataModule against in-memory tensors.

Setup: ClimateNet-layout sample data (``climateml.data.synthetic.generate_climatenet``, ``--n-dates``
snapshots, 3 of them labelled twice, on the full 96 x 144 grid unless ``--nlat/--nlon``), the data
module and U-Net of ``configs/segmentation.yaml`` (channels, labellings, batch size, depth, width, loss,
optimiser and learning rate from the YAML), one CPU process (``num_workers`` as in the YAML).

* **candidate**: one training epoch whose batches come from ``dm.dataloader("train")`` (the training
  loader's machinery, in file order rather than shuffled so both sides serve the same batches): every sample
  opens its NetCDF file (two for a merged double labelling) and reads the channels and ``LABELS``, checks
  them (finite, labels within the classes), and the DataLoader collates the batch.
* **baseline**: the same training samples read once into memory as two tensors (fields and labels);
  batches taken by fancy indexing in the same order.

Both sides run the same plain PyTorch step (forward, loss, backward, Adam step) on two copies of the
same model with the same initial weights; the two are trained in turn, batch by batch (lazy first on
even batches, in-memory first on odd ones), and each step is timed with the fetching of its batch, so
both sides see the same machine load and the difference is the cost of reading lazily. The copies end
with identical weights (checked and printed): same model, same batches. Random augmentation (crops,
flips, longitude shifts) is switched off on both sides so the batches are identical, which the script
also checks before timing; the cost of the YAML's augmentation on the lazy path is measured separately
and printed for context (not in the ratio). After one warm-up epoch, ``--repeats`` epochs are timed;
the ratio (the last line of the output) is the median over every batch pair of (lazy step time / in-memory
step time), each pair trained back to back, which a burst of load on a shared machine moves least; the
per-epoch ratios and the ratio of summed times are printed too.

It also times reading alone (iterating one epoch of batches without training) on both paths.

Run: ``python benchmarks/bench_segmentation.py [--repeats 3] [--n-dates 40] [--nlat 96 --nlon 144]
[--data-dir DIR]``; about 2 minutes on 2 idle CPU cores (a training epoch of 29 samples takes ~10 s).

Result to put in benchmarks/README.md's table (row): ``bench_segmentation.py`` | one training epoch of
the U-Net of configs/segmentation.yaml, batches from ``SegmentationDataModule.train_dataloader()``
(a NetCDF file opened per sample) | the same samples as in-memory tensors, same batches in the same order
(checked), same model and initial weights (identical weights after training, checked) | lazy / in-memory
training time per batch (median over batch pairs trained back to back).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (puts the repository root on sys.path)
from _common import REPO_ROOT, footer, header, median, quiet_lightning, summary, timed

CONFIG = REPO_ROOT / "configs" / "segmentation.yaml"


def _yaml_args(section: str) -> dict:
    import yaml

    with open(CONFIG) as f:
        return dict(yaml.safe_load(f)[section].get("init_args", {}))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds (default 3)")
    parser.add_argument("--n-dates", type=int, default=40, help="snapshots to generate (default 40)")
    parser.add_argument("--nlat", type=int, default=96)
    parser.add_argument("--nlon", type=int, default=144)
    parser.add_argument("--data-dir", default=None, help="existing ClimateNet-layout files to use instead")
    args = parser.parse_args(argv)

    quiet_lightning()
    import torch

    from climateml.data.climatenet import SegmentationDataModule
    from climateml.data.synthetic.climatenet import generate_climatenet
    from climateml.models.segmentation import SegmentationModel

    header("bench_segmentation: one training epoch, lazily read SegmentationDataModule vs in-memory tensors")
    data_args, model_args = _yaml_args("data"), _yaml_args("model")
    for key in ("data_dir", "synthesize_if_missing", "sample_options", "crop", "flip_lat", "shift_lon"):
        data_args.pop(key, None)
    with tempfile.TemporaryDirectory(prefix="climateml-bench-seg-") as tmp:
        data_dir = Path(args.data_dir) if args.data_dir else Path(tmp) / "climatenet"
        if not args.data_dir:
            t0 = time.perf_counter()
            generate_climatenet(data_dir, n_dates=args.n_dates, nlat=args.nlat, nlon=args.nlon, progress=False)
            print(f"generated {args.n_dates} snapshots on {args.nlat} x {args.nlon} in {time.perf_counter() - t0:.1f} s")

        torch.manual_seed(0)
        t0 = time.perf_counter()
        dm = SegmentationDataModule(str(data_dir), crop=[], flip_lat=False, shift_lon=False, **data_args)
        dm.setup("fit")
        setup_s = time.perf_counter() - t0
        augmented = SegmentationDataModule(**{**_yaml_args("data"), "data_dir": str(data_dir),
                                              "synthesize_if_missing": False})
        augmented.setup("fit")
        # the DataModule's loader machinery (workers, collation) over the training split, in file order so the
        # baseline can serve the very same batches; shuffling changes neither side's cost
        loader = dm.dataloader("train")
        ds = dm.train_dataset
        order = list(range(len(ds)))
        items = [ds[i] for i in range(len(ds))]
        x_mem = torch.stack([it["x"] for it in items])
        y_mem = torch.stack([it["y"] for it in items])
        del items
        bs = dm.batch_size

        def memory_batches():
            for start in range(0, len(order), bs):
                idx = torch.as_tensor(order[start:start + bs])
                yield {"x": x_mem[idx], "y": y_mem[idx]}

        lazy = [{k: v.clone() for k, v in b.items()} for b in loader]
        mem = list(memory_batches())
        same = len(lazy) == len(mem) and all(torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])
                                             for a, b in zip(lazy, mem))
        if not same:
            raise SystemExit("the in-memory baseline does not reproduce the DataModule's batches; unfair comparison")
        del lazy, mem

        model = SegmentationModel(dm.spec, **{k: v for k, v in model_args.items()
                                             if k not in ("lr_scheduler", "lr_scheduler_options", "monitor",
                                                          "monitor_mode")})
        lr = float(model_args.get("lr", 1e-3))
        # two copies of one model with the same initial weights: one trained on the lazily read batches, one on
        # the in-memory batches, step by step in turn, so both see the same machine load batch by batch
        twins = {side: copy.deepcopy(model).train() for side in ("lazy", "memory")}
        opts = {side: torch.optim.Adam(m.parameters(), lr=lr) for side, m in twins.items()}

        def step(side, batch):
            m, opt = twins[side], opts[side]
            loss = m.criterion(m(batch["x"]), batch["y"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def epoch():
            lazy_it, mem_it = iter(loader), memory_batches()
            spent = {"lazy": 0.0, "memory": 0.0, "lazy_fetch": 0.0, "memory_fetch": 0.0, "pairs": []}
            for i in range(-(-len(order) // bs)):
                sides = [("lazy", lazy_it), ("memory", mem_it)]
                this = {}
                for side, it in (sides if i % 2 == 0 else sides[::-1]):
                    t0 = time.perf_counter()
                    batch = next(it)  # read from files, or indexed in memory: inside the timing
                    t1 = time.perf_counter()
                    step(side, batch)
                    t2 = time.perf_counter()
                    spent[side] += t2 - t0
                    spent[f"{side}_fetch"] += t1 - t0
                    this[side] = t2 - t0
                spent["pairs"].append(this["lazy"] / this["memory"])
            return spent

        epoch()  # warm-up: allocations, kernel selection, page cache
        t_lazy, t_mem, ratios, r_lazy, r_mem, r_aug, f_lazy, f_mem = [], [], [], [], [], [], [], []
        pair_ratios: list[float] = []
        for _ in range(args.repeats):
            spent = epoch()
            t_lazy.append(spent["lazy"]), t_mem.append(spent["memory"]), ratios.append(spent["lazy"] / spent["memory"])
            f_lazy.append(spent["lazy_fetch"]), f_mem.append(spent["memory_fetch"])
            pair_ratios += spent["pairs"]
            r_lazy.append(timed(lambda: list(loader)))
            r_mem.append(timed(lambda: list(memory_batches())))
            r_aug.append(timed(lambda: list(augmented.train_dataloader())))
        identical = all(torch.equal(p, q) for p, q in zip(twins["lazy"].parameters(), twins["memory"].parameters()))

    n = len(order)
    ratio = median(pair_ratios)
    print(f"training split: {n} samples ({len(dm.dates('train'))} dates, labellings {dm.labellings!r}), "
          f"{len(dm.channels)} channels on {tuple(x_mem.shape[-2:])}, batch size {bs}, {-(-n // bs)} batches per "
          f"epoch; batches identical on both paths: {same}")
    print(f"model: U-Net depth {model.hparams.depth}, width {model.hparams.width}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters; DataModule setup (scan, grid check, "
          f"statistics) {setup_s:.2f} s; both copies of the model have identical weights after "
          f"{args.repeats + 1} epochs: {identical}")
    print(f"training epoch s, lazily read DataModule: {summary(t_lazy)}")
    print(f"training epoch s, in-memory tensors:      {summary(t_mem)}")
    print(f"reading only, s per epoch: DataModule {summary(r_lazy)}; in-memory {summary(r_mem)}; "
          f"DataModule with the YAML's augmentation {summary(r_aug)}")
    print(f"of which fetching the batches, s per epoch: DataModule {summary(f_lazy)}; in-memory {summary(f_mem)}")
    print(f"fetching share of a lazily read training epoch: {median(f_lazy) / median(t_lazy):.1%}; the rest of the "
          "difference is the same steps timed under a changing load")
    footer()
    print(f"per-epoch ratios: {', '.join(f'{r:.3f}' for r in ratios)}; ratio of summed times "
          f"{sum(t_lazy) / sum(t_mem):.3f}x")
    print(f"RATIO lazily read / in-memory training time: {ratio:.3f}x (median over {len(pair_ratios)} batch pairs, "
          f"each pair trained back to back)")
    return {"ratio": ratio, "lazy_epoch_s": median(t_lazy), "memory_epoch_s": median(t_mem)}


if __name__ == "__main__":
    main()
