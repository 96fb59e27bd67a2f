"""CRAB split on hand-made trees (hand-computed outcome), invariants on random codebooks, the
Industrial reference SIDs, and bad input."""

import math

import numpy as np
import pytest

from components.rebalancer import RebalanceError, detect_semantic_levels, rebalance_codebook
from components.rebalancer.popularity import token_popularity
from components.tokenizer.codebook import Codebook
from tests.helpers_codebook import reference_codebook, synthetic_codebook

# (a, b, c) and training counts; level-0 token 0 holds 60 of 80 interactions
HAND_SIDS = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 2, 0], [1, 0, 2], [2, 1, 1], [3, 3, 3]])
HAND_COUNTS = np.array([20, 10, 15, 15, 5, 5, 10])


def hand_codebook() -> Codebook:
    return Codebook(sids=HAND_SIDS, sizes=[4, 4, 4], item_ids=[f"i{k}" for k in range(7)], method="hand")


def hand_embeddings() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(7, 2)).astype(np.float32)


def test_hand_tree_level0_split_moves_whole_children():
    # mean popularity over 4 used tokens = 20; top ceil(0.1*4)=1 token (a=0, 60) -> n = ceil(60/20) = 3,
    # and its 3 children (b=0: 30, b=1: 15, b=2: 15) each become one new token (the only 3-way split)
    r = rebalance_codebook(hand_codebook(), HAND_COUNTS, embeddings=hand_embeddings(), levels=[0], semantic_levels=3, lam=10.0)
    cb = r.codebook
    assert cb.sizes == [6, 4, 4]
    assert cb.sids.tolist() == [[0, 0, 0], [0, 0, 1], [4, 1, 0], [5, 2, 0], [1, 0, 2], [2, 1, 1], [3, 3, 3]]
    assert cb.token_origin[0] == [0, 1, 2, 3, 0, 0]
    assert cb.token_origin[1] == [0, 1, 2, 3]
    (s,) = r.splits
    assert (s.level, s.token, s.popularity, s.n_children, s.new_tokens, s.new_popularity) == (0, 0, 60, 3, [0, 4, 5], [30, 15, 15])
    assert r.after[0]["max"] == 30 and r.before[0]["max"] == 60
    assert r.after[0]["total"] == r.before[0]["total"] == 80


def test_hand_tree_last_level_children_are_items():
    # level 2: c=0 has 50 of 80 (items 0, 2, 3: 20, 15, 15) -> n = ceil(50/20) = 3, one item per token
    r = rebalance_codebook(hand_codebook(), HAND_COUNTS, embeddings=hand_embeddings(), levels=[2], semantic_levels=3, lam=10.0)
    assert r.codebook.sids[:, 2].tolist() == [0, 1, 4, 5, 2, 1, 3]
    assert r.codebook.token_origin[2] == [0, 1, 2, 3, 0, 0]
    assert r.after[2]["max"] == 20


def test_split_count_capped_by_max_splits():
    r = rebalance_codebook(hand_codebook(), HAND_COUNTS, embeddings=hand_embeddings(), levels=[0], semantic_levels=3, max_splits=2)
    assert r.codebook.sizes[0] == 5 and len(r.splits[0].new_tokens) == 2


def _check_invariants(old: Codebook, res, counts: np.ndarray, max_splits: int) -> None:
    new = res.codebook
    n_sem = res.semantic_levels
    assert new.n_collisions() == 0
    for lvl in range(old.n_levels):
        origin = np.asarray(new.token_origin[lvl])
        assert (origin[new.sids[:, lvl]] == old.sids[:, lvl]).all()  # each new token maps back to its original
        pb = token_popularity(old.sids, counts, lvl, old.sizes[lvl])
        pa = token_popularity(new.sids, counts, lvl, new.sizes[lvl])
        assert pa.sum() == pb.sum()  # total popularity conserved
        assert pa.max() <= pb.max()
        # popularity of each original token = sum over the tokens it became
        assert (np.bincount(origin, weights=pa, minlength=old.sizes[lvl]) == pb).all()
        if lvl not in res.levels:
            assert (new.sids[:, lvl] == old.sids[:, lvl]).all() and new.sizes[lvl] == old.sizes[lvl]
            continue
        splits = [s for s in res.splits if s.level == lvl]
        assert new.sizes[lvl] == old.sizes[lvl] + sum(len(s.new_tokens) - 1 for s in splits)
        top = int(np.argmax(pb))
        if any(s.token == top for s in splits):
            assert pa.max() < pb.max()
        used = np.bincount(old.sids[:, lvl], minlength=old.sizes[lvl]) > 0
        for s in splits:
            assert sum(s.new_popularity) == s.popularity and min(s.new_popularity) > 0
            assert 2 <= len(s.new_tokens) <= min(max_splits, math.ceil(s.popularity * used.sum() / pb.sum()))
        # hard constraint: items sharing (old level-l token, level-l+1 token) share the new token
        if lvl + 1 < n_sem:
            key = old.sids[:, lvl].astype(np.int64) * 10_000 + old.sids[:, lvl + 1]
            _, inv = np.unique(key, return_inverse=True)
            for g in np.unique(inv):
                assert len(set(new.sids[inv == g, lvl].tolist())) == 1


