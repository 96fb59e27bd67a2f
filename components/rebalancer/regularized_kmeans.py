"""Popularity-balance-regularized K-means over *weighted* points: how CRAB splits one token.

Given the children of an over-popular token (points ``x_c`` = mean residual of the child's items,
weight ``w_c`` = its number of items, popularity ``p_c``), assign each child to one of ``n`` new
tokens (CRAB Eq. 6, with the balance loss of Eq. 5)::

    J(z) = SSE(z) / S  +  lam * B(z)
    SSE(z) = sum_c w_c * ||x_c - mu_{z_c}||^2,   mu_k = sum_{c in k} w_c x_c / W_k    (item-weighted
             centroid; by the variance decomposition (Eq. 7) this equals the items' within-cluster
             distance up to a constant, since a child's items always move together)
    S      = sum_c w_c * ||x_c - xbar||^2          (total scatter: SSE / S lies in [0, 1])
    B(z)   = n / (n - 1) * sum_k (P_k / P - 1 / n)^2,  P_k = sum_{c in k} p_c,  P = sum_k P_k
             (Eq. 5's variance of the new tokens' popularity around the mean P / n, scaled to
             [0, 1]: 0 = perfectly even, 1 = one token holds everything)

Coincident children. When ``S <= rtol * max(W, sum_c w_c ||x_c||^2)`` (``W = sum_c w_c``,
``rtol = 1e-9``, :data:`SCATTER_RTOL`) the children count as one point and the distance term is
``SSE / S := 0``: only the balance term decides. This is the case at the last semantic level with
codeword features, where every item's residual is the same vector up to float32 rounding (measured
scatter ~5e-12): dividing that noise by itself would make ``SSE / S`` as large as the balance term
and let rounding choose the split. The tolerance is relative to the points' magnitude (squared
distances below ``rtol`` times their mean squared norm, i.e. relative distances below ~3e-5) with a
floor of unit norm per item (features are L2-normalized embeddings or their reconstructions; the
noise scatter grows with the number of items, hence ``W`` and not 1). float32 rounding noise is
~1e-14 per item, five orders below the floor; a real residual spread is ~1e-2 or more.

subject to: every new token receives at least one child with positive popularity (so each new
token is strictly less popular than the parent, and none is empty).

Solvers
- ``exact``: enumerates all ``n^m`` assignments (vectorized), for small ``m``; used automatically
  when ``n^m <= exact_max``.
- ``local``: deterministic seeding (k-means++ over positive-popularity children, D^2 weighted, from
  a seeded RNG), a greedy pass in decreasing popularity (the longest-processing-time rule for the
  balance term, plus the distance term), then Hartigan-style single-point moves, each accepted only
  if it lowers ``J`` exactly (closed-form deltas below), until no move helps (at most 50 sweeps;
  for ``m > large_m`` children a sweep moving <= 0.1% of them also stops it). ``n_init`` restarts
  (one when ``m > large_m``), the best ``J`` wins. Candidates per sweep are found vectorized, moves
  are applied one at a time with re-checked deltas. Like the hard-thresholding regularized K-means of Raymaekers & Zamar (2022)
  it alternates assignment and centroid updates on a penalized objective and decreases it
  monotonically; here the penalty is on cluster popularity rather than on centroid coordinates.

Closed-form move delta of child ``c`` (weight ``w``, popularity ``p``) from cluster ``a`` to ``b``::

    dSSE = w W_b / (W_b + w) ||x_c - mu_b||^2 - w W_a / (W_a - w) ||x_c - mu_a||^2
    dB   = n / (n - 1) / P^2 * 2 p (P_b - P_a + p)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EPS = 1e-12
SCATTER_RTOL = 1e-9  # S below this times max(W, sum_c w_c ||x_c||^2) = coincident children (module docstring)


@dataclass
class KMeansSplit:
    """Result of splitting one token: ``labels[c]`` = new-token index of child ``c``."""

    labels: np.ndarray  # int64 [m]
    objective: float
    sse: float  # normalized SSE / S
    balance: float  # B in [0, 1]
    solver: str


def _prepare(x: np.ndarray, w: np.ndarray, p: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """Checked float64 ``(x, w, p, inv_scatter, P)``; ``inv_scatter`` = ``1 / S``, or ``0.0`` when the
    children coincide (``S`` within the relative tolerance, module docstring): the distance term
    ``SSE * inv_scatter`` then vanishes in every solver and in :func:`objective`."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != w.size or w.size != p.size:
        raise ValueError(f"points {x.shape}, weights {w.shape} and popularity {p.shape} disagree")
    if n < 2:
        raise ValueError(f"a split needs n >= 2 new tokens, got {n}")
    if np.any(w <= 0) or np.any(p < 0):
        raise ValueError("child weights must be positive and popularity non-negative")
    npos = int((p > 0).sum())
    if npos < n:
        raise ValueError(f"cannot split into {n} tokens: only {npos} children have positive popularity")
    xbar = (w[:, None] * x).sum(0) / w.sum()
    scatter = float((w * ((x - xbar) ** 2).sum(1)).sum())
    scale = max(float(w.sum()), float((w * (x**2).sum(1)).sum()))
    inv_scatter = 0.0 if scatter <= SCATTER_RTOL * scale else 1.0 / scatter
    return x, w, p, inv_scatter, float(p.sum())


