"""Balanced (size-constrained) RQ-KMeans: every code of a level holds at most ``ceil(n / K)`` items.

Each level starts from faiss k-means centroids, then alternates ``iters`` times

1. a capacity-constrained assignment (:func:`balanced_assign`): items propose to their nearest
   centroids in order of distance; a centroid with ``m`` free slots accepts its ``m`` closest
   proposers and rejects the rest, who propose to their next candidate (a vectorised,
   no-displacement variant of deferred acceptance over each item's ``top_m`` nearest centroids;
   items left over are placed by the same rule among the centroids that still have room);
2. the centroid update ``C[k] = mean{r_i : c(i) = k}`` (an empty code keeps its centroid).

This approximates ``min Σ_i ||r_i - C[c(i)]||²  s.t. |{i : c(i) = k}| ≤ ceil(n/K)`` (balanced
k-means); it is a heuristic, not the exact min-cost-flow optimum.
"""

from __future__ import annotations

import numpy as np

from components.tokenizer.rq_kmeans import RQResult, kmeans, nearest, residual_quantize


def balanced_assign(x: np.ndarray, centroids: np.ndarray, capacity: np.ndarray | int, top_m: int = 32) -> np.ndarray:
    """Assign each row of ``x`` to a centroid so no centroid ``k`` gets more than ``capacity[k]`` rows."""
    n, k = len(x), len(centroids)
    cap = np.full(k, capacity, dtype=np.int64) if np.isscalar(capacity) else np.asarray(capacity, dtype=np.int64).copy()
    if cap.sum() < n:
        raise ValueError(f"total capacity {cap.sum()} < {n} items")
    assign = np.full(n, -1, dtype=np.int64)
    open_ids = np.flatnonzero(cap > 0)
    m = len(open_ids) if n * len(open_ids) <= 4_000_000 else min(top_m, len(open_ids))
    dist, cand = nearest(x, centroids[open_ids], m)
    cand = open_ids[cand]
    ptr = np.zeros(n, dtype=np.int64)
    load = np.zeros(k, dtype=np.int64)
    while True:
        active = np.flatnonzero((assign < 0) & (ptr < m))
        if active.size == 0:
            break
        c = cand[active, ptr[active]]
        full = load[c] >= cap[c]
        ptr[active[full]] += 1
        prop, c, d = active[~full], c[~full], dist[active[~full], ptr[active[~full]]]
        if prop.size == 0:
            continue
        order = np.lexsort((d, c))
        prop, c = prop[order], c[order]
        rank = np.arange(len(c)) - np.searchsorted(c, c, side="left")
        ok = rank < (cap[c] - load[c])
        assign[prop[ok]] = c[ok]
        np.add.at(load, c[ok], 1)
        ptr[prop[~ok]] += 1
    rest = np.flatnonzero(assign < 0)
    if rest.size:  # every candidate of these items filled up: place them among centroids with room
        room = cap - load
        sub = balanced_assign(x[rest], centroids, room, top_m)
        assign[rest] = sub
    return assign


def balanced_kmeans(x: np.ndarray, k: int, niter: int = 20, iters: int = 10, seed: int = 0, max_points_per_centroid: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(centroids [k, d], codes [n]) with every cluster of size ≤ ceil(n / k)."""
    cap = -(-len(x) // k)
    cw = kmeans(x, k, niter, seed, max_points_per_centroid)
    codes = balanced_assign(x, cw, cap)
    for _ in range(iters):
        sums = np.zeros_like(cw, dtype=np.float64)
        np.add.at(sums, codes, x)
        cnt = np.bincount(codes, minlength=k)
        nz = cnt > 0
        cw[nz] = (sums[nz] / cnt[nz, None]).astype(np.float32)
        new = balanced_assign(x, cw, cap)
        if np.array_equal(new, codes):
            break
        codes = new
    return cw, codes.astype(np.int32)


def balanced_rq_kmeans(x: np.ndarray, sizes: list[int], niter: int = 20, iters: int = 10, seed: int = 0, max_points_per_centroid: int = 256, progress: bool = False) -> RQResult:
    """Residual quantization whose every level is a balanced k-means."""
    return residual_quantize(x, sizes, lambda r, k, s: balanced_kmeans(r, k, niter, iters, s, max_points_per_centroid), seed, progress)