@pytest.mark.parametrize("seed", range(4))
def test_invariants_on_random_shared_code_codebooks(seed):
    cb, counts, emb = synthetic_codebook(600, K=12, d=6, seed=seed)
    counts[np.random.default_rng(seed).random(600) < 0.3] = 0  # items without interactions
    res = rebalance_codebook(cb, counts, embeddings=emb, split_ratio=0.25, max_splits=3, seed=seed)
    assert res.splits, "expected over-popular tokens in a skewed synthetic codebook"
    _check_invariants(cb, res, counts, 3)


def test_codewords_of_split_tokens_are_member_residual_centroids():
    cb, counts, emb = synthetic_codebook(500, K=10, d=4, seed=7)
    res = rebalance_codebook(cb, counts, embeddings=emb, levels=[1], split_ratio=0.2)
    new = res.codebook
    s = res.splits[0]
    r1 = emb - cb.codewords[0][cb.sids[:, 0]]  # level-1 residual against the codebook's own codewords
    for tok in s.new_tokens:
        members = new.sids[:, 1] == tok
        np.testing.assert_allclose(new.codewords[1][tok], r1[members].mean(0), rtol=1e-4, atol=1e-5)
    untouched = [t for t in range(cb.sizes[1]) if t not in {x.token for x in res.splits}]
    np.testing.assert_array_equal(new.codewords[1][untouched], cb.codewords[1][untouched])
    np.testing.assert_array_equal(new.codewords[0], cb.codewords[0])


def test_disambiguation_level_is_detected_and_never_split():
    sids = np.array([[0, 0, 0, 0], [0, 0, 0, 1], [0, 1, 2, 0], [1, 2, 1, 0], [1, 0, 1, 0], [2, 2, 2, 0]])
    cb = Codebook(sids=sids, sizes=[3, 3, 3, 2], item_ids=list("abcdef"), method="t")
    assert detect_semantic_levels(cb) == 3
    with pytest.raises(RebalanceError, match="not a semantic level"):
        rebalance_codebook(cb, np.ones(6), embeddings=np.eye(6, dtype=np.float32), levels=[3])


@pytest.fixture(scope="module")
def industrial_result(industrial):
    from tests.conftest import SHARED_DATA

    cb = reference_codebook(SHARED_DATA / "Industrial_and_Scientific/reference/minionerec.index.json", industrial.item_ids)
    return cb, rebalance_codebook(cb, industrial.train_item_counts(), item_text=industrial.item_text)


def test_industrial_reference_rebalanced(industrial, industrial_result):
    cb, res = industrial_result
    assert cb.sizes == [256, 256, 256, 3] and res.semantic_levels == 3 and res.feature_source == "text"
    _check_invariants(cb, res, industrial.train_item_counts(), 4)
    for lvl in range(3):
        b, a = res.before[lvl], res.after[lvl]
        assert a["top_share"] < b["top_share"], lvl
        assert a["gini"] < b["gini"], lvl
        assert a["vocab"] > b["vocab"]
    assert (res.codebook.sids[:, 3] == cb.sids[:, 3]).all()
    assert res.codebook.n_collisions() == 0 and len(np.unique(res.codebook.sids, axis=0)) == cb.n_items


