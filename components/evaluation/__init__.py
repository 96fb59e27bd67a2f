"""Evaluation: accuracy and popularity-bias metrics on ranked lists, token-level bias, classical
baselines (most-popular, SASRec, RR re-ranking, RW re-weighting) and the bias report."""

import components.params  # noqa: F401  (load the params root first: it imports this package's params module)
