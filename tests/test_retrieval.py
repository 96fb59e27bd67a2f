"""Retrieval: BM25 equals rank_bm25, faiss paths, merge rules, exclusions, artifact, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from components.registry import ArtifactIncompatible
from components.retrieval import RepresentationCache, RetrievalError, SparseBM25, UserRetriever
from components.retrieval.bm25 import item_tokens, user_documents
from components.retrieval.vectors import build_faiss, deserialize, serialize


@pytest.fixture(scope="module")
def item_vectors(industrial):
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = [" ".join(r.get(f, "") for f in ("title", "brand", "categories")) for r in industrial.item_text]
    x = TfidfVectorizer(min_df=2).fit_transform(texts)
    return TruncatedSVD(32, random_state=0).fit_transform(x).astype(np.float32)


@pytest.fixture(scope="module")
def retriever(industrial, item_vectors):
    return UserRetriever.build(industrial, item_vectors, dataset_ref="dataset/industrial@test")


def test_sparse_bm25_equals_rank_bm25(industrial):
    toks = item_tokens(industrial.item_text, ("title", "brand", "categories"))
    docs = user_documents(industrial.train_sequences()[:1500], toks)
    docs = [d for d in docs if d]
    lib = BM25Okapi(docs)
    ours = SparseBM25.fit(docs)
    for q in (docs[0], docs[7] + docs[7][:3], ["unknownword", docs[3][0]], []):
        np.testing.assert_allclose(ours.scores(q), lib.get_scores(q), rtol=1e-10, atol=1e-10)
    batch = ours.batch_scores([docs[0], docs[9]])
    np.testing.assert_allclose(batch[1], lib.get_scores(docs[9]), rtol=1e-10, atol=1e-10)


def test_neighbours_share_items_more_than_random(industrial, retriever):
    train = industrial.train_sequences()
    users = [u for u in range(industrial.n_users) if train[u]][::25]
    rng = np.random.default_rng(0)
    ours, rand = [], []
    for u in users:
        mine = set(train[u])
        nb = retriever.similar_users(user=u, z=20, v=10)
        assert len(nb) == 10 and u not in {n.user for n in nb}
        ours.append(np.mean([bool(mine & set(train[n.user])) for n in nb]))
        rand.append(np.mean([bool(mine & set(train[x])) for x in rng.choice(users, 10)]))
    assert np.mean(ours) > 5 * np.mean(rand)


def test_merge_rules(industrial, retriever):
    u = next(u for u, h in enumerate(industrial.train_sequences()) if len(h) >= 3)
    banned = retriever.banned(u, None)
    a = set(retriever.bm25_top(retriever._query(u, None)[1], 30, banned).tolist())
    c = set(retriever.cf_top(retriever.user_vectors[u], 30, banned).tolist())
    nb = retriever.similar_users(user=u, z=30, v=15)
    both = a & c
    kept = {n.user for n in nb}
    assert kept <= a | c
    assert min(len(both), 15) == len(kept & both)  # users found by both paths are kept first
    for n in nb:
        assert n.path == ("both" if n.user in both else "bm25" if n.user in a else "cf")
    scores = [n.score for n in nb if n.path != "both"]
    assert scores == sorted(scores, reverse=True)


def test_leakage_exclusion(industrial, retriever):
    u = next(u for u, h in enumerate(industrial.train_sequences()) if len(h) >= 3)
    target = industrial.train_sequences()[u][-1]
    nb = retriever.similar_users(user=u, z=50, v=20, exclude_item=target)
    train = industrial.train_sequences()
    assert nb and all(target not in train[n.user] for n in nb)


def test_history_query_and_errors(industrial, retriever):
    nb = retriever.similar_users(history=[0, 1, 2], z=10, v=5)
    assert len(nb) == 5
    with pytest.raises(RetrievalError, match="empty history"):
        retriever.similar_users(history=[], z=10, v=5)
    with pytest.raises(RetrievalError, match="unknown item"):
        retriever.similar_users(history=[10**7], z=10, v=5)
    with pytest.raises(RetrievalError, match="unknown user"):
        retriever.similar_users(user="no-such-user", z=10, v=5)
    empty_user = next(u for u, h in enumerate(industrial.train_sequences()) if not h)
    with pytest.raises(RetrievalError, match="empty training history"):
        retriever.similar_users(user=empty_user)
    with pytest.raises(RetrievalError, match="smaller than"):
        retriever.similar_users(user=5, z=industrial.n_users, v=5)
    with pytest.raises(RetrievalError, match="≥ 1"):
        retriever.similar_users(user=5, z=0, v=5)


def test_artifact_roundtrip_and_dataset_check(retriever, registry):
    art = retriever.save(registry, "industrial", parents=[], params={"z": 20})
    back = UserRetriever.from_artifact(registry.load(art.ref), dataset_ref="dataset/industrial@test")
    u = next(u for u, h in enumerate(retriever.train_histories) if h)
    a, b = back.similar_users(user=u), retriever.similar_users(user=u)
    assert [(n.user, n.path) for n in a] == [(n.user, n.path) for n in b]
    np.testing.assert_allclose([n.score for n in a], [n.score for n in b], rtol=1e-5)
    with pytest.raises(ArtifactIncompatible, match="was built from"):
        UserRetriever.from_artifact(registry.load(art.ref), dataset_ref="dataset/ml-100k@abc")


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_find_exact_neighbours(kind):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 16)).astype(np.float32)
    exact = build_faiss(x, "flat")
    approx = deserialize(serialize(build_faiss(x, kind, ivf_nprobe=16)))
    q = x[:50] / np.linalg.norm(x[:50], axis=1, keepdims=True)
    _, e = exact.search(q, 10)
    _, a = approx.search(q, 10)
    recall = np.mean([len(set(e[i]) & set(a[i])) / 10 for i in range(50)])
    assert recall > 0.8
    with pytest.raises(ValueError, match="NaN"):
        build_faiss(np.full((3, 4), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="unknown faiss index kind"):
        build_faiss(x, "lsh")


def test_representation_cache_invalidates_on_model_change():
    cache = RepresentationCache(capacity=2)
    calls = []

    def compute(v):
        calls.append(v)
        return np.array([v])

    assert cache.get("m1", "a", lambda: compute(1))[0] == 1
    assert cache.get("m1", "a", lambda: compute(2))[0] == 1  # hit
    assert cache.get("m2", "a", lambda: compute(3))[0] == 3  # new model: recomputed
    cache.get("m2", "b", lambda: compute(4))
    cache.get("m2", "c", lambda: compute(5))
    assert len(cache) == 2 and calls == [1, 3, 4, 5]