def test_bad_input_errors(industrial):
    cb = hand_codebook()
    emb = hand_embeddings()
    for kw, msg in (
        ({"split_ratio": 0.0}, "split_ratio must be in"),
        ({"split_ratio": 1.5}, "split_ratio must be in"),
        ({"max_splits": 1}, "max_splits must be an integer >= 2"),
        ({"lam": -0.1}, "lam"),
        ({"levels": [5]}, "not a semantic level"),
    ):
        with pytest.raises(RebalanceError, match=msg):
            rebalance_codebook(cb, HAND_COUNTS, embeddings=emb, semantic_levels=3, **kw)
    with pytest.raises(RebalanceError, match="zero training interactions"):
        rebalance_codebook(cb, np.zeros(7), embeddings=emb, semantic_levels=3)
    with pytest.raises(RebalanceError, match="popularity has shape"):
        rebalance_codebook(cb, np.ones(5), embeddings=emb, semantic_levels=3)
    with pytest.raises(ValueError, match=r"embeddings have shape \(3, 2\)"):
        rebalance_codebook(cb, HAND_COUNTS, embeddings=emb[:3], semantic_levels=3)
    with pytest.raises(ValueError, match="no codewords and no item embeddings"):
        rebalance_codebook(cb, HAND_COUNTS, semantic_levels=3)


# ---- mutation guards: hand-built trees whose split a wrong CRAB gets wrong ---------------------
def _tree(sids: list[list[int]], sizes: list[int]) -> Codebook:
    return Codebook(sids=np.array(sids), sizes=sizes, item_ids=[f"i{k}" for k in range(len(sids))], method="hand")


def test_mutation_guard_split_weights_children_by_item_count():
    """Guards against dropping Eq. 6's item-count weights w_c (in the K-means SSE / centroids, or by
    passing equal weights from the planner).

    Level-0 token 0 has children b=0 (1 item at x=0, 3 interactions), b=1 (1 item at x=1.1, none)
    and b=2 (10 items at x=2, 1 interaction each); token 1 has one item with 7. P = (13, 7): mean 10,
    token 0 is the one candidate (ceil(0.1 * 2) = 1), n = ceil(13 / 10) = 2. Child b=1 has no
    popularity, so both feasible splits have P = (10, 3) and the same balance: the item-weighted SSE
    decides, 1*1/2 * 1.1^2 = 0.605 for {b0, b1} | {b2} vs 1*10/11 * 1.1^2 = 0.736 for {b0} | {b1, b2}
    (unweighted the latter would win, 0.405 < 0.605). {b2} (P = 10) keeps id 0, {b0, b1} gets id 2."""
    sids = [[0, 0, 0], [0, 1, 0]] + [[0, 2, k] for k in range(10)] + [[1, 0, 0]]
    counts = np.array([3, 0] + [1] * 10 + [7])
    emb = np.zeros((13, 2), dtype=np.float32)
    emb[:, 0] = [0.0, 1.1] + [2.0] * 10 + [5.0]
    r = rebalance_codebook(_tree(sids, [2, 3, 10]), counts, embeddings=emb, levels=[0], semantic_levels=3)
    assert r.codebook.sids[:, 0].tolist() == [2, 2] + [0] * 10 + [1]
    (s,) = r.splits
    assert (s.token, s.n_children, s.new_tokens, s.new_popularity) == (0, 3, [0, 2], [10, 3])


def test_mutation_guard_split_balances_interactions_not_item_counts():
    """Guards against balancing the new tokens' item counts instead of their interactions (Eq. 5 /
    Eq. 8 popularity p_c of each child, not its number of items w_c), in the K-means or the planner.

    Level-0 token 0 (12 interactions) has children b=0..3 with 1, 1, 1, 3 items and 5, 4, 2, 1
    interactions; token 1 has one item with 6. Mean popularity 9, n = ceil(12 / 9) = 2. All items
    share one embedding, so the distance term is 0 and balance decides: the only even split of the
    interactions is {b0, b3} | {b1, b2} (6 | 6; tie -> b0's token keeps id 0), while balancing item
    counts would give {b3} | {b0, b1, b2} (3 | 3 items, interactions 1 | 11)."""
    sids = [[0, 0, 0], [0, 1, 0], [0, 2, 0], [0, 3, 0], [0, 3, 1], [0, 3, 2], [1, 0, 0]]
    counts = np.array([5, 4, 2, 1, 0, 0, 6])
    emb = np.ones((7, 2), dtype=np.float32)
    r = rebalance_codebook(_tree(sids, [2, 4, 3]), counts, embeddings=emb, levels=[0], semantic_levels=3)
    assert r.codebook.sids[:, 0].tolist() == [0, 2, 2, 0, 0, 0, 1]
    (s,) = r.splits
    assert (s.token, s.n_children, s.new_tokens, s.new_popularity, s.balance) == (0, 4, [0, 2], [6, 6], 0.0)


