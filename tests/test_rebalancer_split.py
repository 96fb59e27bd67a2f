"""The split solver: balance-regularized K-means over weighted children (exact and local search)."""

import numpy as np
import pytest

from components.rebalancer.regularized_kmeans import objective, split_children


def test_objective_hand_computed():
    # points 0, 2 (cluster 0) and 10 (cluster 1), unit weights; popularity 1, 1, 2
    x = np.array([[0.0], [2.0], [10.0]])
    w = np.ones(3)
    p = np.array([1.0, 1.0, 2.0])
    j, sse, bal = objective(x, w, p, np.array([0, 0, 1]), 2, lam=1.0)
    # SSE = 1 + 1 + 0 = 2; total scatter around mean 4: 16 + 4 + 36 = 56
    assert sse == pytest.approx(2 / 56)
    assert bal == pytest.approx(0.0)  # P = (2, 2)
    j2, _, bal2 = objective(x, w, p, np.array([0, 1, 1]), 2, lam=1.0)
    # P = (1, 3) of 4: shares (.25, .75): 2 * ((.25-.5)^2 + (.75-.5)^2) = 0.25
    assert bal2 == pytest.approx(0.25)
    assert j < j2


def test_lam_zero_separates_blobs_and_large_lam_balances():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (6, 2)), rng.normal(5, 0.1, (2, 2))])
    w = np.ones(8)
    p = np.array([1, 1, 1, 1, 1, 1, 10, 10], dtype=float)  # the far blob holds most popularity
    geo = split_children(x, w, p, 2, lam=0.0, solver="local", seed=1)
    assert len(set(geo.labels[:6])) == 1 and len(set(geo.labels[6:])) == 1 and geo.labels[0] != geo.labels[6]
    bal = split_children(x, w, p, 2, lam=100.0, solver="exact")
    P = np.bincount(bal.labels, weights=p)
    assert abs(P[0] - P[1]) <= 2  # 13 / 13 is reachable: one popular child per side
    assert bal.balance < geo.balance


@pytest.mark.parametrize("seed", range(5))
def test_every_new_token_gets_a_popular_child(seed):
    rng = np.random.default_rng(seed)
    m, n = 30, 4
    x = rng.normal(size=(m, 3))
    w = rng.integers(1, 4, m).astype(float)
    p = np.zeros(m)
    p[rng.choice(m, 5, replace=False)] = rng.integers(1, 100, 5)  # only 5 children are popular
    res = split_children(x, w, p, n, lam=1.0, seed=seed, solver="local")
    P = np.bincount(res.labels, weights=p, minlength=n)
    assert (P > 0).all() and P.sum() == p.sum()
    assert P[0] == P.max()  # canonical order: most popular new token first


def test_local_search_matches_exact_optimum_on_small_cases():
    hits, excess = 0, []
    cases = 40
    for s in range(cases):
        rng = np.random.default_rng(100 + s)
        m, n = int(rng.integers(4, 9)), int(rng.integers(2, 4))
        x = rng.normal(size=(m, 3))
        w = rng.integers(1, 5, m).astype(float)
        p = rng.integers(0, 50, m).astype(float)
        p[:n] += 1
        lam = float(rng.choice([0.0, 0.3, 1.0, 5.0]))
        ex = split_children(x, w, p, n, lam=lam, solver="exact")
        lo = split_children(x, w, p, n, lam=lam, solver="local", seed=s)
        assert lo.objective >= ex.objective - 1e-9  # exact is a lower bound
        hits += lo.objective <= ex.objective + 1e-9
        excess.append(lo.objective / ex.objective - 1 if ex.objective > 0 else 0.0)
    assert hits >= 0.85 * cases, f"local search found the optimum in only {hits}/{cases} cases"
    assert np.mean(excess) < 0.05  # measured: 39/40 optimal, one local minimum 37% above (n_init=4)


def test_auto_uses_exact_for_tiny_problems():
    x = np.arange(5, dtype=float)[:, None]
    assert split_children(x, np.ones(5), np.ones(5), 2).solver == "exact"
    x = np.arange(40, dtype=float)[:, None]
    assert split_children(x, np.ones(40), np.ones(40), 3).solver == "local"


def test_split_errors():
    x = np.zeros((3, 2))
    with pytest.raises(ValueError, match="n >= 2"):
        split_children(x, np.ones(3), np.ones(3), 1)
    with pytest.raises(ValueError, match="only 1 children have positive popularity"):
        split_children(x, np.ones(3), np.array([0.0, 0.0, 5.0]), 2)
    with pytest.raises(ValueError, match="lam"):
        split_children(x, np.ones(3), np.ones(3), 2, lam=-1)


# ---- coincident children (float noise) ---------------------------------------------------------
# Four children, 5 items each (W = 20), popularity 4, 3, 2, 1 (P = 10), all at the unit vector
# (0.6, 0.8) except +-delta on the first coordinate: children 0, 1 at +delta, 2, 3 at -delta.
# Scatter S = 20 * delta^2. Geometry alone says {0, 1} | {2, 3} (SSE = 0, P = (7, 3), B = 0.16);
# balance alone says {0, 3} | {1, 2} (P = (5, 5), B = 0, the only even split; SSE / S = 1).
_COINCIDENT_W = np.full(4, 5.0)
_COINCIDENT_P = np.array([4.0, 3.0, 2.0, 1.0])


def _coincident_points(scale: float, delta: float) -> np.ndarray:
    x = np.tile(np.array([0.6, 0.8]) * scale, (4, 1))
    x[:, 0] += np.array([1.0, 1.0, -1.0, -1.0]) * delta
    return x


