"""Chunked SparseBM25.fit: identical to the former rank_bm25-based fit and to BM25Okapi, a
3-document corpus by hand, and approximate faiss indexes' recall against the exact one."""

from __future__ import annotations

import math

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from components.retrieval.bm25 import SparseBM25
from components.retrieval.vectors import build_faiss


def _corpus(n: int, seed: int = 0, vocab: int = 60) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    words = [f"w{i:02d}" for i in range(vocab)]
    p = 1.0 / np.arange(1, vocab + 1)
    p /= p.sum()
    docs = [[words[j] for j in rng.choice(vocab, int(rng.integers(0, 12)), p=p)] for _ in range(n)]
    docs[3] = []  # an empty document
    return docs


def _same(a: SparseBM25, b: SparseBM25) -> None:
    assert a.vocab == b.vocab
    np.testing.assert_array_equal(a.idf, b.idf)
    wa, wb = a.weights.copy(), b.weights.copy()
    wa.sort_indices()
    wb.sort_indices()
    assert wa.shape == wb.shape
    np.testing.assert_array_equal(wa.indptr, wb.indptr)
    np.testing.assert_array_equal(wa.indices, wb.indices)
    np.testing.assert_array_equal(wa.data, wb.data)  # bit for bit


@pytest.mark.parametrize("chunk", [1, 2, 7, 50, 10_000])
def test_chunked_fit_equals_reference_fit(chunk):
    docs = _corpus(203)
    ref = SparseBM25.fit_reference(docs, k1=1.2, b=0.6)
    ours = SparseBM25.fit(docs, k1=1.2, b=0.6, chunk=chunk)
    _same(ours, ref)
    lib = BM25Okapi(docs, k1=1.2, b=0.6)
    for q in (docs[0], docs[10] + docs[10][:2], ["w00", "nope", "w59"], []):
        np.testing.assert_allclose(ours.scores(q), lib.get_scores(q), rtol=1e-12, atol=1e-12)


def test_chunked_fit_indices_sorted_and_roundtrip():
    docs = _corpus(120, seed=2)
    m = SparseBM25.fit(docs, chunk=13)
    assert m.weights.has_sorted_indices
    vocab_list = [t for t, _ in sorted(m.vocab.items(), key=lambda kv: kv[1])]
    back = SparseBM25.from_arrays(m.to_arrays(), vocab_list)
    _same(back, m)


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_three_document_corpus_by_hand(chunk):
    # N = 3, |d| = 2, 3, 1, avgdl = 2; df: a 2, b 1, c 1, d 1.
    # idf(a) = ln(1.5/2.5) < 0 → ε·mean idf = 0.25 · (ln 0.6 + 3 ln(5/3)) / 4 = 0.125 ln(5/3)
    # idf(b) = idf(c) = idf(d) = ln(2.5/1.5) = ln(5/3)
    # norm(d) = 1.5 · (0.25 + 0.75 |d| / 2) = 1.5, 2.0625, 0.9375
    docs = [["a", "b"], ["a", "c", "c"], ["d"]]
    m = SparseBM25.fit(docs, chunk=chunk)
    L = math.log(5 / 3)
    np.testing.assert_allclose(m.idf, [0.125 * L, L, L, L], rtol=1e-12)
    want = [0.125 * L * 2.5 / 2.5, 0.125 * L * 2.5 / 3.0625 + L * 2 * 2.5 / 4.0625, 0.0]
    np.testing.assert_allclose(m.scores(["a", "c"]), want, rtol=1e-12)
    np.testing.assert_allclose(m.scores(["d", "d"]), [0, 0, 2 * L * 2.5 / 1.9375], rtol=1e-12)


def test_fit_rejects_empty():
    with pytest.raises(ValueError, match="at least one"):
        SparseBM25.fit([])
    with pytest.raises(ValueError, match="every BM25 document is empty"):
        SparseBM25.fit([[], []], chunk=1)


def test_approximate_indexes_recall_against_exact():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((50, 16)).astype(np.float32)
    x = centers[rng.integers(0, 50, 5000)] + 0.3 * rng.standard_normal((5000, 16)).astype(np.float32)
    q = x[:100] + 0.05 * rng.standard_normal((100, 16)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    _, exact = build_faiss(x, "flat").search(q, 10)
    for kind, kw in (("hnsw", {}), ("ivf", {"ivf_nprobe": 8})):
        _, got = build_faiss(x, kind, **kw).search(q, 20)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, got)])
        assert recall > 0.9, (kind, recall)
