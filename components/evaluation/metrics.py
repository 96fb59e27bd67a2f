"""Accuracy and popularity-bias metrics on ranked lists (one target per sample).

``topk`` is an int array ``[n, K]`` of item indices, best first; ``targets`` is ``[n]``;
``train_counts`` is ``[n_items]`` (how often each item is a training target). A slot holding
``INVALID = -1`` is an output the recommender could not map to a catalog item (e.g. a generated
SID that names no item); it never hits and is counted by :func:`invalid_rate`. Every other id must
lie in ``[0, n_items)`` and a row must not repeat a valid id: :func:`check_topk` raises
:class:`RankingError` otherwise. Ranking is over ALL items; history items are NOT excluded.

Accuracy (``n`` samples, ``rank_u`` = 0-based position of the target in row ``u``, if present):

- HR@K   = 1/n Σ_u 1[rank_u < K]                       (= Recall@K with one target)
- NDCG@K = 1/n Σ_u 1[rank_u < K] / log2(rank_u + 2)    (ideal DCG with one relevant item is 1)

Popularity groups (IFairLRS, Jiang et al. WWW'24, as used in CRAB Table 1): items sorted by
training count, descending (ties by item index), cut into ``G`` groups of equal item count
(``np.array_split``: sizes differ by at most one); group 0 is the most popular.

- exposure share  E_g@K = #{valid top-K slots holding an item of g} / #{valid top-K slots}
- history share   H_g   = Σ_{i∈g} count_i / Σ_i count_i        (share of training interactions)
- GU_g@K  = E_g@K − H_g
- MGU@K   = 1/G Σ_g |GU_g@K|
- DGU@K   = max_g GU_g@K − min_g GU_g@K

Diversity (CARE §4.1.2, after SPRec):

- DivR@K = #{distinct valid items in all top-K lists} / (n·K)
- ORR@K  = #{top-K slots taken by the 5 most recommended items} / (n·K)

Head/tail: the top ``head_fraction`` (default 20%, ``ceil``) items by training count are head, the
rest tail; HR@K / NDCG@K are averaged over the samples whose TARGET is head (resp. tail).

- invalid@K  = #{slots = INVALID in the first K} / (n·K)
- coverage@K = #{distinct valid items in all top-K lists} / n_items
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

INVALID = -1
DEFAULT_KS = (1, 5, 10, 20)


class RankingError(ValueError):
    """A ranked list or its targets are malformed (shape, duplicates, ids outside the catalog, empty)."""


# ---- validation ----------------------------------------------------------------------------
def check_topk(topk: np.ndarray, targets: np.ndarray | None = None, n_items: int | None = None, k: int | None = None) -> np.ndarray:
    """Validate a ranked-list matrix; returns it as int64. Raises :class:`RankingError` naming the problem."""
    topk = np.asarray(topk)
    if topk.ndim != 2:
        raise RankingError(f"topk must be a 2-D [n, K] matrix of item ids, got shape {topk.shape}")
    if topk.shape[0] == 0:
        raise RankingError("empty test set: no samples to evaluate")
    if topk.shape[1] == 0:
        raise RankingError("topk has no ranked items per sample (K = 0)")
    if not np.issubdtype(topk.dtype, np.integer):
        raise RankingError(f"topk must hold integer item ids, got dtype {topk.dtype}")
    topk = topk.astype(np.int64, copy=False)
    if targets is not None:
        targets = np.asarray(targets)
        if targets.ndim != 1 or targets.shape[0] != topk.shape[0]:
            raise RankingError(f"topk {topk.shape} and targets {targets.shape} do not match")
    if k is not None:
        if k < 1:
            raise RankingError(f"K must be >= 1, got {k}")
        if k > topk.shape[1]:
            raise RankingError(f"K={k} is larger than the {topk.shape[1]} ranked items per sample")
    if topk.min() < INVALID:
        bad = int(topk.min())
        raise RankingError(f"topk holds id {bad}: ids must be in [0, n_items) or {INVALID} for an invalid output")
    if n_items is not None:
        if topk.max() >= n_items:
            raise RankingError(f"topk holds id {int(topk.max())} outside the catalog of {n_items} items")
        if targets is not None and (targets.min() < 0 or targets.max() >= n_items):
            raise RankingError(f"targets outside the catalog [0, {n_items})")
    # duplicates among valid ids in a row: sort each row, compare neighbours
    s = np.sort(topk, axis=1)
    dup = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] != INVALID)
    if dup.any():
        row = int(np.flatnonzero(dup.any(axis=1))[0])
        item = int(s[row, 1:][dup[row]][0])
        raise RankingError(f"ranked list of sample {row} repeats item {item} ({int(dup.any(axis=1).sum())} rows with duplicates)")
    return topk


def _hit_rank(topk: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """0-based rank of the target within the first k slots, or -1."""
    topk = np.asarray(topk)
    targets = np.asarray(targets)
    if topk.ndim != 2 or targets.ndim != 1 or topk.shape[0] != targets.shape[0]:
        raise RankingError(f"topk {topk.shape} and targets {targets.shape} do not match")
    if topk.shape[0] == 0:
        raise RankingError("empty test set: no samples to evaluate")
    if k < 1 or k > topk.shape[1]:
        raise RankingError(f"K={k} is larger than the {topk.shape[1]} ranked items per sample" if k >= 1 else f"K must be >= 1, got {k}")
    hits = topk[:, :k] == targets[:, None]
    return np.where(hits.any(axis=1), hits.argmax(axis=1), -1)


# ---- accuracy ------------------------------------------------------------------------------
def hit_rate_at_k(topk: np.ndarray, targets: np.ndarray, k: int) -> float:
    """HR@K = 1/n Σ_u 1[target_u in topk_u[:K]]."""
    return float((_hit_rank(topk, targets, k) >= 0).mean())


def ndcg_at_k(topk: np.ndarray, targets: np.ndarray, k: int) -> float:
    """NDCG@K = 1/n Σ_u 1[rank_u < K] / log2(rank_u + 2)."""
    return float(_ndcg_per_sample(_hit_rank(topk, targets, k)).mean())


def _ndcg_per_sample(rank: np.ndarray) -> np.ndarray:
    return np.where(rank >= 0, 1.0 / np.log2(rank.clip(min=0) + 2.0), 0.0)


# ---- popularity groups ---------------------------------------------------------------------
def popularity_order(train_counts: np.ndarray) -> np.ndarray:
    """Item indices by training count, descending; ties by ascending index (stable)."""
    counts = np.asarray(train_counts)
    return np.argsort(-counts, kind="stable")


def popularity_groups(train_counts: np.ndarray, n_groups: int = 5) -> np.ndarray:
    """Group id per item (int64 ``[n_items]``): 0 = most popular, ``n_groups - 1`` = least.

    Items sorted by :func:`popularity_order` are cut into ``n_groups`` groups of equal item count
    (sizes differ by at most one, larger groups first, as ``np.array_split``).
    """
    counts = _check_counts(train_counts)
    if not 1 <= n_groups <= counts.size:
        raise RankingError(f"n_groups must be in [1, {counts.size}] (the number of items), got {n_groups}")
    groups = np.empty(counts.size, dtype=np.int64)
    for g, idx in enumerate(np.array_split(popularity_order(counts), n_groups)):
        groups[idx] = g
    return groups


def head_items(train_counts: np.ndarray, head_fraction: float = 0.2) -> np.ndarray:
    """Boolean mask ``[n_items]``: the top ``ceil(head_fraction · n_items)`` items by training count."""
    counts = _check_counts(train_counts)
    if not 0.0 < head_fraction < 1.0:
        raise RankingError(f"head_fraction must be in (0, 1), got {head_fraction}")
    n_head = max(1, math.ceil(head_fraction * counts.size - 1e-9))
    mask = np.zeros(counts.size, dtype=bool)
    mask[popularity_order(counts)[:n_head]] = True
    return mask


def _check_counts(train_counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(train_counts)
    if counts.ndim != 1 or counts.size == 0:
        raise RankingError(f"train_counts must be a non-empty 1-D array, got shape {counts.shape}")
    if (counts < 0).any():
        raise RankingError("train_counts must be non-negative")
    return counts


def group_exposure(topk: np.ndarray, groups: np.ndarray, k: int, n_groups: int | None = None) -> np.ndarray:
    """E_g@K: share of the valid top-K slots whose item is in group g (float ``[G]``, sums to 1)."""
    slots = np.asarray(topk)[:, :k].ravel()
    slots = slots[slots != INVALID]
    G = int(n_groups if n_groups is not None else groups.max() + 1)
    if slots.size == 0:
        raise RankingError(f"no valid item in any top-{k} list: exposure is undefined")
    return np.bincount(groups[slots], minlength=G).astype(np.float64) / slots.size


def history_share(train_counts: np.ndarray, groups: np.ndarray, n_groups: int | None = None) -> np.ndarray:
    """H_g: share of training interactions on group g (float ``[G]``)."""
    counts = np.asarray(train_counts, dtype=np.float64)
    if counts.sum() <= 0:
        raise RankingError("train_counts sum to 0: history shares are undefined")
    G = int(n_groups if n_groups is not None else groups.max() + 1)
    return np.bincount(groups, weights=counts, minlength=G) / counts.sum()


def group_unfairness(topk: np.ndarray, train_counts: np.ndarray, k: int, n_groups: int = 5) -> dict[str, Any]:
    """GU_g@K = E_g@K − H_g; MGU@K = mean_g |GU_g|; DGU@K = max_g GU_g − min_g GU_g."""
    topk = check_topk(topk, n_items=len(train_counts), k=k)
    groups = popularity_groups(train_counts, n_groups)
    e = group_exposure(topk, groups, k, n_groups)
    h = history_share(train_counts, groups, n_groups)
    gu = e - h
    return {"exposure": e, "history": h, "gu": gu, "mgu": float(np.abs(gu).mean()), "dgu": float(gu.max() - gu.min())}


def mgu_at_k(topk: np.ndarray, train_counts: np.ndarray, k: int, n_groups: int = 5) -> float:
    """MGU@K = 1/G Σ_g |E_g@K − H_g|."""
    return group_unfairness(topk, train_counts, k, n_groups)["mgu"]


def dgu_at_k(topk: np.ndarray, train_counts: np.ndarray, k: int, n_groups: int = 5) -> float:
    """DGU@K = max_g (E_g@K − H_g) − min_g (E_g@K − H_g)."""
    return group_unfairness(topk, train_counts, k, n_groups)["dgu"]


# ---- diversity -----------------------------------------------------------------------------
def divr_at_k(topk: np.ndarray, k: int) -> float:
    """DivR@K = #distinct valid items in the top-K lists / (n·K)."""
    topk = check_topk(topk, k=k)
    slots = topk[:, :k].ravel()
    return float(np.unique(slots[slots != INVALID]).size / slots.size)