@pytest.mark.parametrize("scale, delta", [(1.0, 5e-7), (1e3, 1e-3)])
@pytest.mark.parametrize("solver", ["exact", "local"])
def test_float_noise_scatter_counts_as_coincident_children(scale, delta, solver):
    """Scatter within the relative tolerance (S <= 1e-9 * max(W, sum_c w_c ||x_c||^2)) is rounding
    noise: SSE / S := 0 and balance alone decides. (1, 5e-7): S = 20 * 2.5e-13 = 5e-12, above the old
    absolute 1e-12 and below 1e-9 * max(20, 20) = 2e-8; (1e3, 1e-3): relative spread 1e-6, S = 2e-5
    against 1e-9 * 20 * 1e6 = 2e-2. The old code divided the noise by itself (SSE / S = 0 for the
    geometric split, J = 0.16 < 1) and returned labels [0, 0, 1, 1]."""
    x = _coincident_points(scale, delta)
    res = split_children(x, _COINCIDENT_W, _COINCIDENT_P, 2, lam=1.0, solver=solver, seed=0)
    assert res.labels.tolist() == [0, 1, 1, 0]  # {0, 3} | {1, 2}: P = (5, 5); tie -> child 0's token first
    assert res.sse == 0.0 and res.balance == pytest.approx(0.0, abs=1e-15) and res.objective == pytest.approx(0.0, abs=1e-15)
    # objective() agrees with the solvers: no distance term for any assignment
    assert objective(x, _COINCIDENT_W, _COINCIDENT_P, np.array([0, 0, 1, 1]), 2, 1.0) == pytest.approx((0.16, 0.0, 0.16))
    assert objective(x, _COINCIDENT_W, _COINCIDENT_P, np.array([0, 1, 1, 0]), 2, 1.0)[1] == 0.0


@pytest.mark.parametrize("solver", ["exact", "local"])
def test_scatter_above_tolerance_still_splits_by_distance(solver):
    """delta = 1e-4: S = 20 * 1e-8 = 2e-7 > 2e-8, a real (tiny) spread. J({0,1}|{2,3}) = 0 + 0.16,
    J({0,3}|{1,2}) = 1 + 0, J({0,2}|{1,3}) = 1 + 0.04, a singleton split >= 2/3: geometry wins."""
    x = _coincident_points(1.0, 1e-4)
    res = split_children(x, _COINCIDENT_W, _COINCIDENT_P, 2, lam=1.0, solver=solver, seed=0)
    assert res.labels.tolist() == [0, 0, 1, 1]
    assert res.sse == pytest.approx(0.0, abs=1e-9) and res.balance == pytest.approx(0.16)


# ---- mutation guards: hand-computed splits a wrong CRAB gets wrong -----------------------------
def test_mutation_guard_sse_weights_children_by_item_count():
    """Guards against dropping Eq. 6's item-count weights w_c (children weighted equally in the SSE
    and the centroids).

    1-D children x = 0, 1.1, 2 with w = 1, 1, 10 items and popularity 3, 0, 10. Child 1 has no
    popularity, so both feasible splits have P = (10, 3) and the same B: the distance term decides.
    Weighted (Eq. 6): SSE({0,1}|{2}) = 1*1/2 * 1.1^2 = 0.605 < SSE({0}|{1,2}) = 1*10/11 * 1.1^2 = 0.73636
    (child 2's ten items pull the centroid to 1.918). Unweighted: 0.605 > 2 * 0.45^2 = 0.405, i.e.
    {0} | {1, 2}. {1} | {0, 2} is infeasible (a token without popularity).
    S = sum w x^2 - W xbar^2 = 41.21 - 21.1^2 / 12 = 4.109167; B = 2 * ((10/13 - 1/2)^2 + (3/13 - 1/2)^2)."""
    x = np.array([[0.0], [1.1], [2.0]])
    w = np.array([1.0, 1.0, 10.0])
    p = np.array([3.0, 0.0, 10.0])
    S = 41.21 - 21.1**2 / 12
    B = 2 * ((10 / 13 - 0.5) ** 2 + (3 / 13 - 0.5) ** 2)
    for solver in ("exact", "local"):
        res = split_children(x, w, p, 2, lam=1.0, solver=solver, seed=0)
        assert res.labels.tolist() == [1, 1, 0], solver  # {2} (P = 10) is token 0, {0, 1} token 1
        assert res.sse == pytest.approx(0.605 / S) and res.balance == pytest.approx(B)
        assert res.objective == pytest.approx(0.605 / S + B)


def test_mutation_guard_balance_on_interactions_not_item_counts():
    """Guards against balancing the new tokens' item counts instead of their interactions (Eq. 5:
    P_k = sum of the children's popularity p_c, not of their weights w_c).

    All four children coincide (distance term 0), w = 1, 1, 1, 3 items, p = 5, 4, 2, 1 interactions.
    The only even split of the interactions is {0, 3} | {1, 2} (6 | 6, B = 0); balancing item counts
    would pick {3} | {0, 1, 2} (3 | 3 items, but interactions 1 | 11: B = 4 * (5/12)^2 = 0.694)."""
    x = np.zeros((4, 2))
    w = np.array([1.0, 1.0, 1.0, 3.0])
    p = np.array([5.0, 4.0, 2.0, 1.0])
    for solver in ("exact", "local"):
        res = split_children(x, w, p, 2, lam=1.0, solver=solver, seed=0)
        assert res.labels.tolist() == [0, 1, 1, 0], solver  # tie 6 | 6 -> child 0's token first
        assert res.balance == pytest.approx(0.0, abs=1e-15) and res.objective == pytest.approx(0.0, abs=1e-15)
    assert objective(x, w, p, np.array([1, 1, 1, 0]), 2, 1.0)[2] == pytest.approx(4 * (5 / 12) ** 2)
