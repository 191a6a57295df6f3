"""Streaming, distributed evaluation: scores from sufficient statistics summed batch by batch and over DDP
ranks, predictions appended batch by batch to per-rank part stores and merged into the run's NetCDF.

Nothing of a whole split is held in memory: each batch's predictions, truth and baselines are turned into
sums (:class:`Sums`: squared and absolute errors, counts, contingency tables, FSS fraction sums ...) and
appended to this rank's Zarr part store (:class:`climateml.writers.PredictionParts`), then dropped. At the end
the sums are added over the ranks of a running ``torch.distributed`` process group (one ``all_reduce``), so every score
is the score of the whole evaluation set, computed once from its totals (not a mean of per-batch or
per-rank scores); rank 0 then merges the parts into ``<split>_predictions_<group>.nc`` chunk by chunk.
The part stores live in the run directory (``.parts/``), which every rank must see (a shared file system,
as a run directory under DDP always is). What the evaluator calls on a DataModule batch by batch is declared in
:mod:`climateml.contracts` (:class:`~climateml.contracts.BatchData` and its task-specific extensions).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from climateml.data.base import distributed_world


class Sums:
    """Named float64 arrays added batch by batch (:meth:`add`), then over DDP ranks (:meth:`all_reduce`).

    Keys are tuples of strings, e.g. ``(group, entry, variable, statistic)``. Alongside the sums, a
    :meth:`pick` keeps, per key, the sample with the highest value (the lowest index on a tie), e.g. the
    rainiest test case a figure shows: ``picks[key]`` lists (value, index), best first; picks are reduced over the
    ranks too.
    """

    def __init__(self):
        self.values: dict[tuple, np.ndarray] = {}
        self.picks: dict[tuple, list[tuple[float, int]]] = {}
        self.pick_sizes: dict[tuple, int] = {}  # how many samples each pick keeps (its k)

    def add(self, key: tuple, statistics: Mapping[str, np.ndarray]) -> None:
        for name, value in statistics.items():
            full = (*key, name)
            value = np.asarray(value, dtype=np.float64)
            self.values[full] = self.values[full] + value if full in self.values else value.copy()

    def pick(self, key: tuple, values: Sequence[float], indices: Sequence[int], k: int = 1) -> None:
        """Keep, under ``key``, the ``k`` samples of the highest ``values`` seen so far (on a tie the lower index)."""
        self.pick_sizes[key] = k
        self.picks[key] = _best([*self.picks.get(key, []), *zip(map(float, values), map(int, indices))], k)

    def group(self, *prefix) -> dict[str, np.ndarray]:
        """{statistic: sum} of the keys starting with ``prefix`` (one level below it)."""
        n = len(prefix)
        return {k[n]: v for k, v in self.values.items() if k[:n] == prefix and len(k) == n + 1}

    def all_reduce(self) -> None:
        """Add the sums of every rank (and keep the best pick of all) when a process group is running.

        Every rank must call it. A rank that saw no batch (fewer samples than ranks) has no keys; the keys and
        shapes are gathered first, so every rank then reduces the same vector.
        """
        world, _ = distributed_world()
        if world == 1:
            return
        dist = torch.distributed
        shapes: list = [None] * world
        dist.all_gather_object(shapes, ({k: v.shape for k, v in self.values.items()}, self.picks, self.pick_sizes))
        every: dict[tuple, tuple] = {}
        candidates: dict[tuple, set] = {}
        for rank_shapes, picks, sizes in shapes:
            every.update(rank_shapes)
            self.pick_sizes.update(sizes)  # the same k on every rank that picked under a key
            for key, p in picks.items():
                candidates.setdefault(key, set()).update(p)
        self.picks = {key: _best(c, self.pick_sizes[key]) for key, c in candidates.items()}
        keys = sorted(every)
        flat = np.concatenate([self.values.get(k, np.zeros(every[k])).ravel() for k in keys]) if keys else np.zeros(0)
        # NCCL (Lightning's backend on GPUs) reduces CUDA tensors only: the sums go to this rank's GPU and back
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        total = torch.from_numpy(flat.astype(np.float64)).to(device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        total, start = total.cpu().numpy(), 0
        for k in keys:
            size = int(np.prod(every[k]))
            self.values[k] = total[start:start + size].reshape(every[k])
            start += size


def _best(candidates, k: int) -> list[tuple[float, int]]:
    return sorted(set(candidates), key=lambda p: (-p[0], p[1]))[:k]


def barrier() -> None:
    if distributed_world()[0] > 1:
        torch.distributed.barrier()