def objective(x: np.ndarray, w: np.ndarray, p: np.ndarray, labels: np.ndarray, n: int, lam: float) -> tuple[float, float, float]:
    """``(J, SSE / S, B)`` of an assignment (see the module docstring; ``SSE / S = 0`` for coincident
    children)."""
    x, w, p, inv_scatter, total = _prepare(x, w, p, n)
    labels = np.asarray(labels)
    W = np.bincount(labels, weights=w, minlength=n)
    sums = np.zeros((n, x.shape[1]))
    np.add.at(sums, labels, w[:, None] * x)
    nz = W > 0
    sse = float((w * (x**2).sum(1)).sum() - ((sums[nz] ** 2).sum(1) / W[nz]).sum())
    P = np.bincount(labels, weights=p, minlength=n)
    bal = float(n / (n - 1) * ((P / total - 1.0 / n) ** 2).sum())
    sse_n = max(sse, 0.0) * inv_scatter
    return sse_n + lam * bal, sse_n, bal


def _exact(x, w, p, n, lam, inv_scatter, total) -> np.ndarray:
    m = x.shape[0]
    codes = np.arange(n**m, dtype=np.int64)
    A = (codes[:, None] // (n ** np.arange(m, dtype=np.int64))[None, :]) % n  # [N, m] labels
    xx = float((w * (x**2).sum(1)).sum())
    pos = (p > 0).astype(np.float64)
    sse = np.full(A.shape[0], xx)
    bal = np.zeros(A.shape[0])
    feasible = np.ones(A.shape[0], dtype=bool)
    for k in range(n):
        mask = (A == k).astype(np.float64)
        Wk = mask @ w
        Sk = mask @ (w[:, None] * x)
        feasible &= (mask @ pos) >= 1
        with np.errstate(divide="ignore", invalid="ignore"):
            sse -= np.where(Wk > 0, (Sk**2).sum(1) / np.where(Wk > 0, Wk, 1.0), 0.0)
        bal += (mask @ p / total - 1.0 / n) ** 2
    J = np.maximum(sse, 0.0) * inv_scatter + lam * n / (n - 1) * bal
    J[~feasible] = np.inf
    return A[int(np.argmin(J))]


class _State:
    """Cluster statistics under incremental moves."""

    def __init__(self, x, w, p, n):
        d = x.shape[1]
        self.W = np.zeros(n)
        self.S = np.zeros((n, d))
        self.P = np.zeros(n)
        self.members = np.zeros(n, dtype=np.int64)
        self.pos = np.zeros(n, dtype=np.int64)
        self.x, self.w, self.p = x, w, p
        self._mu: np.ndarray | None = None

    def add(self, i: int, k: int, sign: int = 1) -> None:
        self.W[k] += sign * self.w[i]
        self.S[k] += sign * self.w[i] * self.x[i]
        self.P[k] += sign * self.p[i]
        self.members[k] += sign
        self.pos[k] += sign * int(self.p[i] > 0)
        self._mu = None

    def move(self, i: int, a: int, b: int) -> None:
        """Move point ``i`` from cluster ``a`` to ``b``, updating the two centroids in place."""
        wi, xi, pi = self.w[i], self.x[i], self.p[i]
        self.W[a] -= wi
        self.W[b] += wi
        self.S[a] -= wi * xi
        self.S[b] += wi * xi
        self.P[a] -= pi
        self.P[b] += pi
        self.members[a] -= 1
        self.members[b] += 1
        if pi > 0:
            self.pos[a] -= 1
            self.pos[b] += 1
        if self._mu is not None:
            self._mu[a] = self.S[a] / max(self.W[a], _EPS)
            self._mu[b] = self.S[b] / max(self.W[b], _EPS)

    def add_many(self, idx: np.ndarray, ks: np.ndarray) -> None:
        n = self.W.size
        self.W += np.bincount(ks, weights=self.w[idx], minlength=n)
        np.add.at(self.S, ks, self.w[idx, None] * self.x[idx])
        self.P += np.bincount(ks, weights=self.p[idx], minlength=n)
        self.members += np.bincount(ks, minlength=n)
        self.pos += np.bincount(ks, weights=(self.p[idx] > 0).astype(np.float64), minlength=n).astype(np.int64)
        self._mu = None

    def mu(self) -> np.ndarray:
        if self._mu is None:
            self._mu = self.S / np.maximum(self.W, _EPS)[:, None]
        return self._mu


def _local(x, w, p, n, lam, inv_scatter, total, rng: np.random.Generator, max_sweeps: int = 50, large_m: int = 2000) -> np.ndarray:
    m = x.shape[0]
    bscale = lam * n / (n - 1) / total**2
    positive = np.flatnonzero(p > 0)
    # k-means++ seeding among positive-popularity children
    seeds = [int(rng.choice(positive, p=p[positive] / p[positive].sum()))]
    d2 = ((x[positive] - x[seeds[0]]) ** 2).sum(1)
    for _ in range(1, n):
        cand = d2.copy()
        cand[np.isin(positive, seeds)] = 0.0
        if inv_scatter == 0.0 or cand.sum() <= _EPS:  # remaining points coincide with a seed: pick by popularity
            free = positive[~np.isin(positive, seeds)]
            nxt = int(free[np.argmax(p[free])])
        else:
            nxt = int(positive[rng.choice(positive.size, p=cand / cand.sum())])
        seeds.append(nxt)
        d2 = np.minimum(d2, ((x[positive] - x[nxt]) ** 2).sum(1))
    labels = np.full(m, -1, dtype=np.int64)
    st = _State(x, w, p, n)
    for k, s in enumerate(seeds):
        labels[s] = k
        st.add(s, k)
    # greedy pass in decreasing popularity, cost = distance increase + balance increase; the most
    # popular children go one at a time, then chunks that double in size (small children barely
    # move the balance, and a chunk is scored in one vectorized step against the current clusters)
    target = total / n
    order = np.lexsort((np.arange(m), -p))
    order = order[labels[order] < 0]
    pos, chunk = 0, 1
    while pos < order.size:
        idx = order[pos : pos + chunk]
        mu = st.mu()
        D = ((x[idx, None, :] - mu[None, :, :]) ** 2).sum(2)
        wi, pi = w[idx, None], p[idx, None]
        cost = wi * st.W[None, :] / (st.W[None, :] + wi) * D * inv_scatter + bscale * (2.0 * pi * (st.P[None, :] - target) + pi**2)
        k = np.argmin(cost, axis=1)
        labels[idx] = k
        st.add_many(idx, k)
        pos += idx.size
        if pos >= 2 * n:
            chunk = min(chunk * 2, 4096)
    # Hartigan refinement with exact deltas
    rows = np.arange(m)
    xx = (x**2).sum(1)
    for _ in range(max_sweeps):
        mu = st.mu()
        D = np.maximum(xx[:, None] - 2.0 * (x @ mu.T) + (mu**2).sum(1)[None, :], 0.0)  # [m, n] squared distances
        a = labels
        Wa = st.W[a]
        with np.errstate(divide="ignore", invalid="ignore"):
            rem = np.where(Wa - w > _EPS, w * Wa / (Wa - w), np.inf) * D[rows, a]
        add = w[:, None] * st.W[None, :] / (st.W[None, :] + w[:, None]) * D
        dist = (add - rem[:, None]) * inv_scatter if inv_scatter > 0.0 else 0.0  # (inf * 0 would be NaN)
        delta = dist + bscale * 2.0 * p[:, None] * (st.P[None, :] - st.P[a][:, None] + p[:, None])
        delta[rows, a] = np.inf
        locked = (st.members[a] <= 1) | ((p > 0) & (st.pos[a] <= 1))
        delta[locked] = np.inf
        best = delta.min(1)
        cand = np.flatnonzero(best < -1e-12)
        if cand.size == 0:
            break
        cand = cand[np.argsort(best[cand], kind="stable")]
        moved = 0
        for i in cand.tolist():
            ai = int(labels[i])
            wi, pi = float(w[i]), float(p[i])
            if st.members[ai] <= 1 or (pi > 0 and st.pos[ai] <= 1):
                continue
            Wa = float(st.W[ai])
            if Wa - wi <= _EPS:
                continue
            di = ((x[i] - st.mu()) ** 2).sum(1)
            dl = (wi * st.W / (st.W + wi) * di - wi * Wa / (Wa - wi) * di[ai]) * inv_scatter + (bscale * 2.0 * pi) * (st.P - (float(st.P[ai]) - pi))
            dl[ai] = np.inf
            b = int(np.argmin(dl))
            if dl[b] < -1e-12:
                st.move(i, ai, b)
                labels[i] = b
                moved += 1
        if moved == 0 or (m > large_m and moved <= m // 1000):
            break
    return labels


def split_children(
    x: np.ndarray,
    w: np.ndarray,
    p: np.ndarray,
    n: int,
    lam: float = 1.0,
    seed: int | np.random.SeedSequence | list[int] = 0,
    n_init: int = 4,
    exact_max: int = 20_000,
    solver: str = "auto",
    large_m: int = 2000,
) -> KMeansSplit:
    """Assign ``m`` children to ``n`` new tokens minimizing ``J`` (module docstring).

    ``solver``: ``"auto"`` (exact when ``n^m <= exact_max``, else local), ``"exact"`` or ``"local"``.
    Local search restarts ``n_init`` times, once when ``m > large_m`` (large splits: the greedy pass
    is already close and each restart costs O(m) Python steps).
    Labels are returned so that new token 0 is the most popular (ties: lowest first child)."""
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    x, w, p, inv_scatter, total = _prepare(x, w, p, n)
    m = x.shape[0]
    use_exact = solver == "exact" or (solver == "auto" and m * np.log(n) <= np.log(max(exact_max, 1)))
    if solver not in ("auto", "exact", "local"):
        raise ValueError(f"unknown solver {solver!r}")
    if use_exact:
        if m * np.log(n) > np.log(5_000_000):
            raise ValueError(f"exact solver refuses {n}^{m} assignments")
        labels = _exact(x, w, p, n, lam, inv_scatter, total)
        name = "exact"
    else:
        rng = np.random.default_rng(seed)
        best, best_j = None, np.inf
        restarts = max(1, n_init) if m <= large_m else 1
        for _ in range(restarts):
            lab = _local(x, w, p, n, lam, inv_scatter, total, rng, large_m=large_m)
            j = objective(x, w, p, lab, n, lam)[0]
            if j < best_j - 1e-12:
                best, best_j = lab, j
        labels = best
        name = "local"
    # canonical order: most popular new token first, ties by first member
    P = np.bincount(labels, weights=p, minlength=n)
    first = np.array([np.flatnonzero(labels == k)[0] for k in range(n)])
    order = np.lexsort((first, -P))
    remap = np.empty(n, dtype=np.int64)
    remap[order] = np.arange(n)
    labels = remap[labels]
    j, s, b = objective(x, w, p, labels, n, lam)
    return KMeansSplit(labels=labels.astype(np.int64), objective=j, sse=s, balance=b, solver=name)
