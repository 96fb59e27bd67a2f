"""Item features and per-level residuals the split clusters on.

CRAB clusters a token's children by the *mean residual* of their items at the token's level
(Eq. 6): ``r_i^l = x_i - sum_{j < l} C_j[sid_i[j]]``, the vector RQ quantized at level ``l``.

Features ``x_i`` (first that applies, recorded as ``source``):

1. ``embeddings`` passed in (float32 ``[n_items, d]``, e.g. the tokenizer's item embeddings);
2. ``codewords``: the codebook's own reconstruction ``x_i = sum_l C_l[sid_i[l]]`` when every
   semantic level has codewords (then at the last level all items of a token share one residual,
   so the last-level split is driven by balance alone: pass embeddings for semantic splits);
3. ``text``: a cheap deterministic text embedding of the dataset's item text — TF-IDF
   (sublinear tf, unigrams seen in >= 2 items, title / brand / categories / first 300 characters of the
   description) reduced by truncated SVD (``dim`` components, fixed ``random_state``), rows
   L2-normalized. No model download, ~1 s for Industrial.

Codewords ``C_j`` subtracted: the codebook's own when present with the feature dimension, else the
RQ-KMeans definition recomputed from the features: ``C_j[t]`` = mean of ``r^j`` over items whose
level-``j`` token is ``t``.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import scipy.sparse as sp


def text_embeddings(item_text: list[dict[str, str]], dim: int = 64, seed: int = 0) -> np.ndarray:
    """TF-IDF + truncated SVD of item text, L2-normalized rows, float32 ``[n_items, <=dim]``."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    docs = []
    for rec in item_text:
        rec = rec or {}
        parts = [str(rec.get(k) or "") for k in ("title", "brand", "categories")]
        parts.append(str(rec.get("description") or "")[:300])
        docs.append(" ".join(p for p in parts if p).strip() or "<empty>")
    vec = TfidfVectorizer(sublinear_tf=True, min_df=2, max_features=20_000, dtype=np.float32)
    X = vec.fit_transform(docs)
    k = int(min(dim, X.shape[1] - 1, X.shape[0] - 1))
    if k < 1:
        out = X.toarray().astype(np.float32)
    else:
        out = TruncatedSVD(n_components=k, random_state=seed, algorithm="randomized", n_iter=4).fit_transform(X).astype(np.float32)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norm, 1e-12)


def token_means(sids_col: np.ndarray, r: np.ndarray, size: int) -> np.ndarray:
    """Mean of ``r`` per token (zeros for unused tokens), float32 ``[size, d]``."""
    n = sids_col.size
    M = sp.csr_matrix((np.ones(n, dtype=np.float32), (sids_col.astype(np.int64), np.arange(n))), shape=(size, n))
    cnt = np.asarray(M.sum(axis=1)).ravel()
    sums = np.asarray(M @ r)
    return (sums / np.maximum(cnt, 1)[:, None]).astype(np.float32)


def group_sums(keys: np.ndarray, r: np.ndarray, n_groups: int) -> np.ndarray:
    """Sum of rows of ``r`` per group index, float64 ``[n_groups, d]``."""
    n = keys.size
    M = sp.csr_matrix((np.ones(n, dtype=np.float64), (keys.astype(np.int64), np.arange(n))), shape=(n_groups, n))
    return np.asarray(M @ r.astype(np.float64, copy=False))


def item_features(
    sids: np.ndarray,
    semantic_levels: int,
    codewords: dict[int, np.ndarray],
    embeddings: np.ndarray | None = None,
    item_text: list[dict[str, str]] | None = None,
    text_dim: int = 64,
    seed: int = 0,
) -> tuple[np.ndarray, str]:
    """``(features float32 [n_items, d], source)`` by the priority in the module docstring."""
    n = sids.shape[0]
    if embeddings is not None:
        emb = np.asarray(embeddings)
        if emb.ndim != 2 or emb.shape[0] != n:
            raise ValueError(f"item embeddings have shape {emb.shape}, expected [{n}, d]")
        if not np.issubdtype(emb.dtype, np.floating) or not np.isfinite(emb).all():
            raise ValueError("item embeddings must be finite floats")
        return emb.astype(np.float32, copy=False), "embeddings"
    if semantic_levels > 0 and all(lvl in codewords for lvl in range(semantic_levels)):
        d = codewords[0].shape[1]
        x = np.zeros((n, d), dtype=np.float32)
        for lvl in range(semantic_levels):
            x += codewords[lvl][sids[:, lvl]]
        return x, "codewords"
    if item_text is None:
        raise ValueError("the codebook has no codewords and no item embeddings were given: pass embeddings or the dataset's item text")
    if len(item_text) != n:
        raise ValueError(f"{len(item_text)} item texts for {n} items")
    return text_embeddings(item_text, dim=text_dim, seed=seed), "text"


def level_residuals(
    sids: np.ndarray, sizes: list[int], features: np.ndarray, codewords: dict[int, np.ndarray], semantic_levels: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(level, residual float32 [n_items, d], codewords_used float32 [size, d])`` for each
    semantic level; the residual array is reused in place between levels (copy what you keep)."""
    r = np.array(features, dtype=np.float32, copy=True)
    d = r.shape[1]
    for lvl in range(semantic_levels):
        cw = codewords.get(lvl)
        if cw is None or cw.shape[1] != d:
            cw = token_means(sids[:, lvl], r, sizes[lvl])
        yield lvl, r, cw
        r -= cw[sids[:, lvl]]
