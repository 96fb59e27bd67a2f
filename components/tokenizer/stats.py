"""Codebook health statistics per level, and the token-popularity plot.

For level ``l`` with ``K_l`` codes, ``n_l(c)`` items carrying token ``c`` and training counts
``f(i)`` (``Dataset.train_item_counts``):

- utilization ``= |{c : n_l(c) > 0}| / K_l``
- entropy ``H_l = -Σ_c p(c) log2 p(c)`` with ``p(c) = n_l(c) / n`` (bits), and
  ``entropy_norm = H_l / log2 K_l``
- token popularity (CRAB Eq. 3) ``P_l(c) = Σ_{i : c_l(i) = c} f(i)``; ``gini`` is the Gini
  coefficient of ``P_l`` over the *used* tokens, ``G = Σ_j (2j - m - 1) P_(j) / (m Σ_j P_(j))``
  with ``P_(1) ≤ … ≤ P_(m)``; ``top_token_share = max_c P_l(c) / Σ_c P_l(c)``
- prefix_collisions ``= n - |{(c_0..c_l)(i)}|``: items whose prefix up to ``l`` another item has
- quant_error ``= mean_i ||x_i - Σ_{j≤l} C_j[c_j(i)]||²`` in the method's own space (embeddings
  for RQ-KMeans, latents for RQ-VAE), with ``quant_error_rel`` = that / ``mean_i ||x_i - x̄||²`` (share of the variance left)
- prefix_error ``= mean_i ||e_i - mean{e_j : prefix_l(j) = prefix_l(i)}||²`` in the text
  embedding space: a method-agnostic measure (works for any SIDs, e.g. released ones)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from components.data.stats import gini  # noqa: F401  (one Gini for the whole project; re-exported)


def entropy_bits(counts: np.ndarray) -> float:
    p = np.asarray(counts, dtype=np.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log2(p)).sum()) if p.size else 0.0


def token_popularity(tokens: np.ndarray, size: int, item_counts: np.ndarray) -> np.ndarray:
    """CRAB Eq. 3: ``P(c) = Σ_{i: token(i)=c} f(i)`` for every code ``c`` of the level."""
    return np.bincount(tokens, weights=np.asarray(item_counts, dtype=np.float64), minlength=size)


def prefix_groups(sids: np.ndarray, level: int) -> np.ndarray:
    return np.unique(sids[:, : level + 1], axis=0, return_inverse=True)[1].reshape(-1)


def prefix_error(emb: np.ndarray, groups: np.ndarray) -> float:
    g = int(groups.max()) + 1
    sums = np.zeros((g, emb.shape[1]), dtype=np.float64)
    np.add.at(sums, groups, emb)
    cnt = np.bincount(groups, minlength=g)
    cent = sums / cnt[:, None]
    return float(((emb - cent[groups]) ** 2).sum(1).mean())


def codebook_stats(
    sids: np.ndarray,
    sizes: list[int],
    item_counts: np.ndarray | None = None,
    embeddings: np.ndarray | None = None,
    quant_error: list[float] | None = None,
    quant_norm: float | None = None,
) -> dict[str, Any]:
    """Per-level statistics (``levels`` list) plus totals; see the module docstring."""
    sids = np.asarray(sids)
    n, L = sids.shape
    levels = []
    for lvl in range(L):
        tok = sids[:, lvl].astype(np.int64)
        cnt = np.bincount(tok, minlength=sizes[lvl])
        used = int((cnt > 0).sum())
        s: dict[str, Any] = {
            "level": lvl,
            "size": int(sizes[lvl]),
            "used": used,
            "utilization": used / sizes[lvl],
            "entropy": entropy_bits(cnt),
            "entropy_norm": entropy_bits(cnt) / np.log2(sizes[lvl]) if sizes[lvl] > 1 else 0.0,
            "max_items_per_token": int(cnt.max()),
            "prefix_collisions": int(n - len(np.unique(sids[:, : lvl + 1], axis=0))),
        }
        if item_counts is not None:
            pop = token_popularity(tok, sizes[lvl], item_counts)
            s["gini"] = gini(pop[cnt > 0])
            s["top_token_share"] = float(pop.max() / pop.sum()) if pop.sum() > 0 else 0.0
        if quant_error is not None and lvl < len(quant_error):
            s["quant_error"] = float(quant_error[lvl])
            if quant_norm:
                s["quant_error_rel"] = float(quant_error[lvl] / quant_norm)
        if embeddings is not None:
            s["prefix_error"] = prefix_error(embeddings, prefix_groups(sids, lvl))
        levels.append(s)
    return {"n_items": int(n), "n_levels": int(L), "sizes": [int(x) for x in sizes], "collisions": int(n - len(np.unique(sids, axis=0))), "levels": levels}


def plot_token_popularity(sids: np.ndarray, sizes: list[int], item_counts: np.ndarray, path: str, title: str = "") -> None:
    """PNG: each level's token popularity (CRAB Eq. 3), sorted descending, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L = sids.shape[1]
    fig, axes = plt.subplots(1, L, figsize=(4 * L, 3.2), squeeze=False)
    for lvl, ax in enumerate(axes[0]):
        tok = sids[:, lvl].astype(np.int64)
        used = np.bincount(tok, minlength=sizes[lvl]) > 0
        pop = token_popularity(tok, sizes[lvl], item_counts)
        ax.bar(np.arange(len(pop)), np.sort(pop)[::-1], width=1.0)
        ax.set_yscale("symlog")
        ax.set_title(f"level {lvl} (Gini {gini(pop[used]):.2f})")
        ax.set_xlabel("token rank")
        if lvl == 0:
            ax.set_ylabel("training interactions")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
