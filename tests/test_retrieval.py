"""Retrieval: BM25 equals rank_bm25, faiss paths, merge rules, exclusions, artifact, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
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


def test_representation_cache_get_many_reads_before_it_evicts():
    """Issue #15 (3): capacity 2 holding A and B, then [C, A]: writing C must not evict A before A is read."""
    cache = RepresentationCache(capacity=2)
    computed = []

    def compute(keys):
        def f(pos):
            computed.append([keys[i] for i in pos])
            return [np.array([ord(keys[i])]) for i in pos]
        return f

    cache.get_many("m", ["A", "B"], compute(["A", "B"]))
    out = cache.get_many("m", ["C", "A", "C"], compute(["C", "A", "C"]))
    assert [int(x[0]) for x in out] == [ord("C"), ord("A"), ord("C")]
    assert computed == [["A", "B"], ["C"]]  # C computed once, A read from the cache
    assert len(cache) == 2 and list(cache._data) == ["A", "C"]  # B (least recently used) evicted
    assert cache.get_many("m2", ["A"], compute(["A"]))[0][0] == ord("A") and computed[-1] == ["A"]  # new model: recomputed


def _walk(n_users: int = 40, n_items: int = 24):
    """Users walking a catalog (i → i+1); train = the first 6 steps of 8 (no torch import needed)."""
    from components.data.dataset import Dataset, Split

    rng = np.random.default_rng(0)
    seqs = [[int(s + j) % n_items for j in range(8)] for s in rng.integers(n_items, size=n_users)]
    rows = [(u, q[:t], q[t]) for u, q in enumerate(seqs) for t in range(1, 6)]
    split = Split.from_lists([x[0] for x in rows], [x[1] for x in rows], [x[2] for x in rows], max_history=4)
    return Dataset(name="walk", item_ids=[f"i{i}" for i in range(n_items)], item_text=[{"title": f"item {i} kind{i % 3}"} for i in range(n_items)],
                   user_ids=[f"u{u}" for u in range(n_users)], sequences=seqs, splits={"train": split, "valid": split, "test": split},
                   max_history=4)


def test_history_query_excludes_its_user():
    """Issue #15 (4): a query by a user's own history retrieves that user unless it is excluded."""
    ds = _walk()
    emb = np.random.default_rng(0).normal(size=(ds.n_items, 8)).astype(np.float32)
    r = UserRetriever.build(ds, emb, fields=("title",))
    hits = 0
    for u in range(0, 40, 5):
        hist = r.train_histories[u]
        hits += u in {n.user for n in r.similar_users(history=hist, z=6, v=3)}
        by_idx = r.similar_users(history=hist, z=6, v=3, exclude_user=u)
        by_id = r.similar_users(history=hist, z=6, v=3, exclude_user=ds.user_ids[u])
        assert len(by_idx) == 3 and u not in {n.user for n in by_idx}
        assert [n.user for n in by_idx] == [n.user for n in by_id] == [n.user for n in r.similar_users(user=u, z=6, v=3)]
    assert hits > 0  # without the exclusion the owner finds itself
    with pytest.raises(RetrievalError, match="unknown user"):
        r.similar_users(history=[0, 1], exclude_user="nobody")


def _tiny_sasrec(n_items: int, seed: int = 0):
    import torch

    from components.evaluation.baselines.sasrec import SASRec, SASRecConfig

    torch.manual_seed(seed)
    return SASRec(SASRecConfig(n_items=n_items, max_len=6, d_model=8, n_layers=1, n_heads=1, dropout=0.0)).eval()


