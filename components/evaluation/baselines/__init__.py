"""Classical baselines evaluated by the same code on the same split: most-popular, SASRec,
re-ranking (RR) and loss re-weighting (RW) against popularity bias."""

from components.evaluation.baselines.popularity import most_popular_topk
from components.evaluation.baselines.rerank import popularity_penalty, rerank_scores, rerank_topk
from components.evaluation.baselines.reweight import popularity_weights
from components.evaluation.baselines.sasrec import SASRec, SASRecConfig, TrainConfig, train_sasrec

__all__ = [
    "SASRec",
    "SASRecConfig",
    "TrainConfig",
    "most_popular_topk",
    "popularity_penalty",
    "popularity_weights",
    "rerank_scores",
    "rerank_topk",
    "train_sasrec",
]
