"""Seed aggregation: mean ± std of every scalar metric over a variant's seeds, and the change of
each variant versus a reference variant with a noise flag.

- ``std`` is the sample standard deviation (ddof = 1) over seeds; 0 with one seed.
- Relative change: ``(mean_v - mean_ref) / |mean_ref|`` (None when the reference mean is 0).
- Noise flag: a difference is *within noise* when ``|mean_v - mean_ref| < 2 * max(std_v, std_ref)``;
  with fewer than 2 seeds on either side there is no std and the difference is *unknown* ("1 seed").
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

CHANGE_METRICS = ("HR", "NDCG", "DGU", "MGU", "DivR", "ORR", "HR_tail", "coverage")


def aggregate(per_seed: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{metric: {"mean", "std", "n"}}`` over the scalar (number) metrics every seed has."""
    if not per_seed:
        raise ValueError("no seed to aggregate")
    keys = [k for k, v in per_seed[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    out: dict[str, dict[str, float]] = {}
    for k in keys:
        vals = [r.get(k) for r in per_seed]
        if any(v is None or not isinstance(v, (int, float)) for v in vals):
            continue
        arr = np.asarray(vals, dtype=np.float64)
        out[k] = {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0, "n": int(arr.size)}
    return out


def significance(a: dict[str, float], ref: dict[str, float]) -> str:
    """``"sig"``, ``"n.s."`` (within 2 std) or ``"1 seed"`` (no std to judge by)."""
    if a["n"] < 2 or ref["n"] < 2:
        return "1 seed"
    return "n.s." if abs(a["mean"] - ref["mean"]) < 2.0 * max(a["std"], ref["std"]) else "sig"


def relative_change(a: float, ref: float) -> float | None:
    return None if ref == 0 else (a - ref) / abs(ref)


def change_vs(agg: dict[str, dict[str, dict[str, float]]], reference: str, k: int, metrics: Sequence[str] = CHANGE_METRICS) -> dict[str, dict[str, dict[str, Any]]]:
    """``{variant: {metric@k: {"change", "flag"}}}`` for every variant but the reference."""
    if reference not in agg:
        raise ValueError(f"reference variant {reference!r} has no results (have {sorted(agg)})")
    ref = agg[reference]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for v, m in agg.items():
        if v == reference:
            continue
        row = {}
        for name in metrics:
            key = f"{name}@{k}"
            if key in m and key in ref:
                row[key] = {"change": relative_change(m[key]["mean"], ref[key]["mean"]), "flag": significance(m[key], ref[key])}
        out[v] = row
    return out


def fmt_mean_std(s: dict[str, float] | None, digits: int = 4) -> str:
    if s is None or s.get("mean") is None or (isinstance(s["mean"], float) and math.isnan(s["mean"])):
        return "n/a"
    return f"{s['mean']:.{digits}f}" if s["n"] < 2 else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def fmt_change(c: dict[str, Any] | None) -> str:
    if c is None or c["change"] is None:
        return "n/a"
    txt = f"{100 * c['change']:+.1f}%"
    return txt if c["flag"] == "sig" else f"{txt} ({c['flag']})"
