"""Rank a split with constrained beam search; HR/NDCG on the result; popularity fallback."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from components.evaluation.metrics import hit_rate_at_k, ndcg_at_k
from components.generator.decoding import SIDTrie, constrained_beam_search
from components.generator.heads.base import EXTRA_USER


@torch.no_grad()
def rank_histories(model, trie: SIDTrie, history: np.ndarray, k: int, beam: int, batch_size: int = 256,
                   progress: bool = False, desc: str = "rank", users: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` item indices int32 [n, k] and scores float32 [n, k] for a [n, H] history matrix
    (left-aligned, -1 padded). Rows are decoded in batches; the model is put in eval mode.
    ``users`` (int [n], the split's dataset user indices) go to the heads as ``ctx.extras["user"]``
    (GenPlugin excludes the query user from its neighbours, as in training)."""
    was_training = model.training
    model.eval()
    n = history.shape[0]
    topk = np.empty((n, k), dtype=np.int32)
    scores = np.empty((n, k), dtype=np.float32)
    starts = range(0, n, batch_size)
    for s in tqdm(starts, desc=desc, disable=not progress, leave=False):
        hist = model.encode_history(history[s : s + batch_size])
        extras = None
        if users is not None:
            extras = {EXTRA_USER: torch.as_tensor(np.asarray(users[s : s + batch_size], dtype=np.int64), device=hist.tokens.device)}
        res = constrained_beam_search(model, hist, trie, beam=beam, k=k, extras=extras)
        topk[s : s + batch_size] = res.items.cpu().numpy()
        scores[s : s + batch_size] = res.scores.cpu().numpy()
    model.train(was_training)
    return topk, scores


def accuracy(topk: np.ndarray, targets: np.ndarray, ks=(5, 10)) -> dict[str, float]:
    out = {}
    for k in ks:
        if k <= topk.shape[1]:
            out[f"hr@{k}"] = hit_rate_at_k(topk, targets, k)
            out[f"ndcg@{k}"] = ndcg_at_k(topk, targets, k)
    return out


def popularity_weights(counts: np.ndarray, targets: np.ndarray, power: float) -> np.ndarray:
    """Per-sample loss weights for popularity re-weighting (RW): the evaluation component's per-item
    weights ``(count + 1)^(-power)`` taken at each sample's target, normalised to mean 1 over the
    samples (``power = 0`` gives all ones)."""
    from components.evaluation.baselines.reweight import popularity_weights as item_weights

    w = item_weights(counts, power).astype(np.float64)[np.asarray(targets)]
    return (w / w.mean()).astype(np.float32)