def orr_at_k(topk: np.ndarray, k: int, n_top: int = 5) -> float:
    """ORR@K = #slots taken by the ``n_top`` (5) most recommended items / (n·K)."""
    topk = check_topk(topk, k=k)
    slots = topk[:, :k].ravel()
    valid = slots[slots != INVALID]
    if valid.size == 0:
        return 0.0
    freq = np.bincount(valid)
    top = np.sort(freq)[::-1][:n_top]
    return float(top.sum() / slots.size)


def coverage_at_k(topk: np.ndarray, n_items: int, k: int) -> float:
    """coverage@K = #distinct valid items in the top-K lists / n_items."""
    topk = check_topk(topk, n_items=n_items, k=k)
    slots = topk[:, :k].ravel()
    return float(np.unique(slots[slots != INVALID]).size / n_items)


def invalid_rate(topk: np.ndarray, k: int | None = None) -> float:
    """invalid@K = #slots holding INVALID (-1) among the first K / (n·K)."""
    topk = check_topk(topk, k=k)
    k = topk.shape[1] if k is None else k
    return float((topk[:, :k] == INVALID).mean())


def head_tail_accuracy(topk: np.ndarray, targets: np.ndarray, train_counts: np.ndarray, k: int, head_fraction: float = 0.2) -> dict[str, Any]:
    """HR@K and NDCG@K over the samples whose target is a head (resp. tail) item.

    A group with no test sample gets ``None`` (never NaN) and ``n_head``/``n_tail`` say why.
    """
    head = head_items(train_counts, head_fraction)
    rank = _hit_rank(topk, np.asarray(targets), k)
    is_head = head[np.asarray(targets)]
    out: dict[str, Any] = {}
    for name, sel in (("head", is_head), ("tail", ~is_head)):
        n = int(sel.sum())
        out[f"n_{name}"] = n
        out[f"{name}_hr"] = float((rank[sel] >= 0).mean()) if n else None
        out[f"{name}_ndcg"] = float(_ndcg_per_sample(rank[sel]).mean()) if n else None
    return out


