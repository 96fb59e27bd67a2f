"""CRAB codebook rebalancing (Sec. 4.1): split over-popular tokens under the hierarchy constraint.

For every level ``l`` chosen for splitting (default: every semantic level):

1. Token popularity ``P_l(t)`` (Eq. 3) over the *input* codebook; the mean ``Pbar_l`` is taken over
   the level's used tokens (tokens carrying at least one item).
2. The top ``ceil(split_ratio * used_tokens)`` tokens by popularity (ties: lower id) are
   candidates; token ``t`` splits into ``n = min(ceil(P_l(t) / Pbar_l), max_splits, m_t^+)`` new
   tokens, ``m_t^+`` = its children with positive popularity; ``n < 2`` means no split.
3. The *children* of ``t`` are the groups of its items that share the level-``l+1`` token, i.e. the
   (``t``, child) pairs of Eq. 8 (for a strict tree, the child tokens themselves); at the last
   semantic level the children are the items. A child moves as a whole (the hard constraint:
   items sharing the level-``l+1`` token keep sharing the new level-``l`` token), so every finer
   token keeps all of its items. Children are assigned by the balance-regularized K-means of
   :mod:`components.rebalancer.regularized_kmeans` on their mean level-``l`` residuals
   (:mod:`components.rebalancer.residuals`), weight = item count, popularity = Eq. 8.
4. The most popular new token keeps the id ``t``; the others get fresh ids appended to the level
   (``sizes[l]`` grows by ``n - 1``), in increasing ``t`` order. ``token_origin[l][t']`` is the
   token of the *input* codebook that ``t'`` came from (identity for kept ids) — what the
   generator needs to initialize embeddings from the model trained on the input codebook.
   Where the input had codewords at ``l`` (same dimension as the features), a split token's new
   codeword rows are the centroids of their members' residuals; otherwise rows copy the origin's.

All levels are planned on the input codebook (children defined by its level ``l+1`` tokens), which
equals splitting top-down, so levels are independent. Splitting only changes level-``l`` values and
maps distinct input tokens to disjoint sets of new tokens, so SIDs stay unique and the popularity
of the other levels is unchanged; the total popularity of a level is conserved.

Collision-disambiguation level: a last level whose token is the item's rank among items sharing
the rest of the SID is not semantic; it is never split and is left as it is. ``semantic_levels``
says how many leading levels are semantic (auto-detected when ``None``, see
:func:`detect_semantic_levels`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from components.rebalancer.popularity import level_stats, token_item_counts, token_popularity
from components.rebalancer.regularized_kmeans import split_children
from components.rebalancer.residuals import group_sums, item_features, level_residuals
from components.tokenizer.codebook import Codebook

log = logging.getLogger(__name__)


class RebalanceError(ValueError):
    """Bad input to the rebalancer (params, popularity, embeddings, codebook structure)."""


@dataclass
class TokenSplit:
    """How one token was split."""

    level: int
    token: int
    popularity: int
    n_children: int
    new_tokens: list[int]  # new_tokens[0] == token (kept id)
    new_popularity: list[int]
    objective: float
    balance: float
    solver: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RebalanceResult:
    codebook: Codebook
    splits: list[TokenSplit]
    before: list[dict[str, Any]]
    after: list[dict[str, Any]]
    popularity_before: list[np.ndarray]
    popularity_after: list[np.ndarray]
    feature_source: str
    semantic_levels: int
    levels: list[int]
    params: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-able before/after statistics (also stored as the artifact's ``stats.json``)."""
        per_level = []
        for b, a in zip(self.before, self.after):
            lvl = b["level"]
            per_level.append(
                {
                    "level": lvl,
                    "split": lvl in self.levels,
                    "n_split_tokens": sum(1 for s in self.splits if s.level == lvl),
                    "n_new_tokens": sum(len(s.new_tokens) - 1 for s in self.splits if s.level == lvl),
                    "before": {k: v for k, v in b.items() if k != "level"},
                    "after": {k: v for k, v in a.items() if k != "level"},
                }
            )
        return {
            "method": "crab",
            "semantic_levels": self.semantic_levels,
            "split_levels": self.levels,
            "feature_source": self.feature_source,
            "params": self.params,
            "levels": per_level,
            "splits": [s.as_dict() for s in self.splits],
            "popularity_before": [p.tolist() for p in self.popularity_before],
            "popularity_after": [p.tolist() for p in self.popularity_after],
            "collisions": count_collisions(self.codebook.sids, self.codebook.sizes),
        }


