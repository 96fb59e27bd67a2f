"""Tokenizer building blocks on hand-made inputs with hand-computed expectations."""

from __future__ import annotations

import numpy as np
import pytest

from components.tokenizer.balanced import balanced_assign, balanced_kmeans
from components.tokenizer.codebook import Codebook
from components.tokenizer.collisions import add_extra_level, reassign_last_level, resolve_collisions
from components.tokenizer.encoders import TfidfEncoder, TokenizerError, check_embeddings, item_texts
from components.tokenizer.rq_kmeans import quantize, rq_kmeans
from components.tokenizer.stats import codebook_stats, entropy_bits, gini, token_popularity
from components.tokenizer.tokenize import assign_new_items


# ---- text ------------------------------------------------------------------------------------
def test_item_texts_template_skips_missing_truncates_and_unlists():
    recs = [
        {"title": "Drill  bit", "brand": "", "description": "['abc def', 'ghi']"},
        {"description": "x" * 10, "categories": "Tools"},
    ]
    out = item_texts(["a", "b"], recs, ["title", "brand", "categories", "description"], {"description": 5})
    assert out == ["title: Drill bit; description: abc d", "categories: Tools; description: xxxxx"]


def test_item_with_no_text_is_named():
    with pytest.raises(TokenizerError, match=r"item ids \['b'\]"):
        item_texts(["a", "b"], [{"title": "ok"}, {"title": "  ", "brand": None}], ["title", "brand"])


def test_check_embeddings_bad_input():
    with pytest.raises(TokenizerError, match="NaN or inf"):
        check_embeddings(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(TokenizerError, match="NaN or inf"):
        check_embeddings(np.array([[1.0, np.inf]]))
    with pytest.raises(TokenizerError, match="dimension 2, the codebook expects 3"):
        check_embeddings(np.ones((2, 2)), dim=3)
    with pytest.raises(TokenizerError, match="2-d"):
        check_embeddings(np.ones(4))
    with pytest.raises(TokenizerError, match="3 rows for 2 items"):
        check_embeddings(np.ones((3, 2)), n_items=2)


def test_tfidf_is_deterministic_and_normalised():
    texts = [f"title: item {i} {'red' if i % 2 else 'blue'} widget size {i % 5}" for i in range(40)]
    a, b = TfidfEncoder(8, seed=3).encode(texts), TfidfEncoder(8, seed=3).encode(texts)
    assert a.shape == (40, 8) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)


# ---- statistics --------------------------------------------------------------------------------
def test_gini_and_entropy_hand_values():
    assert gini(np.array([5, 5, 5, 5])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 1])) == pytest.approx(0.75)  # (2*4-4-1)*1 / (4*1)
    assert gini(np.array([1, 3])) == pytest.approx(0.25)  # ((-1)*1 + 1*3) / (2*4)
    assert entropy_bits(np.array([1, 1, 0])) == pytest.approx(1.0)
    assert entropy_bits(np.array([2, 1, 1])) == pytest.approx(1.5)


def test_codebook_stats_hand_example():
    sids = np.array([[0, 0], [0, 1], [1, 0], [0, 0]])
    counts = np.array([1, 2, 3, 4])
    np.testing.assert_array_equal(token_popularity(sids[:, 0], 3, counts), [7, 3, 0])
    s = codebook_stats(sids, [3, 2], counts)
    l0, l1 = s["levels"]
    assert l0["used"] == 2 and l0["utilization"] == pytest.approx(2 / 3)
    assert l0["entropy"] == pytest.approx(-(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25)))
    assert l0["gini"] == pytest.approx(gini(np.array([7, 3])))  # unused code 2 left out
    assert l0["top_token_share"] == pytest.approx(0.7)
    assert l0["prefix_collisions"] == 2  # prefixes (0),(0),(1),(0): 4 items, 2 distinct
    assert l1["prefix_collisions"] == 1 and s["collisions"] == 1  # (0,0) twice
    assert l1["gini"] == pytest.approx(gini(np.array([1 + 3 + 4, 2])))


# ---- quantizers ----------------------------------------------------------------------------
def _clusters(n_per=40, k=4, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)).astype(np.float32) * 10
    x = np.concatenate([c + 0.1 * rng.normal(size=(n_per, d)) for c in centers]).astype(np.float32)
    return x, np.repeat(np.arange(k), n_per)


def test_rq_kmeans_recovers_clusters_and_error_drops():
    x, labels = _clusters()
    res = rq_kmeans(x, [4, 4], niter=20, seed=0)
    # level 0 is a relabelling of the true clusters
    pairs = set(zip(labels.tolist(), res.codes[:, 0].tolist()))
    assert len(pairs) == 4 and len({b for _, b in pairs}) == 4
    assert res.quant_error[1] < res.quant_error[0] < 0.1 * ((x - x.mean(0)) ** 2).sum(1).mean()
    codes, _ = quantize(x, res.codewords)  # greedy re-encoding = training assignment
    np.testing.assert_array_equal(codes, res.codes)


