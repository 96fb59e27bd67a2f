"""RW: loss re-weighting by item popularity (the "Reweighting" row of CRAB Table 1, after
IFairLRS, Jiang et al. 2024). A reusable per-item weight for any training loss over targets:

    w_i = (1 + count_i)^(−p) / Z,   Z = (1/N) Σ_s (1 + count_{t_s})^(−p)

so that the weights average 1 over the N training samples (targets t_s): the loss scale, and
with it the learning rate, stays comparable to the unweighted loss. p = 0 gives all-ones; p = 1
weights each sample by the inverse popularity of its target. The weighted loss is
L = (1/N) Σ_s w_{t_s} · ℓ_s.
"""

from __future__ import annotations

import numpy as np

from components.evaluation.metrics import RankingError


def popularity_weights(train_counts: np.ndarray, power: float = 1.0) -> np.ndarray:
    """Per-item loss weights, float32 [n_items], mean 1 over training samples (see module doc)."""
    counts = np.asarray(train_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0 or (counts < 0).any():
        raise RankingError("train_counts must be a non-empty 1-D array of non-negative counts")
    if power < 0:
        raise RankingError(f"re-weighting power must be >= 0, got {power}")
    raw = (1.0 + counts) ** (-power)
    total = counts.sum()
    z = (raw * counts).sum() / total if total > 0 else raw.mean()
    return (raw / z).astype(np.float32)