# ---- one entry point -----------------------------------------------------------------------
def evaluate_topk(
    topk: np.ndarray,
    targets: np.ndarray,
    train_counts: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    n_groups: int = 5,
    head_fraction: float = 0.2,
    orr_top: int = 5,
) -> dict[str, Any]:
    """Every metric of this module for every K, as a flat dict of floats (``"HR@10"``, ``"MGU@10"``...).

    Keys per K: HR, NDCG, MGU, DGU, DivR, ORR, HR_head, NDCG_head, HR_tail, NDCG_tail, invalid,
    coverage; plus ``GU@K`` (list per group), ``n``, ``n_head``, ``n_tail``, ``n_items``.
    Raises :class:`RankingError` on malformed input (see :func:`check_topk`).
    """
    train_counts = _check_counts(train_counts)
    n_items = train_counts.size
    if not ks:
        raise RankingError("no cutoffs K given")
    for k in ks:
        if k < 1:
            raise RankingError(f"K must be >= 1, got {k}")
    targets = np.asarray(targets)
    topk = check_topk(topk, targets, n_items=n_items, k=max(ks))
    groups = popularity_groups(train_counts, n_groups)
    hist = history_share(train_counts, groups, n_groups)
    head = head_items(train_counts, head_fraction)
    is_head = head[targets]
    out: dict[str, Any] = {"n": int(topk.shape[0]), "n_items": int(n_items), "n_head": int(is_head.sum()), "n_tail": int((~is_head).sum())}
    for k in sorted(ks):
        rank = _hit_rank(topk, targets, k)
        hit = rank >= 0
        ndcg = _ndcg_per_sample(rank)
        out[f"HR@{k}"] = float(hit.mean())
        out[f"NDCG@{k}"] = float(ndcg.mean())
        slots = topk[:, :k].ravel()
        valid = slots[slots != INVALID]
        if valid.size:
            e = np.bincount(groups[valid], minlength=n_groups) / valid.size
            gu = e - hist
            out[f"MGU@{k}"] = float(np.abs(gu).mean())
            out[f"DGU@{k}"] = float(gu.max() - gu.min())
            out[f"GU@{k}"] = [float(x) for x in gu]
            out[f"exposure@{k}"] = [float(x) for x in e]
            freq = np.bincount(valid, minlength=n_items)
            distinct = int((freq > 0).sum())
            out[f"ORR@{k}"] = float(np.sort(freq)[::-1][:orr_top].sum() / slots.size)
        else:  # every slot invalid: no exposure at all
            out[f"MGU@{k}"] = out[f"DGU@{k}"] = None
            out[f"GU@{k}"] = out[f"exposure@{k}"] = None
            distinct = 0
            out[f"ORR@{k}"] = 0.0
        out[f"DivR@{k}"] = float(distinct / slots.size)
        out[f"coverage@{k}"] = float(distinct / n_items)
        out[f"invalid@{k}"] = float((slots == INVALID).mean())
        for name, sel in (("head", is_head), ("tail", ~is_head)):
            n = int(sel.sum())
            out[f"HR_{name}@{k}"] = float(hit[sel].mean()) if n else None
            out[f"NDCG_{name}@{k}"] = float(ndcg[sel].mean()) if n else None
    out["history_share"] = [float(x) for x in hist]
    return out
