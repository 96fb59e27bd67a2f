"""RR: post-hoc re-ranking that penalizes popular items (the "Reranking" row of CRAB Table 1,
after IFairLRS, Jiang et al. 2024), on top of any recommender's scores.

    s'_{u,i} = s_{u,i} − γ · log(1 + count_i)

``s`` are the recommender's scores (logits for SASRec, log-probabilities / beam scores for a
generator), ``count_i`` the item's training interactions, γ ≥ 0 the strength (γ = 0: unchanged).
The penalty is monotone in popularity, so among items with equal scores the less popular wins;
with log-scale scores it divides each item's probability by (1 + count_i)^γ.
"""

from __future__ import annotations

import numpy as np
import torch

from components.evaluation.metrics import INVALID, RankingError


def popularity_penalty(train_counts: np.ndarray, gamma: float) -> np.ndarray:
    """γ · log(1 + count_i), float32 [n_items]."""
    if gamma < 0:
        raise RankingError(f"re-ranking strength gamma must be >= 0, got {gamma}")
    return (gamma * np.log1p(np.asarray(train_counts, dtype=np.float64))).astype(np.float32)


def rerank_scores(scores: torch.Tensor | np.ndarray, train_counts: np.ndarray, gamma: float, k: int) -> np.ndarray:
    """Top-k item ids ``[n, k]`` of ``scores [n, n_items] − γ·log(1+count)`` (all items ranked)."""
    s = torch.as_tensor(scores, dtype=torch.float32)
    if s.ndim != 2 or s.shape[1] != len(train_counts):
        raise RankingError(f"scores {tuple(s.shape)} must be [n, {len(train_counts)}]")
    if k > s.shape[1]:
        raise RankingError(f"k={k} is larger than the catalog ({s.shape[1]} items)")
    s = s - torch.from_numpy(popularity_penalty(train_counts, gamma))
    return s.topk(k, dim=1).indices.numpy().astype(np.int32)


def rerank_topk(topk: np.ndarray, scores: np.ndarray, train_counts: np.ndarray, gamma: float, k: int) -> np.ndarray:
    """Re-rank a candidate list (e.g. a generator's beams) by ``score − γ·log(1+count)``; keep k.

    ``topk [n, N]`` candidate ids (``INVALID`` slots go last), ``scores [n, N]`` their scores.
    """
    topk = np.asarray(topk)
    scores = np.asarray(scores, dtype=np.float64)
    if topk.shape != scores.shape or topk.ndim != 2:
        raise RankingError(f"candidates {topk.shape} and scores {scores.shape} must be the same [n, N] shape")
    if k > topk.shape[1]:
        raise RankingError(f"k={k} is larger than the {topk.shape[1]} candidates per sample")
    pen = popularity_penalty(train_counts, gamma).astype(np.float64)
    adj = np.where(topk == INVALID, -np.inf, scores - pen[np.clip(topk, 0, None)])
    order = np.argsort(-adj, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(topk, order, axis=1).astype(np.int32)


def select_gamma(
    scores: torch.Tensor | np.ndarray,
    targets: np.ndarray,
    train_counts: np.ndarray,
    grid: tuple[float, ...] | list[float],
    k: int = 10,
    n_groups: int = 5,
    max_ndcg_drop: float = 0.05,
) -> tuple[float, list[dict[str, float]]]:
    """Choose γ on VALIDATION scores: the γ in ``grid`` with the lowest DGU@k among those whose
    NDCG@k is at least ``(1 − max_ndcg_drop)`` × the NDCG@k at γ = 0 (ties: the smaller γ).
    Returns ``(gamma, [{"gamma", "NDCG@k", "DGU@k", "MGU@k"}, ...])``."""
    from components.evaluation.metrics import evaluate_topk

    if not grid:
        raise RankingError("empty gamma grid")
    s = torch.as_tensor(scores, dtype=torch.float32)
    base_topk = s.topk(k, dim=1).indices.numpy()
    base = evaluate_topk(base_topk, targets, train_counts, ks=(k,), n_groups=n_groups)[f"NDCG@{k}"]
    rows = []
    for g in sorted(grid):
        m = evaluate_topk(rerank_scores(s, train_counts, g, k), targets, train_counts, ks=(k,), n_groups=n_groups)
        rows.append({"gamma": float(g), f"NDCG@{k}": m[f"NDCG@{k}"], f"DGU@{k}": m[f"DGU@{k}"], f"MGU@{k}": m[f"MGU@{k}"]})
    ok = [r for r in rows if r[f"NDCG@{k}"] >= (1 - max_ndcg_drop) * base] or rows[:1]
    best = min(ok, key=lambda r: (r[f"DGU@{k}"], r["gamma"]))
    return best["gamma"], rows
