"""Content-aware user retrieval: BM25 over user pseudo-documents.

A user's pseudo-document is the concatenated text of the items in the user's *training* history
(only training interactions are indexed, so nothing of a valid/test target leaks in).

Scoring keeps ``rank_bm25.BM25Okapi``'s semantics exactly (its idf with the ε floor for negative
idfs, its ``k1``/``b`` term saturation, and query terms counted with multiplicity)::

    score(q, d) = Σ_{t ∈ q} idf(t) · tf(t, d) · (k1 + 1) / (tf(t, d) + k1 · (1 − b + b · |d| / avgdl))

The vocabulary, document frequencies, idf (``rank_bm25``'s formula and ε floor) and the
per-document term weights are laid out once as a sparse matrix ``W [n_docs, n_terms]``, built
``chunk`` documents at a time (:meth:`SparseBM25.fit`; bounded memory at 10^6+ users), so that a
query is one sparse mat-vec ``W @ (count(t) · idf(t))`` instead of a Python loop over terms and
documents. Tests show the scores equal ``BM25Okapi.get_scores`` and the matrix equals the one the
former ``rank_bm25``-based fit (:meth:`SparseBM25.fit_reference`) builds.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Iterable, Sequence

import numpy as np
import scipy.sparse as sp
from rank_bm25 import BM25Okapi

TOKEN_RE = re.compile(r"[a-z0-9]+")
FIT_CHUNK = 100_000  # documents per chunk of SparseBM25.fit


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
    def fit(cls, corpus: Sequence[list[str]], k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25, chunk: int = FIT_CHUNK) -> "SparseBM25":
        """The weight matrix, built ``chunk`` documents at a time (bounded memory at 10^6+ users).

        Pass 1, per chunk: term ids (first-appearance order, as ``rank_bm25`` fills its ``nd``),
        per-document (term, tf) pairs as int32 arrays (one ``np.unique`` per chunk), document
        frequencies and lengths. Then the *global* idf (``rank_bm25``'s formula and ε floor, summed
        in the same order, so equal to the last bit) and ``avgdl``. Pass 2, per chunk: BM25 term
        weights in sorted-vocabulary column order, appended to the CSR arrays. No per-document
        dicts and no Python lists of triples (the old :meth:`fit_reference` held both); a test
        checks the two give identical matrices. ``corpus`` needs ``len`` and slicing.
        """
        n = len(corpus)
        if n == 0:
            raise ValueError("BM25 needs at least one document")
        if chunk < 1:
            raise ValueError(f"chunk must be ≥ 1 (got {chunk})")
        ids: dict[str, int] = {}
        nd = np.zeros(1024, dtype=np.int64)
        doc_len = np.zeros(n, dtype=np.int64)
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = []
        for lo in range(0, n, chunk):
            docs = corpus[lo : lo + chunk]
            lens = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
            flat = np.fromiter((ids.setdefault(t, len(ids)) for d in docs for t in d), dtype=np.int64, count=int(lens.sum()))
            V = len(ids)
            key = np.repeat(np.arange(len(docs), dtype=np.int64), lens) * max(V, 1) + flat
            uk, tf = np.unique(key, return_counts=True)  # sorted by (doc, term id)
            row, term = np.divmod(uk, max(V, 1))
            if V > len(nd):
                nd = np.concatenate([nd, np.zeros(max(V, 2 * len(nd)) - len(nd), dtype=np.int64)])
            nd[:V] += np.bincount(term, minlength=V)
            doc_len[lo : lo + len(docs)] = lens
            parts.append((np.bincount(row, minlength=len(docs)), term.astype(np.int32), tf.astype(np.int32)))
        total = int(doc_len.sum())
        if total == 0:
            raise ValueError("every BM25 document is empty: no item text to index")
        V = len(ids)
        # idf exactly as rank_bm25.BM25Okapi._calc_idf (same operations, same summation order)
        idf_first = np.empty(V, dtype=np.float64)
        idf_sum = 0
        for j, f in enumerate(nd[:V].tolist()):
            v = math.log(n - f + 0.5) - math.log(f + 0.5)
            idf_first[j] = v
            idf_sum += v
        idf_first[idf_first < 0] = epsilon * (idf_sum / V)
        terms = list(ids)
        del ids
        order = sorted(range(V), key=terms.__getitem__)
        vocab = {terms[j]: i for i, j in enumerate(order)}
        remap = np.empty(V, dtype=np.int64)
        remap[np.asarray(order, dtype=np.int64)] = np.arange(V)
        avgdl = total / n
        norm = k1 * (1 - b + b * doc_len.astype(np.float64) / avgdl)
        nnz = sum(len(p_[1]) for p_ in parts if p_ is not None)
        idx_t = np.int32 if max(nnz, V) < 2**31 else np.int64  # one index dtype: scipy would upcast a mix
        indptr = np.zeros(n + 1, dtype=idx_t)
        data_a = np.empty(nnz, dtype=np.float64)  # filled in place: no per-chunk lists to concatenate
        ind_a = np.empty(nnz, dtype=idx_t)
        at = 0
        for c, lo in enumerate(range(0, n, chunk)):
            counts, term, tf = parts[c]
            parts[c] = None
            row = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
            col = remap[term]
            srt = np.argsort(row * V + col, kind="stable")
            row, col, tf = row[srt], col[srt], tf[srt]
            data_a[at : at + len(tf)] = tf * (k1 + 1) / (tf + norm[lo + row])
            ind_a[at : at + len(tf)] = col
            at += len(tf)
            indptr[lo + 1 : lo + len(counts) + 1] = counts
        np.cumsum(indptr, out=indptr)
        w = sp.csr_matrix((data_a, ind_a, indptr), shape=(n, V))
        return cls(vocab, idf_first[np.asarray(order, dtype=np.int64)], w, k1, b)

    @classmethod
    def fit_reference(cls, corpus: Sequence[list[str]], k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25) -> "SparseBM25":
        """The former, unchunked fit on top of ``rank_bm25.BM25Okapi`` (per-document dicts and
        Python lists of triples): kept as the reference :meth:`fit` is tested against."""
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
        """``W @ q`` with ``q`` dense (one CSR mat-vec over ``W``'s nonzeros; a sparse ``q`` would
        go through a sparse x sparse product, several times slower at 10^6 documents)."""
        qv = self.query_vector(query)
        q = np.zeros(len(self.vocab), dtype=np.float64)
        q[qv.indices] = qv.data
        return self.weights @ q

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
