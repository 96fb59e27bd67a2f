"""The paired per-user bootstrap (components/experiment/paired.py) on hand-built cases.

Two users give bootstrap distributions that can be written down: a resample is {A, A}, {A, B} or
{B, B} with probabilities 1/4, 1/2, 1/4, so the 95% percentile interval spans the two extremes.
"""

import numpy as np
import pytest

from components.evaluation.metrics import INVALID, evaluate_topk
from components.experiment.paired import fmt_paired, paired_bootstrap, paired_vs, per_user_stats, variant_stat

# 4 items, training counts [3, 1, 0, 0], 2 groups: group 0 = items {0, 1}, group 1 = {2, 3}; history share H = [1, 0]
COUNTS = np.array([3, 1, 0, 0])
H = np.array([1.0, 0.0])


def _run(topk, targets=(0, 0)):
    return per_user_stats(np.array(topk), np.array(targets), COUNTS, k=2, n_groups=2)


def test_per_user_stats_by_hand():
    r = _run([[0, 1], [3, 2]], targets=(1, 0))
    assert r["hit"].tolist() == [1.0, 0.0]
    assert r["ndcg"] == pytest.approx([1 / np.log2(3), 0.0])        # user A's target at rank 1: 1/log2(1 + 2)
    assert r["groups"].tolist() == [[2, 0], [0, 2]]
    inv = _run([[0, INVALID], [2, 1]])                                  # an invalid slot counts in no group
    assert inv["groups"].tolist() == [[1, 0], [1, 1]]


def test_group_statistics_on_resamples_by_hand():
    # A recommends {0, 1} (group 0), B recommends {2, 3} (group 1)
    r = _run([[0, 1], [2, 3]])
    idx = np.array([[0, 1], [0, 0], [1, 1]])
    # {A, B}: E = [.5, .5], GU = [-.5, .5] -> DGU 1, MGU .5;  {A, A}: E = H -> 0, 0;  {B, B}: E = [0, 1], GU = [-1, 1] -> 2, 1
    assert variant_stat([r], H, "DGU", idx) == pytest.approx([1.0, 0.0, 2.0])
    assert variant_stat([r], H, "MGU", idx) == pytest.approx([0.5, 0.0, 1.0])
    with pytest.raises(ValueError, match="unknown metric 'ORR'"):
        variant_stat([r], H, "ORR", idx)


def test_all_users_match_the_metrics_module():
    rng = np.random.default_rng(0)
    n_items, n = 30, 50
    counts = rng.integers(0, 20, n_items)
    topk = np.stack([rng.permutation(n_items)[:5] for _ in range(n)])
    topk[::7, 4] = INVALID
    tg = rng.integers(0, n_items, n)
    r = per_user_stats(topk, tg, counts, k=5, n_groups=3)
    m = evaluate_topk(topk, tg, counts, ks=(5,), n_groups=3)
    from components.evaluation.metrics import history_share, popularity_groups

    h = history_share(counts, popularity_groups(counts, 3), 3)
    for name in ("HR", "NDCG", "DGU", "MGU"):
        assert float(variant_stat([r], h, name, np.arange(n))) == pytest.approx(m[f"{name}@5"])


def test_two_user_bootstrap_interval_by_hand():
    ref = _run([[0, 1], [0, 1]], targets=(2, 2))            # hits nobody
    var = _run([[0, 1], [2, 1]], targets=(2, 2))            # hits B only: per-user Δ = [0, 1]
    p = paired_bootstrap([var], [ref], H, "HR", n_resamples=4000)
    # Δ(S) in {0, .5, 1} with probability 1/4, 1/2, 1/4: the 95% interval is [0, 1] -> includes 0
    assert p["delta"] == pytest.approx(0.5) and (p["low"], p["high"]) == (0.0, 1.0) and p["flag"] == "n.s."
    assert p["change"] is None and fmt_paired(p) == "n/a"   # the reference's HR is 0: no relative change

    # DGU: A {0, 1}, B {2, 3} (DGU on resamples 0 / 1 / 2) against a reference at DGU 1 on every resample
    var = _run([[0, 1], [2, 3]])
    ref = _run([[0, 2], [1, 3]])
    p = paired_bootstrap([var], [ref], H, "DGU", n_resamples=4000)
    assert p["delta"] == pytest.approx(0.0) and p["reference"] == pytest.approx(1.0)
    assert (p["low"], p["high"]) == (-1.0, 1.0) and (p["change_low"], p["change_high"]) == (-1.0, 1.0) and p["flag"] == "n.s."
    assert fmt_paired(p) == "+0.0% [-100.0, +100.0] (n.s.)"