def test_mutation_guard_candidates_ranked_by_popularity_not_item_count():
    """Guards against ranking split candidates by item count instead of Eq. 3 popularity P_l(t).

    Level 0: token 0 has 4 items with 3 interactions each (P = 12), token 1 has 2 items with 10 each
    (P = 20), token 2 one item with 1 (P = 1). Total 33 over 3 used tokens (mean 11); one candidate
    (ceil(0.1 * 3) = 1): token 1, the most popular, splits into n = ceil(20 / 11) = 2 tokens, one per
    child (10 | 10; tie -> the first child keeps id 1, the second gets id 3). Ranked by item count,
    token 0 (4 items) would be the candidate and split instead (n = ceil(12 / 11) = 2)."""
    sids = [[0, 0, 0], [0, 1, 0], [0, 2, 0], [0, 3, 0], [1, 0, 0], [1, 1, 0], [2, 0, 0]]
    counts = np.array([3, 3, 3, 3, 10, 10, 1])
    emb = np.random.default_rng(0).normal(size=(7, 2)).astype(np.float32)
    r = rebalance_codebook(_tree(sids, [3, 4, 1]), counts, embeddings=emb, levels=[0], semantic_levels=3)
    assert r.codebook.sids[:, 0].tolist() == [0, 0, 0, 0, 1, 3, 2]
    assert [(s.level, s.token, s.popularity, s.new_tokens, s.new_popularity) for s in r.splits] == [(0, 1, 20, [1, 3], [10, 10])]


# ---- FlexCode codebooks (issue #16): split tokens stay in their view ------------------------------
def _flexcode_codebook(n: int = 400, seed: int = 0) -> tuple[Codebook, np.ndarray]:
    """A FlexCode-layout codebook without training: routed residual codes of random latents, 0, 1
    or 2 CF tokens per item, a disambiguation level, and skewed popularity."""
    from components.tokenizer.collisions import add_extra_level
    from components.tokenizer.flexcode import dual_residual_codes

    rng = np.random.default_rng(seed)
    zs, zc = rng.normal(size=(n, 6)).astype(np.float32), rng.normal(size=(n, 6)).astype(np.float32)
    dual = dual_residual_codes(zs, zc, rng.integers(0, 3, n), 3, 12, niter=5)
    sids, sizes, _ = add_extra_level(dual.codes, dual.sizes)
    cb = Codebook(sids=sids, sizes=sizes, item_ids=[str(i) for i in range(n)], method="flexcode", codewords=dict(enumerate(dual.codewords)),
                  stats={"semantic_levels": 3, "flexcode": {"token_split": dual.split, "cf_tokens": [0] * n}})
    return cb, np.minimum(rng.zipf(1.3, n), 500)


def test_crab_on_flexcode_split_tokens_stay_in_their_view():
    from components.tokenizer.flexcode import cf_tokens_of, token_views

    cb, counts = _flexcode_codebook()
    k = cf_tokens_of(cb)
    res = rebalance_codebook(cb, counts, split_ratio=0.3, max_splits=3, n_init=1, seed=0)
    out = res.codebook
    assert any(out.sizes[lvl] > cb.sizes[lvl] for lvl in (1, 2))  # tokens appended past both views' ranges
    assert {s.level for s in res.splits} >= {1, 2}
    np.testing.assert_array_equal(cf_tokens_of(out), k)
    assert out.stats["flexcode"]["token_split"] == cb.stats["flexcode"]["token_split"]
    assert out.stats["flexcode"]["token_origin"] == out.token_origin  # first rebalancing: origin = CRAB's own map
    before, after = token_views(cb), token_views(out)
    for s in res.splits:
        assert {bool(after[s.level][t]) for t in s.new_tokens} == {bool(before[s.level][s.token])}
    again = rebalance_codebook(out, counts, split_ratio=0.3, max_splits=3, n_init=1, seed=1).codebook
    assert sum(again.sizes) > sum(out.sizes)
    np.testing.assert_array_equal(cf_tokens_of(again), k)  # origins compose over chained rebalancing