def test_codebook_larger_than_item_count_is_an_error():
    x, _ = _clusters(n_per=5)
    with pytest.raises(TokenizerError, match="larger than the item count 20"):
        rq_kmeans(x, [32, 4])


def test_balanced_assign_respects_capacity_hand_case():
    x = np.array([[0.0], [0.1], [0.2], [0.3]], dtype=np.float32)
    c = np.array([[0.0], [10.0]], dtype=np.float32)
    # everyone prefers centroid 0; it keeps its 2 closest, the 2 farthest go to centroid 1
    np.testing.assert_array_equal(balanced_assign(x, c, 2), [0, 0, 1, 1])


def test_balanced_kmeans_sizes_bounded():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(size=(90, 4)), 5 + rng.normal(size=(10, 4))]).astype(np.float32)
    _, codes = balanced_kmeans(x, 10, iters=5)
    assert np.bincount(codes, minlength=10).max() <= 10


# ---- collisions ----------------------------------------------------------------------------
def test_extra_level_hand_example():
    sids = np.array([[1, 2], [1, 2], [0, 0], [1, 2]])
    out, sizes, n = add_extra_level(sids, [3, 3])
    np.testing.assert_array_equal(out[:, 2], [0, 1, 0, 2])
    assert sizes == [3, 3, 3] and n == 2
    same, sizes2, n2 = add_extra_level(np.array([[0, 1], [1, 0]]), [2, 2])
    assert same.shape == (2, 2) and sizes2 == [2, 2] and n2 == 0


def test_reassign_moves_farther_item_to_nearest_free_code():
    cw = [np.array([[0.0, 0.0]], dtype=np.float32), np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]], dtype=np.float32)]
    x = np.array([[0.1, 0.0], [0.4, 0.0], [2.9, 0.0]], dtype=np.float32)
    sids = np.array([[0, 0], [0, 0], [0, 2]])
    out, n = reassign_last_level(sids, [1, 3], x, cw)
    # item 0 is nearer code 0 and keeps it; item 1 moves to code 1 (next nearest, free)
    np.testing.assert_array_equal(out, [[0, 0], [0, 1], [0, 2]])
    assert n == 1


def test_reassign_widens_when_prefix_full():
    cw = [np.array([[0.0], [5.0]], dtype=np.float32), np.array([[0.0], [1.0]], dtype=np.float32)]
    x = np.array([[0.0], [1.0], [0.2]], dtype=np.float32)
    sids = np.array([[0, 0], [0, 1], [0, 0]])  # prefix 0 has both last codes taken
    out, _ = reassign_last_level(sids, [2, 2], x, cw)
    assert len({tuple(r) for r in out.tolist()}) == 3 and out[2, 0] == 1


def test_unknown_strategy():
    with pytest.raises(TokenizerError, match="unknown collision strategy"):
        resolve_collisions(np.zeros((2, 2), int), [2, 2], "drop")


# ---- online items ------------------------------------------------------------------------------
def test_assign_new_items_never_collides():
    x, _ = _clusters(n_per=10)
    res = rq_kmeans(x, [4, 4], seed=0)
    sids, sizes, _ = add_extra_level(res.codes, [4, 4])
    cb = Codebook(sids=sids, sizes=sizes, item_ids=[str(i) for i in range(len(x))], method="rqkmeans", codewords=dict(enumerate(res.codewords)))
    new = assign_new_items(cb, np.concatenate([x[:5], x[:5]]))  # duplicates of existing items, twice
    assert new.shape == (10, cb.n_levels)
    rows = {tuple(r) for r in new.tolist()}
    assert len(rows) == 10 and not rows & {tuple(r) for r in cb.sids.tolist()}
    np.testing.assert_array_equal(new[:5, 0], res.codes[:5, 0])  # same coarse token as the twin
    with pytest.raises(TokenizerError, match="dimension 3, the codebook expects 8"):
        assign_new_items(cb, np.ones((1, 3)))
    with pytest.raises(TokenizerError, match="NaN"):
        assign_new_items(cb, np.full((1, 8), np.nan))


def test_reassign_with_capacity_prefers_codes_with_room():
    # level 0: codes at 0 and 9; level 1: codes at 0, 1, 3. Items 0, 1 collide on (0, 0); item 2 is (1, 1).
    cw = [np.array([[0.0, 0.0], [9.0, 0.0]], dtype=np.float32), np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]], dtype=np.float32)]
    x = np.array([[0.1, 0.0], [0.4, 0.0], [10.0, 0.0]], dtype=np.float32)
    sids = np.array([[0, 0], [0, 0], [1, 1]])
    free, _ = reassign_last_level(sids, [2, 3], x, cw)
    capped, _ = reassign_last_level(sids, [2, 3], x, cw, capacity=1)
    np.testing.assert_array_equal(free[1], [0, 1])  # nearest free code under prefix 0
    np.testing.assert_array_equal(capped[1], [0, 2])  # code 1 already holds 1 item (item 2), code 2 has room
