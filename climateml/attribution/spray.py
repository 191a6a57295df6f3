"""Spectral relevance analysis (SpRAy; Lapuschkin et al. 2019): do the attribution maps fall into a few
strategies, one of which might be a Clever-Hans cue?

Many attribution maps are (optionally) pooled to a coarser grid, normalised, linked by a symmetric
k-nearest-neighbour graph, and embedded with the eigenvectors of the graph's normalised Laplacian. The
number of clusters is where the gap between consecutive small eigenvalues is largest (the eigengap
heuristic: k well-separated groups give k eigenvalues near 0); k-means in the embedding assigns each
map a cluster, and each cluster's mean map and member count show the strategies. Our own few lines on
scikit-learn and scipy (CoRelAy is GPL).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import xarray as xr

from climateml.attribution.adapter import stacked
from climateml.errors import ConfigError
from climateml.grid import spatial_dims


@dataclass
class SprayResult:
    """What :func:`spray` found.

    Attributes:
        labels: cluster of each sample (sample,), clusters numbered by size, largest first.
        n_clusters: the number of clusters (from the eigengap unless given).
        eigenvalues: smallest eigenvalues of the normalised graph Laplacian, ascending.
        eigengap: the gap that chose ``n_clusters``.
        embedding: (n_samples, n_clusters) spectral embedding the clusters were found in.
        cluster_means: mean attribution map of each cluster, dims (cluster, *the map's dims).
        counts: members per cluster (cluster,).
    """

    labels: xr.DataArray
    n_clusters: int
    eigenvalues: np.ndarray
    eigengap: float
    embedding: np.ndarray
    cluster_means: xr.DataArray
    counts: xr.DataArray

    def summary(self) -> dict[str, Any]:
        return {"n_clusters": self.n_clusters, "counts": [int(c) for c in self.counts.values],
                "eigenvalues": [float(v) for v in self.eigenvalues], "eigengap": float(self.eigengap)}


def _pool(da: xr.DataArray, pool: int | Mapping[str, int] | None) -> xr.DataArray:
    if not pool:
        return da
    if isinstance(pool, Mapping):
        factors = {d: int(f) for d, f in pool.items()}
    else:
        hdims = spatial_dims(da, required=False)
        if hdims is None:
            raise ConfigError("spray pool=<int> needs (lat, lon) or (y, x) dims; give pool as {dim: factor}")
        factors = {d: int(pool) for d in hdims}
    bad = [d for d in factors if d not in da.dims]
    if bad:
        raise ConfigError(f"spray pool dims {bad} are not dims of the maps {tuple(da.dims)}")
    factors = {d: min(f, da.sizes[d]) for d, f in factors.items() if f > 1}
    return da.coarsen(factors, boundary="trim").mean() if factors else da


def spray(attr: xr.DataArray | xr.Dataset, pool: int | Mapping[str, int] | None = None, n_neighbors: int = 10,
          max_clusters: int = 8, n_clusters: int | None = None, normalise: str | None = "l2", positive: bool = False,
          seed: int = 0) -> SprayResult:
    """Cluster attribution maps (one per sample) with spectral clustering on a kNN graph.

    Args:
        attr: attribution maps, sample dim first (a Dataset's variables are stacked as channels).
        pool: coarsen the maps before clustering: a factor for both horizontal dims, or {dim: factor} (mean).
        n_neighbors: neighbours per map in the kNN graph (connectivity, symmetrised).
        max_clusters: the eigengap looks at up to this many clusters.
        n_clusters: force the number of clusters (skip the eigengap).
        normalise: "l2" (each map to unit norm: clusters by pattern, not by strength), "max" (by its largest
            absolute value) or None.
        positive: cluster the positive part of the relevance only.
        seed: k-means initialisation.
    """
    from scipy.linalg import eigh
    from scipy.sparse.csgraph import laplacian
    from sklearn.cluster import KMeans
    from sklearn.neighbors import kneighbors_graph

    da = stacked(attr)
    n = da.shape[0]
    if n < 3:
        raise ConfigError(f"spray needs at least 3 maps, got {n}")
    pooled = _pool(da, pool)
    feats = np.asarray(pooled.values, dtype=np.float64).reshape(n, -1)
    if positive:
        feats = np.clip(feats, 0, None)
    if normalise == "l2":
        feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    elif normalise == "max":
        feats = feats / np.maximum(np.abs(feats).max(1, keepdims=True), 1e-12)
    elif normalise is not None:
        raise ConfigError(f"spray normalise must be 'l2', 'max' or None, got {normalise!r}")
    k_nn = max(1, min(int(n_neighbors), n - 1))
    graph = kneighbors_graph(feats, k_nn, mode="connectivity", include_self=False)
    graph = graph.maximum(graph.T).toarray()
    lap = laplacian(graph, normed=True)
    m = min(n - 1, int(max_clusters) + 1)
    vals, vecs = eigh(lap, subset_by_index=[0, m])
    vals = np.clip(vals, 0.0, None)
    gaps = np.diff(vals)[: int(max_clusters)]
    if n_clusters is None:
        k = int(np.argmax(gaps)) + 1 if len(gaps) else 1
    else:
        k = int(n_clusters)
        if not 1 <= k <= n:
            raise ConfigError(f"spray n_clusters must be in 1..{n}, got {k}")
    gap = float(gaps[k - 1]) if 0 < k <= len(gaps) else float("nan")
    emb = vecs[:, :k]
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    if k == 1:
        labels = np.zeros(n, dtype=int)
    else:
        labels = KMeans(k, n_init=10, random_state=seed).fit_predict(emb)
    sizes = np.bincount(labels, minlength=k)
    order = np.argsort(-sizes, kind="stable")
    relabel = np.empty(k, dtype=int)
    relabel[order] = np.arange(k)
    labels = relabel[labels]
    counts = sizes[order]
    sample = da.dims[0]
    lab = xr.DataArray(labels, coords={sample: da[sample]} if sample in da.coords else None, dims=(sample,),
                       name="spray_cluster")
    means = xr.concat([da.isel({sample: np.flatnonzero(labels == c)}).mean(sample) for c in range(k)], dim="cluster")
    means = means.assign_coords(cluster=np.arange(k))
    means.name = "spray_cluster_mean"
    means.attrs = {"description": "mean attribution map of each SpRAy cluster"}
    cnt = xr.DataArray(counts, coords={"cluster": np.arange(k)}, dims=("cluster",), name="spray_cluster_count")
    return SprayResult(lab, k, vals, gap, emb, means, cnt)