def count_collisions(sids: np.ndarray, sizes: list[int]) -> int:
    """Items whose full SID another item also has (= :meth:`Codebook.n_collisions`), via one int64
    key per row (a 1-D sort, much faster than ``np.unique(axis=0)`` on millions of rows)."""
    s = np.asarray(sids, dtype=np.int64)
    if float(np.prod([float(max(z, 1)) for z in sizes])) >= 2.0**62:
        return int(s.shape[0] - np.unique(s, axis=0).shape[0])
    key = np.zeros(s.shape[0], dtype=np.int64)
    for lvl, size in enumerate(sizes):
        key = key * int(max(size, 1)) + s[:, lvl]
    return int(s.shape[0] - np.unique(key).size)


def detect_semantic_levels(cb: Codebook) -> int:
    """How many leading levels are semantic (the rest: one collision-disambiguation level).

    ``cb.stats["semantic_levels"]`` wins when present. Otherwise the last level (of >= 3) is a
    disambiguation level when it has no codewords while level 0 has, or when, without codewords
    anywhere, its tokens are exactly ``0..g-1`` within every group of ``g`` items sharing the
    other levels (what collision handling writes) and most items' prefixes are unique."""
    if "semantic_levels" in (cb.stats or {}):
        return int(cb.stats["semantic_levels"])
    L = cb.n_levels
    if L < 3:
        return L
    if cb.codewords:
        return L - 1 if (0 in cb.codewords and (L - 1) not in cb.codewords) else L
    s = cb.sids.astype(np.int64)
    order = np.lexsort(tuple(s[:, j] for j in range(L - 1, -1, -1)))  # sort by prefix then last
    ss = s[order]
    new_group = np.ones(len(ss), dtype=bool)
    new_group[1:] = np.any(ss[1:, : L - 1] != ss[:-1, : L - 1], axis=1)
    starts = np.flatnonzero(new_group)
    rank = np.arange(len(ss)) - np.repeat(starts, np.diff(np.append(starts, len(ss))))
    singletons = np.mean(np.diff(np.append(starts, len(ss))) == 1) if len(ss) else 0.0
    return L - 1 if (np.array_equal(ss[:, L - 1], rank) and singletons >= 0.5) else L


def _validate(cb: Codebook, counts: np.ndarray, split_ratio: float, max_splits: int, lam: float, levels, semantic_levels: int) -> None:
    if not (0.0 < float(split_ratio) <= 1.0):
        raise RebalanceError(f"split_ratio must be in (0, 1], got {split_ratio}")
    if int(max_splits) != max_splits or max_splits < 2:
        raise RebalanceError(f"max_splits must be an integer >= 2 (a split makes at least 2 tokens), got {max_splits}")
    if lam < 0:
        raise RebalanceError(f"lam (balance weight) must be >= 0, got {lam}")
    if counts.ndim != 1 or counts.size != cb.n_items:
        raise RebalanceError(f"item popularity has shape {counts.shape}, the codebook has {cb.n_items} items")
    if np.any(counts < 0):
        raise RebalanceError("item popularity must be non-negative")
    if counts.sum() <= 0:
        raise RebalanceError("every item has zero training interactions: token popularity is all zero, nothing to rebalance")
    if not 1 <= semantic_levels <= cb.n_levels:
        raise RebalanceError(f"semantic_levels={semantic_levels} outside [1, {cb.n_levels}]")
    for lvl in levels:
        if not 0 <= lvl < semantic_levels:
            raise RebalanceError(f"split level {lvl} is not a semantic level (0..{semantic_levels - 1})")
    try:
        cb.validate(require_unique=False)
    except Exception as e:  # ArtifactCorrupted with its own message
        raise RebalanceError(f"invalid codebook: {e}") from e
    n_coll = count_collisions(cb.sids, cb.sizes)
    if n_coll:
        raise RebalanceError(f"invalid codebook: {n_coll} items share a full SID with another item")


