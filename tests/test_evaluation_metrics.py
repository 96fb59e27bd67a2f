"""Metrics against hand-computed values (RecBole style) and bad-input errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from components.evaluation.metrics import (
    RankingError,
    check_topk,
    coverage_at_k,
    dgu_at_k,
    divr_at_k,
    evaluate_topk,
    group_unfairness,
    head_items,
    head_tail_accuracy,
    hit_rate_at_k,
    invalid_rate,
    mgu_at_k,
    ndcg_at_k,
    orr_at_k,
    popularity_groups,
)

# 10 items; counts sorted descending already: groups of 2 = {0,1} {2,3} {4,5} {6,7} {8,9}
COUNTS = np.array([10, 8, 6, 5, 4, 3, 2, 1, 1, 0])  # sum 40 -> history shares 18/40 11/40 7/40 3/40 1/40
TOPK = np.array(
    [
        [0, 1, 2, 3],  # target 2 at rank 2
        [0, 4, 5, -1],  # target 4 at rank 1, one invalid slot
        [9, 0, 1, 6],  # target 0 (head) at rank 1
        [8, 7, -1, -1],  # target 3: miss
    ]
)
TARGETS = np.array([2, 4, 0, 3])
L3 = 1 / math.log2(3)


def test_hr_ndcg_hand_computed():
    assert hit_rate_at_k(TOPK, TARGETS, 1) == 0.0
    assert hit_rate_at_k(TOPK, TARGETS, 2) == pytest.approx(2 / 4)
    assert hit_rate_at_k(TOPK, TARGETS, 4) == pytest.approx(3 / 4)
    assert ndcg_at_k(TOPK, TARGETS, 2) == pytest.approx(2 * L3 / 4)
    assert ndcg_at_k(TOPK, TARGETS, 4) == pytest.approx((0.5 + 2 * L3) / 4)


def test_popularity_groups_and_head():
    assert popularity_groups(COUNTS, 5).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    # ties broken by index, unequal sizes split like np.array_split (4, 3, 3)
    assert popularity_groups(np.array([1, 5, 5, 0, 2, 2, 9, 0, 0, 3]), 3).tolist() == [1, 0, 0, 2, 1, 1, 0, 2, 2, 0]
    assert np.flatnonzero(head_items(COUNTS, 0.2)).tolist() == [0, 1]
    assert head_items(np.arange(7), 0.2).sum() == 2  # ceil(1.4)


def test_group_unfairness_hand_computed():
    gu = group_unfairness(TOPK, COUNTS, 4, 5)
    # valid slots (13): group counts 5, 2, 2, 2, 2
    np.testing.assert_allclose(gu["exposure"], np.array([5, 2, 2, 2, 2]) / 13)
    np.testing.assert_allclose(gu["history"], np.array([18, 11, 7, 3, 1]) / 40)
    np.testing.assert_allclose(gu["gu"], np.array([-34, -63, -11, 41, 67]) / 520)
    assert mgu_at_k(TOPK, COUNTS, 4) == pytest.approx(216 / 2600)
    assert dgu_at_k(TOPK, COUNTS, 4) == pytest.approx(130 / 520)
    # K = 2: exposure (4, 0, 1, 1, 2) / 8
    assert mgu_at_k(TOPK, COUNTS, 2) == pytest.approx(0.13)
    assert dgu_at_k(TOPK, COUNTS, 2) == pytest.approx(0.5)


def test_diversity_coverage_invalid():
    assert divr_at_k(TOPK, 4) == pytest.approx(10 / 16)
    assert divr_at_k(TOPK, 2) == pytest.approx(6 / 8)
    assert orr_at_k(TOPK, 4) == pytest.approx(8 / 16)  # freq 3 + 2 + 1 + 1 + 1
    assert orr_at_k(TOPK, 4, n_top=2) == pytest.approx(5 / 16)
    assert orr_at_k(TOPK, 2) == pytest.approx(7 / 8)
    assert coverage_at_k(TOPK, 10, 4) == pytest.approx(1.0)
    assert coverage_at_k(TOPK, 10, 2) == pytest.approx(0.6)
    assert invalid_rate(TOPK, 4) == pytest.approx(3 / 16)
    assert invalid_rate(TOPK, 2) == 0.0


def test_head_tail_hand_computed():
    ht = head_tail_accuracy(TOPK, TARGETS, COUNTS, 4)
    assert (ht["n_head"], ht["n_tail"]) == (1, 3)
    assert ht["head_hr"] == 1.0 and ht["head_ndcg"] == pytest.approx(L3)
    assert ht["tail_hr"] == pytest.approx(2 / 3)
    assert ht["tail_ndcg"] == pytest.approx((0.5 + L3) / 3)
    # no head target at all: None, never NaN
    ht = head_tail_accuracy(TOPK[:2], TARGETS[:2], COUNTS, 4)
    assert ht["head_hr"] is None and ht["head_ndcg"] is None and ht["n_head"] == 0


def test_evaluate_topk_matches_single_functions():
    m = evaluate_topk(TOPK, TARGETS, COUNTS, ks=(1, 2, 4))
    assert m["n"] == 4 and m["n_items"] == 10
    for k in (1, 2, 4):
        assert m[f"HR@{k}"] == pytest.approx(hit_rate_at_k(TOPK, TARGETS, k))
        assert m[f"NDCG@{k}"] == pytest.approx(ndcg_at_k(TOPK, TARGETS, k))
        assert m[f"DivR@{k}"] == pytest.approx(divr_at_k(TOPK, k))
        assert m[f"ORR@{k}"] == pytest.approx(orr_at_k(TOPK, k))
        assert m[f"invalid@{k}"] == pytest.approx(invalid_rate(TOPK, k))
        assert m[f"coverage@{k}"] == pytest.approx(coverage_at_k(TOPK, 10, k))
    assert m["MGU@4"] == pytest.approx(216 / 2600)
    assert m["DGU@4"] == pytest.approx(0.25)
    assert m["HR_head@4"] == 1.0 and m["HR_tail@4"] == pytest.approx(2 / 3)
    assert m["NDCG_tail@4"] == pytest.approx((0.5 + L3) / 3)
    assert sum(m["GU@4"]) == pytest.approx(0.0, abs=1e-12)
    assert not any(isinstance(v, float) and math.isnan(v) for v in m.values())


def test_bad_input_errors():
    with pytest.raises(RankingError, match="repeats item 1"):
        evaluate_topk(np.array([[1, 2, 1]]), np.array([1]), COUNTS, ks=(1,))
    with pytest.raises(RankingError, match="outside the catalog"):
        evaluate_topk(np.array([[1, 12]]), np.array([1]), COUNTS, ks=(1,))
    with pytest.raises(RankingError, match="-2"):
        evaluate_topk(np.array([[1, -2]]), np.array([1]), COUNTS, ks=(1,))
    with pytest.raises(RankingError, match="K=5 is larger"):
        evaluate_topk(TOPK, TARGETS, COUNTS, ks=(1, 5))
    with pytest.raises(RankingError, match="empty test set"):
        evaluate_topk(np.zeros((0, 4), dtype=int), np.zeros(0, dtype=int), COUNTS, ks=(1,))
    with pytest.raises(RankingError, match="do not match"):
        evaluate_topk(TOPK, TARGETS[:3], COUNTS, ks=(1,))
    with pytest.raises(RankingError, match="targets outside"):
        evaluate_topk(TOPK, np.array([2, 4, 0, 10]), COUNTS, ks=(1,))
    with pytest.raises(RankingError, match="integer"):
        check_topk(TOPK.astype(float))
    with pytest.raises(RankingError, match="K=5 is larger"):
        hit_rate_at_k(TOPK, TARGETS, 5)
    with pytest.raises(RankingError, match="n_groups"):
        popularity_groups(COUNTS, 11)
    # several invalid (-1) slots in a row are not duplicates
    assert check_topk(np.array([[3, -1, -1]])).shape == (1, 3)


def test_popular_baseline_on_industrial(industrial):
    """Real data: most-popular lists put all exposure on group 0, so DGU = (1 - H_0) + max_{g>0} H_g."""
    from components.evaluation.baselines import most_popular_topk

    counts = industrial.train_item_counts()
    te = industrial.splits["test"]
    topk = most_popular_topk(counts, len(te), 20)
    m = evaluate_topk(topk, te.target, counts)
    h = np.asarray(m["history_share"])
    assert h.sum() == pytest.approx(1.0)
    assert m["exposure@10"] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert m["DGU@10"] == pytest.approx((1 - h[0]) + h[1:].max())
    top10 = set(np.argsort(-counts, kind="stable")[:10].tolist())
    assert m["HR@10"] == pytest.approx(np.mean([t in top10 for t in te.target]))
    assert m["DivR@10"] == pytest.approx(10 / (10 * len(te)))
    assert m["ORR@10"] == pytest.approx(0.5)  # 5 of the 10 identical items fill half the slots
    assert m["HR_tail@10"] == 0.0 and m["n_head"] + m["n_tail"] == len(te)
