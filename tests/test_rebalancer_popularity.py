"""Token popularity (Eq. 3 / Eq. 8), Gini and per-level statistics against hand-computed values."""

import numpy as np
import pytest

from components.rebalancer.popularity import gini, level_stats, pair_popularity, popularity_stats, token_popularity

# 5 items, 2 levels; level-1 token 0 is shared by parents 0 and 1 (RQ-style shared codes)
SIDS = np.array([[0, 0], [0, 1], [1, 0], [1, 2], [1, 2]], dtype=np.int32)
COUNTS = np.array([3, 1, 4, 0, 2])


def test_token_popularity_eq3():
    assert token_popularity(SIDS, COUNTS, 0, 3).tolist() == [4, 6, 0]
    assert token_popularity(SIDS, COUNTS, 1, 3).tolist() == [7, 1, 2]


def test_pair_popularity_eq8_splits_a_shared_child_by_parent():
    pairs, pop = pair_popularity(SIDS, COUNTS, 1)
    assert pairs.tolist() == [[0, 0], [0, 1], [1, 0], [1, 2]]
    assert pop.tolist() == [3, 1, 4, 2]
    # parent popularity is conserved across its (parent, child) pairs
    for parent, total in ((0, 4), (1, 6)):
        assert pop[pairs[:, 0] == parent].sum() == total
    with pytest.raises(ValueError, match="level >= 1"):
        pair_popularity(SIDS, COUNTS, 0)


def test_gini_hand_values():
    assert gini(np.array([5, 5, 5, 5])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 1])) == pytest.approx(0.75)  # 2*4/(4*1) - 5/4
    assert gini(np.array([1, 3])) == pytest.approx(0.25)  # 2*(1+6)/(2*4) - 3/2
    assert gini(np.array([])) == 0.0


def test_popularity_stats_over_used_tokens():
    st = popularity_stats(np.array([4, 6, 0]), np.array([True, True, False]))
    assert st["used_tokens"] == 2 and st["vocab"] == 3
    assert st["max"] == 6 and st["total"] == 10
    assert st["top_share"] == pytest.approx(0.6)
    assert st["top10pct_share"] == pytest.approx(0.6)  # ceil(0.1 * 2) = 1 token
    assert st["gini"] == pytest.approx(gini(np.array([4, 6])))
    rows = level_stats(SIDS, COUNTS, [3, 3])
    assert [r["max"] for r in rows] == [6, 7]
