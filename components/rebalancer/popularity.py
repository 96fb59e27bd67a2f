"""Token popularity (CRAB Eq. 3 and Eq. 8) and the statistics that describe how skewed it is.

- Eq. 3, token popularity: ``P_l(t) = sum_{i : sid_i[l] = t} f_i`` with ``f_i`` the item's
  training frequency (:meth:`Dataset.train_item_counts`).
- Eq. 8, pairwise popularity for codebooks whose level tokens are shared across parents
  (RQ-VAE / RQ-KMeans): ``P_l(p, c) = sum_{i : sid_i[l-1] = p, sid_i[l] = c} f_i``. For a strict
  tree it equals ``P_l(c)``; in general ``sum_c P_l(p, c) = P_{l-1}(p)``.
- Gini of a popularity vector ``x`` (ascending, ``n`` entries):
  ``G = 2 * sum_i i * x_i / (n * sum_i x_i) - (n + 1) / n`` (``i`` from 1); 0 = perfectly even.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from components.data.stats import gini  # noqa: F401  (one Gini for the whole project; re-exported)


def token_popularity(sids: np.ndarray, counts: np.ndarray, level: int, size: int | None = None) -> np.ndarray:
    """Eq. 3: popularity of every level-``level`` token, int64 ``[size]`` (0 for unused tokens)."""
    col = np.asarray(sids)[:, level]
    size = int(size if size is not None else (col.max() + 1 if col.size else 0))
    return np.bincount(col, weights=np.asarray(counts, dtype=np.float64), minlength=size).round().astype(np.int64)


def token_item_counts(sids: np.ndarray, level: int, size: int) -> np.ndarray:
    """How many items carry each level-``level`` token, int64 ``[size]``."""
    return np.bincount(np.asarray(sids)[:, level], minlength=size).astype(np.int64)


def pair_popularity(sids: np.ndarray, counts: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 8: ``(pairs int32 [E, 2] of (parent at level-1, child at level), popularity int64 [E])``,
    pairs sorted lexicographically (the same order as :meth:`Codebook.edges`)."""
    if level < 1:
        raise ValueError("pairwise popularity needs level >= 1 (a parent level)")
    s = np.asarray(sids, dtype=np.int64)
    width = int(s[:, level].max()) + 1
    key = s[:, level - 1] * width + s[:, level]
    uniq, inv = np.unique(key, return_inverse=True)
    pop = np.bincount(inv, weights=np.asarray(counts, dtype=np.float64)).round().astype(np.int64)
    pairs = np.stack([uniq // width, uniq % width], axis=1).astype(np.int32)
    return pairs, pop


def popularity_stats(pop: np.ndarray, used: np.ndarray) -> dict[str, Any]:
    """Summary of one level's token popularity over the *used* tokens (tokens carrying >= 1 item):
    vocabulary size, used tokens, max, mean, top-token share (max / total), top-10% share, Gini."""
    pop = np.asarray(pop, dtype=np.int64)
    u = pop[np.asarray(used, dtype=bool)]
    total = int(u.sum())
    k10 = max(1, int(np.ceil(0.1 * u.size))) if u.size else 0
    top10 = int(np.sort(u)[::-1][:k10].sum()) if u.size else 0
    return {
        "vocab": int(pop.size),
        "used_tokens": int(u.size),
        "total": total,
        "max": int(u.max()) if u.size else 0,
        "mean": float(u.mean()) if u.size else 0.0,
        "top_share": float(u.max() / total) if total else 0.0,
        "top10pct_share": float(top10 / total) if total else 0.0,
        "gini": gini(u),
    }


def level_stats(sids: np.ndarray, counts: np.ndarray, sizes: list[int]) -> list[dict[str, Any]]:
    """:func:`popularity_stats` for every level."""
    out = []
    for lvl, size in enumerate(sizes):
        pop = token_popularity(sids, counts, lvl, size)
        used = token_item_counts(sids, lvl, size) > 0
        out.append({"level": lvl, **popularity_stats(pop, used)})
    return out
