"""Collaborative user retrieval: user vectors in a faiss index, searched by cosine similarity.

User vectors (``retrieval.user_vectors``): ``item-mean`` (mean of the history's item embeddings) or
``sasrec`` (GenPlugin §3.3: a trained SASRec's user state ``g_u``, the output at the history's last
position).

Vectors are L2-normalized, so inner product = cosine. ``flat`` (exact, the default) is
``IndexFlatIP``; for large user bases ``hnsw`` (``IndexHNSWFlat`` with the inner-product metric)
and ``ivf`` (``IndexIVFFlat``) trade exactness for speed. Indexes are stored as the byte array
``faiss.serialize_index`` returns (a plain uint8 numpy array, no pickle).
"""

from __future__ import annotations

from typing import Sequence

import faiss
import numpy as np


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-d array of vectors, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("vectors contain NaN or inf")
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def mean_item_vectors(histories: Sequence[Sequence[int]], item_vectors: np.ndarray) -> np.ndarray:
    """A user's vector = mean of the (normalized) vectors of the items in the user's history;
    an empty history gives the zero vector (which matches nothing)."""
    iv = normalize(item_vectors)
    out = np.zeros((len(histories), iv.shape[1]), dtype=np.float32)
    for u, h in enumerate(histories):
        if len(h):
            out[u] = iv[np.asarray(h, dtype=np.int64)].mean(axis=0)
    return out


def sasrec_user_vectors(histories: Sequence[Sequence[int]], model) -> np.ndarray:
    """A user's vector = SASRec's user state ``g_u`` (the output at the last position of the history,
    :meth:`~components.evaluation.baselines.sasrec.SASRec.encode`, eval mode); an empty history
    gives the zero vector (which matches nothing)."""
    out = np.zeros((len(histories), model.config.d_model), dtype=np.float32)
    live = [u for u, h in enumerate(histories) if len(h)]
    if live:
        out[live] = model.encode([list(histories[u]) for u in live])
    return out


def build_faiss(vectors: np.ndarray, kind: str = "flat", hnsw_m: int = 32, ivf_nlist: int = 0, ivf_nprobe: int = 8, seed: int = 0) -> faiss.Index:
    x = normalize(vectors)
    d = x.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    elif kind == "ivf":
        nlist = ivf_nlist or max(1, int(np.sqrt(len(x))))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(x)
        index.nprobe = min(ivf_nprobe, nlist)
    else:
        raise ValueError(f"unknown faiss index kind {kind!r} (flat, hnsw, ivf)")
    index.add(x)
    return index


def serialize(index: faiss.Index) -> np.ndarray:
    return np.asarray(faiss.serialize_index(index), dtype=np.uint8)


def deserialize(blob: np.ndarray) -> faiss.Index:
    return faiss.deserialize_index(np.ascontiguousarray(blob, dtype=np.uint8))
