"""One training epoch of TemperatureEmulator under lightning.Trainer against a hand-written PyTorch loop.

Both sides train the same network on the same data: ``climateml.models.blocks.mlp(n_inputs, n_outputs,
[64, 64])`` (ReLU, the lab default), Adam with lr 1e-3, MSE on standardised targets (the data module's
training statistics), the lab's default training split (CO2, CH4 -> tas on 96 x 144, ~600 samples),
batches of 64 shuffled every epoch, CPU, torch's default thread count.

* **Lightning**: ``TemperatureEmulator(dm.spec, ...)`` fitted by ``lightning.Trainer(max_epochs=N,
  logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
  limit_val_batches=0, num_sanity_val_steps=0)`` with the ``ClimateBenchDataModule``. Besides the loss it
  accumulates the epoch's area-weighted training RMSE (K) and logs it and the training loss once per
  epoch: the metrics a user sees.
* **plain**: ``for batch in dm.train_dataloader()`` (``sampler.set_epoch(epoch)`` first, as Lightning
  does): standardise, forward, ``mse_loss``, ``zero_grad``, ``backward``, ``step``. That is the same
  DataLoader the data module hands to Lightning, so data loading costs the same on both sides (its cost
  against an in-memory tensor is bench_datamodule.py's subject).

With the same seed both start from the same weights and see the same batches; the script prints the
largest weight difference after one epoch as a check that they do the same work.

**Excluding one-off start-up (the method).** Each measurement runs the whole thing from scratch:
build the model (and optimiser / Trainer), fit for N epochs, return. It is done for N = ``--lo``
(default 1) and N = ``--hi`` (default 6), and

    seconds per epoch = (T(hi) - T(lo)) / (hi - lo).

Everything paid once per fit (model construction, Trainer set-up and its hooks, the data module's
``setup`` call, optimiser creation, the first epoch's lazy initialisation and warm-up, teardown)
cancels in the difference, on both sides alike, without instrumenting either loop; what remains is
the steady-state cost of an epoch, including everything Lightning does per epoch (epoch-end metric
computation and logging, callbacks, loop bookkeeping). lo = 1 rather than 0 also moves first-epoch
warm-up into the cancelled part. The fixed cost T(lo) - lo x per-epoch is printed for context. The
variants are run in rotated order within each of ``--repeats`` rounds. The headline uses, for each of
T(lo) and T(hi), the fastest of the rounds (on a shared machine other jobs only ever add time, and a
difference of two noisy medians can even come out negative); the median of the per-round values and
of the per-round ratios is printed next to it.

The headline ratio is the median of the per-round ratios (``--repeats`` interleaved rounds); the
ratio of the fastest times is printed beside it.

**Breakdown** (on by default, ``--no-breakdown`` to skip): to attribute the Lightning overhead the
same measurement is made for two stripped subclasses of TemperatureEmulator whose training step does
(a) the loss only, nothing logged (Lightning's loop cost alone) and (b) the loss plus a per-step
``self.log("train_loss", ..., on_epoch=True)`` (how the module logged before issue 9); the full module
instead accumulates the loss and the area-weighted RMSE in a small buffer and logs both once per epoch.

Run: ``python benchmarks/bench_training_epoch.py [--repeats 15] [--lo 1] [--hi 6] [--data-dir DIR]``
"""

from __future__ import annotations

import argparse

import _common  # noqa: F401  (puts the repository root on sys.path)
from _common import add_data_dir_argument, set_threads, footer, header, median, quiet_lightning, sample_data, timed

