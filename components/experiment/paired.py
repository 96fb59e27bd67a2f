"""Paired per-user bootstrap: is a variant's difference from the reference larger than the error
that comes from which users happen to be in the test split?

The report's seed flag (``aggregate.significance``) only sees model noise: every run ranks the
same test users, so the sampling error of a test set of ``n`` users is invisible to it (on
ML-100k, n = 943, HR@10 ≈ 0.1 moves by ~±0.02 from the users alone). This test adds it.

Per run (variant, seed) and test user ``u`` (``rank_u`` = 0-based position of the target in the
first K slots, or absent):

- ``hit_u  = 1[rank_u < K]``,  ``ndcg_u = 1[rank_u < K] / log2(rank_u + 2)``
- ``c_ug`` = number of valid top-K slots of user ``u`` holding an item of popularity group ``g``

On a multiset ``S`` of users (a bootstrap resample) a run's statistics are

- ``HR(S) = mean_{u∈S} hit_u``, ``NDCG(S) = mean_{u∈S} ndcg_u``
- ``E_g(S) = Σ_{u∈S} c_ug / Σ_{u∈S} Σ_g c_ug``, ``GU_g = E_g − H_g``,
  ``DGU(S) = max_g GU_g − min_g GU_g``, ``MGU(S) = mean_g |GU_g|``  (``H_g``: history share)

(on all users these are exactly ``metrics.evaluate_topk``'s values). A variant's value is the mean
over its seeds; ``Δ(S) = value_variant(S) − value_reference(S)``, the same ``S`` on both sides
(paired). ``S`` is drawn ``B`` times with replacement from the ``n`` test users (``scipy.stats.
bootstrap``); the difference is significant when the 95% percentile interval of ``Δ(S)`` excludes 0.
Changes are reported relative to the reference's value on all users.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from components.evaluation.metrics import INVALID, _hit_rank, _ndcg_per_sample, check_topk, history_share, popularity_groups

PAIRED_METRICS = ("HR", "NDCG", "DGU", "MGU")


def per_user_stats(topk: np.ndarray, targets: np.ndarray, train_counts: np.ndarray, k: int, n_groups: int = 5) -> dict[str, np.ndarray]:
    """``{"hit": [n], "ndcg": [n], "groups": [n, G]}`` of one run (see the module docstring)."""
    topk = check_topk(topk, targets, n_items=len(train_counts), k=k)
    rank = _hit_rank(topk, targets, k)
    groups = popularity_groups(train_counts, n_groups)
    slots = topk[:, :k]
    valid = slots != INVALID
    c = np.zeros((slots.shape[0], n_groups), dtype=np.float64)
    rows = np.broadcast_to(np.arange(slots.shape[0])[:, None], slots.shape)
    np.add.at(c, (rows[valid], groups[slots[valid]]), 1.0)
    return {"hit": (rank >= 0).astype(np.float64), "ndcg": _ndcg_per_sample(rank), "groups": c}


def _group_stats(c: np.ndarray, h: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(DGU, MGU) of one run on the user multisets ``idx`` (``[..., m]`` user indices)."""
    tot = c[idx].sum(axis=-2)                                # [..., G]
    n = tot.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        gu = np.where(n > 0, tot / n, np.nan) - h
    return gu.max(axis=-1) - gu.min(axis=-1), np.abs(gu).mean(axis=-1)


def variant_stat(runs: Sequence[dict[str, np.ndarray]], h: np.ndarray, metric: str, idx: np.ndarray) -> np.ndarray:
    """A variant's ``metric`` on the user multisets ``idx``, averaged over its runs (seeds)."""
    vals = []
    for r in runs:
        if metric == "HR":
            vals.append(r["hit"][idx].mean(axis=-1))
        elif metric == "NDCG":
            vals.append(r["ndcg"][idx].mean(axis=-1))
        elif metric in ("DGU", "MGU"):
            vals.append(_group_stats(r["groups"], h, idx)[0 if metric == "DGU" else 1])
        else:
            raise ValueError(f"paired test: unknown metric {metric!r} (known: {PAIRED_METRICS})")
    return np.mean(vals, axis=0)


def paired_bootstrap(variant: Sequence[dict[str, np.ndarray]], reference: Sequence[dict[str, np.ndarray]], history: np.ndarray,
                     metric: str, *, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Δ = variant − reference of ``metric`` on all users, its bootstrap ``confidence`` interval
    over users (paired resamples), the same as changes relative to the reference, and ``flag``:
    ``"sig"`` when the interval excludes 0, else ``"n.s."``."""
    from scipy.stats import bootstrap

    if not variant or not reference:
        raise ValueError("paired test: each side needs at least one run")
    n = len(reference[0]["hit"])
    if any(len(r["hit"]) != n for r in (*variant, *reference)):
        raise ValueError(f"paired test: runs rank different numbers of users ({sorted({len(r['hit']) for r in (*variant, *reference)})}); "
                         "a paired test needs the same test users on both sides")
    if n_resamples < 1:
        raise ValueError(f"paired test: n_resamples must be >= 1, got {n_resamples}")
    h = np.asarray(history, dtype=np.float64)
    everyone = np.arange(n)

    def stat(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        idx = np.moveaxis(np.asarray(idx), axis, -1)
        return variant_stat(variant, h, metric, idx) - variant_stat(reference, h, metric, idx)

    ref_all = float(variant_stat(reference, h, metric, everyone))
    delta = float(stat(everyone))

    res = bootstrap((everyone,), stat, n_resamples=n_resamples, confidence_level=confidence, method="percentile", vectorized=True,
                    batch=max(1, min(n_resamples, 4_000_000 // max(n, 1))), rng=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    rel = (lambda x: None if ref_all == 0 else x / abs(ref_all))
    flag = "n/a" if np.isnan(lo) or np.isnan(hi) else ("sig" if lo > 0 or hi < 0 else "n.s.")
    return {"delta": delta, "low": lo, "high": hi, "reference": ref_all, "change": rel(delta), "change_low": rel(lo),
            "change_high": rel(hi), "flag": flag, "n_users": n, "n_resamples": n_resamples, "confidence": confidence}


def paired_vs(stats: dict[str, Sequence[dict[str, np.ndarray]]], reference: str, train_counts: np.ndarray, k: int, n_groups: int = 5,
              metrics: Sequence[str] = PAIRED_METRICS, n_resamples: int = 2000, seed: int = 0) -> dict[str, dict[str, dict[str, Any]]]:
    """``{variant: {metric@k: paired_bootstrap(...)}}`` for every variant but ``reference``;
    ``stats[v]`` = the per-seed :func:`per_user_stats` of variant ``v``."""
    if reference not in stats:
        raise ValueError(f"reference variant {reference!r} has no results (have {sorted(stats)})")
    h = history_share(train_counts, popularity_groups(train_counts, n_groups), n_groups)
    return {v: {f"{m}@{k}": paired_bootstrap(runs, stats[reference], h, m, n_resamples=n_resamples, seed=seed) for m in metrics}
            for v, runs in stats.items() if v != reference}


def fmt_paired(p: dict[str, Any] | None) -> str:
    """``+12.3% [+1.0, +24.0]`` (relative change and its interval, in %); ``(n.s.)`` when it includes 0."""
    if p is None or p.get("change") is None:
        return "n/a"
    txt = f"{100 * p['change']:+.1f}% [{100 * p['change_low']:+.1f}, {100 * p['change_high']:+.1f}]"
    return txt if p["flag"] == "sig" else f"{txt} ({p['flag']})"