def test_sasrec_user_vectors_on_the_collaborative_path(registry):
    """Issue #15 (1): ``retrieval.user_vectors: sasrec`` — faiss searches SASRec user states g_u (the
    last position's output), and a raw-history query is encoded by the same SASRec; item-mean stays
    the default."""
    from components.params import Params
    from components.retrieval.vectors import normalize

    assert Params().retrieval.user_vectors == "item-mean"
    ds = _walk()
    emb = np.random.default_rng(0).normal(size=(ds.n_items, 8)).astype(np.float32)
    sas = _tiny_sasrec(ds.n_items)
    r = UserRetriever.build(ds, emb, fields=("title",), sasrec=sas, dataset_ref="dataset/walk@x")
    train = ds.train_sequences()
    np.testing.assert_allclose(r.user_vectors, normalize(sas.encode(train)), atol=1e-5)
    hist = [3, 4, 5]
    g = normalize(sas.encode([hist]))[0]
    np.testing.assert_allclose(r.history_vector(hist), g, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a RAR step under bf16 training: the fp32 query, not a crash
        np.testing.assert_array_equal(r.history_vectors([hist]), g[None])
        assert sas.encode([hist]).dtype == np.float32
    item_mean = normalize(normalize(emb)[hist].mean(0, keepdims=True))[0]  # mean of the normalised item vectors
    assert not np.allclose(r.history_vector(hist), item_mean, atol=1e-3)
    want = [u for u in np.argsort(-(r.user_vectors @ g), kind="stable") if u != 7][:5]  # exact cosine top-5 without user 7
    got = r.cf_top(r.history_vector(hist), 5, r.banned(7, None))
    np.testing.assert_allclose((r.user_vectors @ g)[got], (r.user_vectors @ g)[want], atol=1e-6)
    # the index stores the SASRec: a reloaded index answers raw-history queries the same way
    art = r.save(registry, "walk", parents=[], params={})
    back = UserRetriever.from_artifact(registry.load(art.ref))
    assert back.user_vectors_kind == "sasrec" and art.load_json("retrieval.json")["user_vectors"] == "sasrec"
    np.testing.assert_allclose(back.history_vector(hist), g, atol=1e-5)
    assert [n.user for n in back.similar_users(history=hist, z=6, v=4)] == [n.user for n in r.similar_users(history=hist, z=6, v=4)]
    # item-mean index: no SASRec stored
    plain = UserRetriever.build(ds, emb, fields=("title",))
    np.testing.assert_allclose(plain.history_vector(hist), item_mean, atol=1e-6)
    assert UserRetriever.from_artifact(registry.load(plain.save(registry, "walk-plain", [], {}).ref)).query_encoder is None


def test_cli_build_with_sasrec_user_vectors(registry, capsys):
    from components.cli import main
    from components.registry import ArtifactIncompatible
    from components.tokenizer.encoders import save_embeddings

    ds = _walk()
    dart = ds.save(registry)
    save_embeddings(registry, np.random.default_rng(0).normal(size=(ds.n_items, 8)).astype(np.float32), dart.ref, "walk", "random", {})
    sas = _tiny_sasrec(ds.n_items)
    mart = sas.save(registry, "walk-sasrec", parents=[dart.ref], params={})
    base = ["--registry", str(registry.root), "--set", "data.dataset=walk", "--set", "retrieval.fields=[title]",
            "--set", "retrieval.z=5", "--set", "retrieval.v=3"]
    assert main(base + ["--set", "retrieval.user_vectors=sasrec", "retrieval", "build"]) == 0
    assert "over sasrec user vectors" in capsys.readouterr().out
    art = registry.load("retrieval-index/walk@latest")
    assert mart.ref in art.manifest.parents and art.meta["user_vectors"] == "sasrec"
    r = UserRetriever.from_artifact(art)
    np.testing.assert_allclose(r.history_vector([1, 2]), sas.encode([[1, 2]])[0] / np.linalg.norm(sas.encode([[1, 2]])[0]), atol=1e-5)
    assert main(base + ["retrieval", "query", "--history", "i1", "i2"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    # a SASRec trained on another dataset is refused
    other = sas.save(registry, "other-sasrec", parents=["dataset/other@y"], params={})
    assert main(base + ["--set", "retrieval.user_vectors=sasrec", "--set", f"retrieval.sasrec_model={other.ref}", "retrieval", "build"]) == 2
    assert "was not trained on" in capsys.readouterr().err
    _ = ArtifactIncompatible


@pytest.mark.parametrize("vectors", ["item-mean", "sasrec"])
def test_candidates_batch_equals_one_query_at_a_time(vectors):
    """GenPlugin's RAR asks for a whole batch at once (one SASRec batch, one faiss search): the
    result is exactly :meth:`candidates` per row, exclusions and histories of different lengths
    included; bad rows are refused as one query would be."""
    ds = _walk()
    emb = np.random.default_rng(0).normal(size=(ds.n_items, 8)).astype(np.float32)
    r = UserRetriever.build(ds, emb, fields=("title",), sasrec=_tiny_sasrec(ds.n_items) if vectors == "sasrec" else None)
    hists = [r.train_histories[u][-k:] for u, k in [(0, 6), (3, 2), (5, 1), (11, 4), (12, 6)]] + [[1, 2, 3]]
    excl = [0, 3, None, ds.user_ids[11], 20, None]
    got = r.candidates_batch(hists, z=5, exclude_users=excl)
    assert len(got) == len(hists)
    for h, u, (a, c) in zip(hists, excl, got):
        a1, c1, _ = r.candidates(history=h, z=5, exclude_user=u)
        assert a.tolist() == a1.tolist() and len(c) == len(c1) == 5
        # faiss: the same cosines in the same order (users with identical vectors, common in this
        # walk, may come in either order: faiss breaks exact ties by its search size)
        s = r.user_vectors @ r.history_vector(h)
        np.testing.assert_allclose(s[c], s[c1], atol=1e-6)
        if u is not None:
            assert r._user(u) not in set(a.tolist()) | set(c.tolist())
    assert r.candidates_batch([], z=5) == []
    with pytest.raises(RetrievalError, match="empty history"):
        r.candidates_batch([[1], []], z=5)
    with pytest.raises(RetrievalError, match="unknown item"):
        r.candidates_batch([[1, 10_000]], z=5)
    with pytest.raises(RetrievalError, match="excluded users"):
        r.candidates_batch([[1], [2]], z=5, exclude_users=[None])
    with pytest.raises(RetrievalError, match="unknown user"):
        r.candidates_batch([[1]], z=5, exclude_users=["nobody"])