SEED = 0
HIDDEN = [64, 64]
LR = 1e-3


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="rounds of interleaved measurements (default 15)")
    parser.add_argument("--lo", type=int, default=1, help="epochs of the short fit (default 1)")
    parser.add_argument("--hi", type=int, default=6, help="epochs of the long fit (default 6)")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the stripped Lightning variants")
    add_data_dir_argument(parser)
    args = parser.parse_args(argv)
    if args.hi <= args.lo:
        parser.error("--hi must be larger than --lo")

    quiet_lightning()
    import lightning as L
    import torch
    from torch import nn

    from climateml.data import ClimateBenchDataModule
    from climateml.models import TemperatureEmulator
    from climateml.models.blocks import mlp

    class LossOnly(TemperatureEmulator):
        """The module's training step reduced to the loss: no metric, nothing logged."""

        def training_step(self, batch, batch_idx):
            x, y = batch["x"], batch["y"]
            return nn.functional.mse_loss(self.net((x - self.x_mean) / self.x_std), (y - self.y_mean) / self.y_std)

        def on_train_epoch_end(self):
            pass

    class LossLogged(LossOnly):
        """The loss plus a per-step self.log of train_loss (on_epoch), no RMSE: the pre-issue-9 way to log."""

        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch["x"]))
            return loss

    set_threads(args.threads)
    header("bench_training_epoch: Lightning TemperatureEmulator vs hand-written PyTorch loop")
    with sample_data(args.data_dir) as data_dir:
        dm = ClimateBenchDataModule(str(data_dir), batch_size=64)
        dm.setup("fit")
        x = dm.train_dataset.tensors["x"]
        norm = dm.normalization
        n_in, n_out = dm.spec.input_shape[0], dm.spec.output_shape[0]
        loader = dm.train_dataloader()  # the loader the data module hands to Lightning

        def lightning_fit(cls, epochs: int) -> nn.Module:
            torch.manual_seed(SEED)
            model = cls(dm.spec, hidden_sizes=HIDDEN, lr=LR, base="none")  # the plain MLP the hand loop trains
            trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                limit_val_batches=0, num_sanity_val_steps=0)
            trainer.fit(model, datamodule=dm)
            return model.net

        def plain_fit(epochs: int, fused_target: bool = False) -> nn.Module:
            torch.manual_seed(SEED)
            net = mlp(n_in, n_out, HIDDEN)
            opt = torch.optim.Adam(net.parameters(), lr=LR)
            inv_std = 1.0 / norm.y_std
            shift = -norm.y_mean * inv_std
            net.train()
            for epoch in range(epochs):
                loader.sampler.set_epoch(epoch)
                for batch in loader:
                    xb, yb = batch["x"], batch["y"]
                    target = torch.addcmul(shift, yb, inv_std) if fused_target else (yb - norm.y_mean) / norm.y_std
                    loss = nn.functional.mse_loss(net((xb - norm.x_mean) / norm.x_std), target)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            return net

        # same work on both sides: same initial weights, same batches -> same weights after one epoch
        a, b = lightning_fit(TemperatureEmulator, 1), plain_fit(1)
        max_diff = max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))
        del a, b

        variants = {"plain": plain_fit, "lightning": lambda n: lightning_fit(TemperatureEmulator, n)}
        if not args.no_breakdown:
            variants["lightning, loss only"] = lambda n: lightning_fit(LossOnly, n)
            variants["lightning, loss + log"] = lambda n: lightning_fit(LossLogged, n)
            variants["plain, fused target"] = lambda n: plain_fit(n, fused_target=True)
        names = list(variants)
        t_lo = {k: [] for k in names}
        t_hi = {k: [] for k in names}
        for r in range(args.repeats):
            order = names[r % len(names):] + names[:r % len(names)]
            for k in order:
                t_lo[k].append(timed(lambda: variants[k](args.lo)))
                t_hi[k].append(timed(lambda: variants[k](args.hi)))
            print(f"  round {r + 1}/{args.repeats}: " + ", ".join(
                f"{k} {(t_hi[k][-1] - t_lo[k][-1]) / (args.hi - args.lo) * 1e3:.0f} ms/epoch" for k in names), flush=True)

    span = args.hi - args.lo
    best = {k: (min(t_hi[k]) - min(t_lo[k])) / span for k in names}  # min: the noise of a shared machine only adds
    per_round = {k: [(h - lo) / span for h, lo in zip(t_hi[k], t_lo[k])] for k in names}
    med = {k: median(v) for k, v in per_round.items()}
    ratio_best = best["lightning"] / best["plain"]
    ratio = median([a / b for a, b in zip(per_round["lightning"], per_round["plain"])])
    steps = -(-len(x) // 64)
    print(f"{len(x)} training samples, {steps} steps per epoch; net {HIDDEN} -> {n_out} outputs "
          f"({sum(p.numel() for p in mlp(n_in, n_out, HIDDEN).parameters()):,} parameters); "
          f"max |weight difference| Lightning vs plain after 1 epoch: {max_diff:.2e}")
    print(f"method: seconds/epoch = (T(fit {args.hi} epochs) - T(fit {args.lo} epoch(s))) / {span}; 'best' uses the "
          f"fastest T of {args.repeats} rounds for each, 'median' the median of the per-round values")
    for k in names:
        print(f"  {k:<24} best {best[k]:.4f} s/epoch ({best[k] / steps * 1e3:.1f} ms/step), median {med[k]:.4f} s/epoch; "
              f"one-off fit start-up ~{min(t_lo[k]) - args.lo * best[k]:.2f} s")
    print(f"plain PyTorch loop: {best['plain']:.4f} s/epoch (median {med['plain']:.4f})")
    print(f"Lightning (TemperatureEmulator): {best['lightning']:.4f} s/epoch (median {med['lightning']:.4f})")
    print(f"RATIO Lightning / plain: {ratio:.2f}x (median of {args.repeats} interleaved rounds' ratios; "
          f"ratio of the fastest times {ratio_best:.2f}x)")
    if not args.no_breakdown:
        print("where Lightning's extra time per epoch goes (differences of best per-epoch times):")
        print(f"  Lightning loop itself (loss only - plain):        "
              f"{(best['lightning, loss only'] - best['plain']) * 1e3:+.0f} ms")
        print(f"  per-step self.log('train_loss') (loss+log - loss): "
              f"{(best['lightning, loss + log'] - best['lightning, loss only']) * 1e3:+.0f} ms")
        print(f"  epoch sums of loss and RMSE, logged once (full - loss only): "
              f"{(best['lightning'] - best['lightning, loss only']) * 1e3:+.0f} ms")
        print(f"  (for comparison) full - loss+per-step log:        "
              f"{(best['lightning'] - best['lightning, loss + log']) * 1e3:+.0f} ms")
        fused = [a / b for a, b in zip(per_round["lightning"], per_round["plain, fused target"])]
        print(f"  the module standardises the target in one fused pass (y * 1/std - mean/std); against a plain "
              f"loop doing the same: ratio {median(fused):.2f}x (median), plain fused "
              f"{best['plain, fused target'] * 1e3:.0f} ms/epoch")
    footer()
    return {"ratio": ratio, "ratio_best": ratio_best, "lightning_s_per_epoch": best["lightning"],
            "plain_s_per_epoch": best["plain"]}


if __name__ == "__main__":
    main()
