"""Content-aware user retrieval: BM25 over user pseudo-documents.

A user's pseudo-document is the concatenated text of the items in the user's *training* history
(only training interactions are indexed, so nothing of a valid/test target leaks in).

Scoring keeps ``rank_bm25.BM25Okapi``'s semantics exactly (its idf with the ε floor for negative
idfs, its ``k1``/``b`` term saturation, and query terms counted with multiplicity)::

    score(q, d) = Σ_{t ∈ q} idf(t) · tf(t, d) · (k1 + 1) / (tf(t, d) + k1 · (1 − b + b · |d| / avgdl))

``rank_bm25`` builds the vocabulary, document frequencies and idf; the per-document term weights
are then laid out once as a sparse matrix ``W [n_docs, n_terms]`` so that a query is one sparse
mat-vec ``W @ (count(t) · idf(t))`` instead of a Python loop over terms and documents. A test
shows the scores equal ``BM25Okapi.get_scores``.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Sequence

import numpy as np
import scipy.sparse as sp
from rank_bm25 import BM25Okapi

TOKEN_RE = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    return [t for t in TOKEN_RE.findall(text.lower()) if len(t) > 1]


def item_tokens(item_text: Sequence[dict[str, str]], fields: Sequence[str]) -> list[list[str]]:
    return [tokenize(" ".join(rec.get(f, "") for f in fields)) for rec in item_text]


def user_documents(histories: Sequence[Sequence[int]], tokens_per_item: Sequence[list[str]]) -> list[list[str]]:
    return [[tok for i in hist for tok in tokens_per_item[i]] for hist in histories]


class SparseBM25:
    """BM25Okapi scores as one sparse mat-vec per query (or one sparse mat-mat per batch)."""

    def __init__(self, vocab: dict[str, int], idf: np.ndarray, weights: sp.csr_matrix, k1: float, b: float):
        self.vocab = vocab
        self.idf = np.asarray(idf, dtype=np.float64)
        self.weights = weights.tocsr()
        self.k1 = k1
        self.b = b

    @classmethod
    def fit(cls, corpus: Sequence[list[str]], k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25) -> "SparseBM25":
        if len(corpus) == 0:
            raise ValueError("BM25 needs at least one document")
        if not any(corpus):
            raise ValueError("every BM25 document is empty: no item text to index")
        lib = BM25Okapi(corpus, k1=k1, b=b, epsilon=epsilon)
        vocab = {t: n for n, t in enumerate(sorted(lib.idf))}
        idf = np.array([lib.idf[t] for t in sorted(lib.idf)], dtype=np.float64)
        rows, cols, vals = [], [], []
        doc_len = np.asarray(lib.doc_len, dtype=np.float64)
        norm = k1 * (1 - b + b * doc_len / lib.avgdl)
        for d, freqs in enumerate(lib.doc_freqs):
            for t, tf in freqs.items():
                rows.append(d)
                cols.append(vocab[t])
                vals.append(tf * (k1 + 1) / (tf + norm[d]))
        w = sp.csr_matrix((vals, (rows, cols)), shape=(len(corpus), len(vocab)), dtype=np.float64)
        return cls(vocab, idf, w, k1, b)

    @property
    def n_docs(self) -> int:
        return self.weights.shape[0]

    def query_vector(self, query: Iterable[str]) -> sp.csr_matrix:
        counts = Counter(t for t in query if t in self.vocab)
        cols = np.fromiter((self.vocab[t] for t in counts), dtype=np.int64, count=len(counts))
        vals = np.fromiter((c for c in counts.values()), dtype=np.float64, count=len(counts)) * self.idf[cols]
        return sp.csr_matrix((vals, (np.zeros_like(cols), cols)), shape=(1, len(self.vocab)))

    def scores(self, query: Iterable[str]) -> np.ndarray:
        return np.asarray((self.weights @ self.query_vector(query).T).todense()).ravel()

    def batch_scores(self, queries: Sequence[Iterable[str]]) -> np.ndarray:
        q = sp.vstack([self.query_vector(x) for x in queries]) if queries else sp.csr_matrix((0, len(self.vocab)))
        return np.asarray((q @ self.weights.T).todense())

    # ---- (de)serialization as plain arrays -------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        w = self.weights
        return {
            "bm25_data": w.data,
            "bm25_indices": w.indices.astype(np.int64),
            "bm25_indptr": w.indptr.astype(np.int64),
            "bm25_shape": np.asarray(w.shape, dtype=np.int64),
            "bm25_idf": self.idf,
            "bm25_k1_b": np.asarray([self.k1, self.b]),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], vocab_list: list[str]) -> "SparseBM25":
        shape = tuple(int(x) for x in arrays["bm25_shape"])
        w = sp.csr_matrix((arrays["bm25_data"], arrays["bm25_indices"], arrays["bm25_indptr"]), shape=shape)
        k1, b = (float(x) for x in arrays["bm25_k1_b"])
        if len(vocab_list) != shape[1] or len(arrays["bm25_idf"]) != shape[1]:
            raise ValueError("BM25 arrays and vocabulary disagree in size")
        return cls({t: n for n, t in enumerate(vocab_list)}, arrays["bm25_idf"], w, k1, b)