def rebalance_codebook(
    codebook: Codebook,
    item_counts: np.ndarray,
    *,
    embeddings: np.ndarray | None = None,
    item_text: list[dict[str, str]] | None = None,
    split_ratio: float = 0.1,
    max_splits: int = 4,
    levels: list[int] | None = None,
    lam: float = 1.0,
    n_init: int = 4,
    semantic_levels: int | None = None,
    seed: int = 2024,
    exact_max: int = 20_000,
    text_dim: int = 64,
    progress: bool = False,
    blas_threads: int | None = 1,
) -> RebalanceResult:
    """Split over-popular tokens of ``codebook`` (module docstring); returns the new codebook and
    before/after statistics. ``item_counts``: training frequency per item (int ``[n_items]``).

    ``blas_threads`` caps BLAS/OpenMP threads while it runs (the work is many small matrix
    products, which multi-threaded BLAS slows down on a busy machine; ``None`` = no cap)."""
    import scipy.linalg  # noqa: F401  (load every BLAS before capping: threadpoolctl caps loaded ones)
    import sklearn.decomposition  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=blas_threads):
        return _rebalance(
            codebook, item_counts, embeddings=embeddings, item_text=item_text, split_ratio=split_ratio,
            max_splits=max_splits, levels=levels, lam=lam, n_init=n_init, semantic_levels=semantic_levels,
            seed=seed, exact_max=exact_max, text_dim=text_dim, progress=progress,
        )


