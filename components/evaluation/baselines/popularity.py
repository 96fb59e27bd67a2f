"""Most-popular baseline: every sample gets the K items with the most training interactions."""

from __future__ import annotations

import numpy as np

from components.evaluation.metrics import RankingError, popularity_order


def most_popular_topk(train_counts: np.ndarray, n: int, k: int) -> np.ndarray:
    """``[n, k]`` int32: the top-k items by training count (ties by index), repeated for n samples."""
    counts = np.asarray(train_counts)
    if k < 1 or k > counts.size:
        raise RankingError(f"k must be in [1, {counts.size}], got {k}")
    return np.tile(popularity_order(counts)[:k].astype(np.int32), (n, 1))
