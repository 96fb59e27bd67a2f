"""Codebook rebalancer (CRAB): token popularity, balance-regularized splitting of over-popular
tokens under the hierarchy constraint, and the hierarchical alignment loss for the generator.

- :mod:`.popularity`          Eq. 3 / Eq. 8 token popularity, Gini, per-level statistics
- :mod:`.regularized_kmeans`  the split solver (K-means distance + lam * balance loss, Eq. 5-6)
- :mod:`.residuals`           item features and per-level residuals (embeddings / codewords / text)
- :mod:`.crab`                :func:`rebalance_codebook`: plan and apply splits, new codebook
- :mod:`.alignment`           Eq. 9 loss, Eq. 10 objective, embedding init, LoRA-on-attention recipe
- :mod:`.pipeline`            the ``rebalance`` stage (artifacts in, artifact + metrics out)
"""

import components.params  # noqa: F401  (first: components.params imports .params, which needs its Section)
from components.rebalancer.crab import RebalanceError, RebalanceResult, TokenSplit, detect_semantic_levels, rebalance_codebook
from components.rebalancer.popularity import gini, level_stats, pair_popularity, token_popularity

__all__ = [
    "RebalanceError",
    "RebalanceResult",
    "TokenSplit",
    "detect_semantic_levels",
    "gini",
    "level_stats",
    "pair_popularity",
    "rebalance_codebook",
    "token_popularity",
]