def test_interval_is_the_percentile_one():
    # three users, Δ = [0, 0, 1]: resample means 0, 1/3, 2/3, 1 with P(0) = 8/27 and P(1) = 1/27 (both > 2.5%):
    # the percentile interval is [0, 1]; the "basic" one (2Δ - percentiles) would be [-1/3, 2/3]
    stats = [per_user_stats(np.array([[0, 1]] * 3), np.array(t), COUNTS, k=2, n_groups=2) for t in ((3, 3, 3), (3, 3, 0))]
    p = paired_bootstrap([stats[1]], [stats[0]], H, "HR", n_resamples=4000)
    assert p["delta"] == pytest.approx(1 / 3) and (p["low"], p["high"]) == (0.0, 1.0)


def test_a_difference_on_every_user_is_significant():
    var = _run([[0, 1], [0, 1]])                            # DGU 0 on every resample
    ref = _run([[2, 3], [2, 3]])                            # DGU 2 on every resample
    p = paired_bootstrap([var], [ref], H, "DGU", n_resamples=500)
    assert (p["delta"], p["low"], p["high"], p["change"]) == (-2.0, -2.0, -2.0, -1.0) and p["flag"] == "sig"
    assert fmt_paired(p) == "-100.0% [-100.0, -100.0]"


def test_resamples_are_paired():
    # a variant against itself: every resample gives Δ = 0 exactly; unpaired draws would not
    rng = np.random.default_rng(1)
    topk = np.stack([rng.permutation(4)[:2] for _ in range(40)])
    r = per_user_stats(topk, rng.integers(0, 4, 40), COUNTS, k=2, n_groups=2)
    for m in ("HR", "NDCG", "DGU", "MGU"):
        p = paired_bootstrap([r], [r], H, m, n_resamples=300)
        assert (p["delta"], p["low"], p["high"], p["flag"]) == (0.0, 0.0, 0.0, "n.s.")


def test_seeds_are_averaged_per_user():
    ref = _run([[2, 3], [2, 3]], targets=(0, 0))            # hits nobody
    s1 = _run([[0, 1], [2, 3]], targets=(0, 0))             # hits A
    s2 = _run([[0, 1], [0, 1]], targets=(0, 0))             # hits A and B
    # per-user HR over the two seeds: A 1, B .5 -> Δ on {A,A} 1, {A,B} .75, {B,B} .5: interval [.5, 1], significant;
    # the first seed alone would give [0, 1] (n.s.)
    p = paired_bootstrap([s1, s2], [ref], H, "HR", n_resamples=4000)
    assert p["delta"] == pytest.approx(0.75) and (p["low"], p["high"]) == (0.5, 1.0) and p["flag"] == "sig"


def test_bad_input():
    a = _run([[0, 1], [2, 3]])
    b = per_user_stats(np.array([[0, 1]]), np.array([0]), COUNTS, k=2, n_groups=2)
    with pytest.raises(ValueError, match="different numbers of users"):
        paired_bootstrap([a], [b], H, "HR")
    with pytest.raises(ValueError, match="at least one run"):
        paired_bootstrap([], [a], H, "HR")
    with pytest.raises(ValueError, match="n_resamples must be >= 1"):
        paired_bootstrap([a], [a], H, "HR", n_resamples=0)
    with pytest.raises(ValueError, match="reference variant 'tiger' has no results"):
        paired_vs({"x": [a]}, "tiger", COUNTS, k=2, n_groups=2)


def test_paired_vs_every_variant_but_the_reference():
    a, b = _run([[0, 1], [2, 3]]), _run([[0, 2], [1, 3]])
    out = paired_vs({"tiger": [b], "x": [a]}, "tiger", COUNTS, k=2, n_groups=2, n_resamples=200)
    assert set(out) == {"x"} and set(out["x"]) == {"HR@2", "NDCG@2", "DGU@2", "MGU@2"}
    assert out["x"]["DGU@2"]["reference"] == pytest.approx(1.0)    # history share from COUNTS: H = [1, 0]
