"""Accuracy metrics on ranked lists (one target per sample).

``topk`` is an int array ``[n, K]`` of item indices, best first; ``targets`` is ``[n]``.

- HR@K   = mean over samples of 1[target in topk[:, :K]]   (= Recall@K with one target)
- NDCG@K = mean over samples of 1 / log2(rank + 2) if the target is at 0-based rank < K, else 0
           (the ideal DCG with one relevant item is 1)
"""

from __future__ import annotations

import numpy as np


def _hit_rank(topk: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """0-based rank of the target within the first k slots, or -1."""
    topk = np.asarray(topk)
    targets = np.asarray(targets)
    if topk.ndim != 2 or topk.shape[0] != targets.shape[0]:
        raise ValueError(f"topk {topk.shape} and targets {targets.shape} do not match")
    if k > topk.shape[1]:
        raise ValueError(f"K={k} is larger than the {topk.shape[1]} ranked items per sample")
    if topk.shape[0] == 0:
        raise ValueError("empty test set: no samples to evaluate")
    hits = topk[:, :k] == targets[:, None]
    return np.where(hits.any(axis=1), hits.argmax(axis=1), -1)


def hit_rate_at_k(topk: np.ndarray, targets: np.ndarray, k: int) -> float:
    return float((_hit_rank(topk, targets, k) >= 0).mean())


def ndcg_at_k(topk: np.ndarray, targets: np.ndarray, k: int) -> float:
    rank = _hit_rank(topk, targets, k)
    gains = np.where(rank >= 0, 1.0 / np.log2(rank.clip(min=0) + 2.0), 0.0)
    return float(gains.mean())