def _rebalance(
    codebook: Codebook,
    item_counts: np.ndarray,
    *,
    embeddings: np.ndarray | None,
    item_text: list[dict[str, str]] | None,
    split_ratio: float,
    max_splits: int,
    levels: list[int] | None,
    lam: float,
    n_init: int,
    semantic_levels: int | None,
    seed: int,
    exact_max: int,
    text_dim: int,
    progress: bool,
) -> RebalanceResult:
    cb = codebook
    counts = np.asarray(item_counts)
    if not np.issubdtype(counts.dtype, np.number):
        raise RebalanceError("item popularity must be numeric")
    counts = counts.astype(np.int64)
    n_sem = detect_semantic_levels(cb) if semantic_levels is None else int(semantic_levels)
    levels = sorted(set(range(n_sem) if levels is None else (int(v) for v in levels)))
    _validate(cb, counts, split_ratio, max_splits, lam, levels, n_sem)

    sids = cb.sids.astype(np.int64)
    L = cb.n_levels
    feats, source = item_features(sids, n_sem, cb.codewords, embeddings, item_text, text_dim=text_dim, seed=seed)
    new_sids = cb.sids.copy()
    new_sizes = list(cb.sizes)
    token_origin = [list(range(s)) for s in cb.sizes]
    new_codewords = {lvl: cw.copy() for lvl, cw in cb.codewords.items()}
    splits: list[TokenSplit] = []

    for lvl, resid, cw_used in level_residuals(sids, cb.sizes, feats, cb.codewords, n_sem):
        if lvl not in levels:
            continue
        size = cb.sizes[lvl]
        col = sids[:, lvl]
        pop = token_popularity(sids, counts, lvl, size)
        used = token_item_counts(sids, lvl, size) > 0
        n_used = int(used.sum())
        total = int(pop.sum())
        n_top = max(1, math.ceil(split_ratio * n_used - 1e-9))
        ranked = np.lexsort((np.arange(size), -pop))
        ranked = ranked[used[ranked]][:n_top]
        # children units: (token, next-level token) pairs, or items at the last semantic level
        if lvl + 1 < n_sem:
            width = int(sids[:, lvl + 1].max()) + 1
            unit_key = col * width + sids[:, lvl + 1]
        else:
            unit_key = np.arange(len(col), dtype=np.int64)
        sel_mask = np.isin(col, ranked)
        sel_items = np.flatnonzero(sel_mask)
        if lvl + 1 < n_sem:
            ukeys, uinv = np.unique(unit_key[sel_items], return_inverse=True)
        else:  # every item is its own child
            ukeys, uinv = sel_items, np.arange(sel_items.size)
        u_token = np.zeros(ukeys.size, dtype=np.int64)
        u_token[uinv] = col[sel_items]
        u_w = np.bincount(uinv, minlength=ukeys.size).astype(np.float64)
        u_p = np.bincount(uinv, weights=counts[sel_items].astype(np.float64), minlength=ukeys.size)
        u_sum = group_sums(uinv, resid[sel_items], ukeys.size)
        u_x = u_sum / u_w[:, None]
        item_unit = np.full(len(col), -1, dtype=np.int64)
        item_unit[sel_items] = uinv
        next_id = size
        new_label_of_unit = np.full(ukeys.size, -1, dtype=np.int64)
        split_rows: dict[int, np.ndarray] = {}
        iterator = sorted(int(t) for t in ranked)
        for t in tqdm(iterator, desc=f"split level {lvl}", disable=not progress, leave=False):
            units = np.flatnonzero(u_token == t)
            n_pos = int((u_p[units] > 0).sum())
            n = min(math.ceil(int(pop[t]) * n_used / total - 1e-9), int(max_splits), n_pos)
            if n < 2:
                continue
            res = split_children(
                u_x[units], u_w[units], u_p[units], n, lam=lam, seed=[seed, lvl, t], n_init=n_init, exact_max=exact_max
            )
            ids = [t] + list(range(next_id, next_id + n - 1))
            next_id += n - 1
            new_label_of_unit[units] = np.asarray(ids)[res.labels]
            new_pop = [int(round(u_p[units][res.labels == k].sum())) for k in range(n)]
            splits.append(
                TokenSplit(lvl, t, int(pop[t]), int(units.size), ids, new_pop, float(res.objective), float(res.balance), res.solver)
            )
            for k, tok in enumerate(ids):
                members = units[res.labels == k]
                split_rows[tok] = u_sum[members].sum(0) / u_w[members].sum()
                if k > 0:
                    token_origin[lvl].append(t)
        moved = sel_items[new_label_of_unit[item_unit[sel_items]] >= 0]
        new_sids[moved, lvl] = new_label_of_unit[item_unit[moved]]
        new_sizes[lvl] = next_id
        if lvl in new_codewords:
            old = new_codewords[lvl]
            grown = np.concatenate([old, old[np.asarray(token_origin[lvl][size:], dtype=np.int64)]], axis=0) if next_id > size else old
            if old.shape[1] == feats.shape[1]:
                # residuals were taken against the same codewords: centroid of members' residuals
                for tok, row in split_rows.items():
                    grown[tok] = row
            new_codewords[lvl] = grown.astype(np.float32)
        log.info("level %d: %d tokens split into %d (vocabulary %d -> %d)", lvl, sum(s.level == lvl for s in splits),
                 sum(len(s.new_tokens) for s in splits if s.level == lvl), size, next_id)

    stats_extra = {"semantic_levels": n_sem}
    out = Codebook(
        sids=new_sids,
        sizes=new_sizes,
        item_ids=list(cb.item_ids),
        method=f"{cb.method}+crab",
        codewords=new_codewords,
        token_origin=token_origin,
        stats=stats_extra,
        dataset_ref=cb.dataset_ref,
        encoder_weights=cb.encoder_weights,  # splitting changes no codeword space: new items still encode
        encoder_config=cb.encoder_config,
    )
    pb = [token_popularity(sids, counts, lvl, cb.sizes[lvl]) for lvl in range(L)]
    pa = [token_popularity(new_sids, counts, lvl, new_sizes[lvl]) for lvl in range(L)]
    params = {
        "split_ratio": float(split_ratio),
        "max_splits": int(max_splits),
        "levels": levels,
        "lam": float(lam),
        "n_init": int(n_init),
        "seed": int(seed),
        "semantic_levels": n_sem,
    }
    result = RebalanceResult(
        codebook=out,
        splits=splits,
        before=level_stats(sids, counts, cb.sizes),
        after=level_stats(new_sids, counts, new_sizes),
        popularity_before=pb,
        popularity_after=pa,
        feature_source=source,
        semantic_levels=n_sem,
        levels=levels,
        params=params,
    )
    out.stats = {**stats_extra, **result.summary()}
    for key in ("encoder", "embedding_config", "flexcode"):  # how new items are embedded, and FlexCode's views
        if key in (cb.stats or {}):
            out.stats[key] = cb.stats[key]
    if "flexcode" in out.stats:  # a split token stays in its view: record the FlexCode token it descends from
        prev = out.stats["flexcode"].get("token_origin") or [list(range(s)) for s in cb.sizes]
        out.stats["flexcode"] = {**out.stats["flexcode"], "token_origin": [[int(prev[lvl][o]) for o in token_origin[lvl]] for lvl in range(L)]}
    return result
