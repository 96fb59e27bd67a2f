"""Baselines: most-popular, RR re-ranking, RW weights (hand-computed), SASRec (causality, padding,
learning a synthetic pattern, determinism, registry round trip)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from components.evaluation.baselines import (
    SASRec,
    SASRecConfig,
    TrainConfig,
    most_popular_topk,
    popularity_weights,
    rerank_scores,
    rerank_topk,
    train_sasrec,
)
from components.evaluation.baselines.sasrec import right_align, training_chunks
from components.evaluation.metrics import RankingError, hit_rate_at_k
from components.registry import ArtifactCorrupted


def test_most_popular():
    assert most_popular_topk(np.array([1, 5, 5, 0]), 3, 2).tolist() == [[1, 2]] * 3
    with pytest.raises(RankingError):
        most_popular_topk(np.array([1, 2]), 3, 3)


def test_popularity_weights_hand_computed():
    w = popularity_weights(np.array([3, 1, 0]), power=1.0)
    # raw (1/4, 1/2, 1); Z = (3/4 + 1/2) / 4 = 0.3125
    np.testing.assert_allclose(w, [0.8, 1.6, 3.2], rtol=1e-6)
    assert (3 * w[0] + w[1]) / 4 == pytest.approx(1.0)  # mean 1 over training samples
    np.testing.assert_allclose(popularity_weights(np.array([3, 1, 0]), 0.0), [1, 1, 1])
    with pytest.raises(RankingError, match="power"):
        popularity_weights(np.array([1]), -1)


def test_rerank_hand_computed():
    scores = np.array([[3.0, 2.9, 1.0], [0.0, 0.1, 0.2]])
    counts = np.array([100, 0, 0])
    assert rerank_scores(scores, counts, 0.0, 3).tolist() == [[0, 1, 2], [2, 1, 0]]
    # gamma 0.1: item 0 loses 0.1 * ln(101) = 0.46
    assert rerank_scores(scores, counts, 0.1, 2).tolist() == [[1, 0], [2, 1]]
    cand = np.array([[0, 1, -1]])
    assert rerank_topk(cand, np.array([[3.0, 2.9, 9.0]]), counts, 0.1, 3).tolist() == [[1, 0, -1]]
    assert 0.1 * math.log(101) > 0.1
    with pytest.raises(RankingError, match="gamma"):
        rerank_scores(scores, counts, -1.0, 2)


def test_right_align_and_chunks():
    h = np.array([[1, 2, 3, -1], [4, -1, -1, -1], [-1, -1, -1, -1]])
    assert right_align(h, 3, 9).tolist() == [[1, 2, 3], [9, 9, 4], [9, 9, 9]]
    assert right_align(h, 2, 9).tolist() == [[2, 3], [9, 4], [9, 9]]
    assert right_align([[1, 2], [5]], 3, 9).tolist() == [[9, 1, 2], [9, 9, 5]]
    x, y = training_chunks([[1, 2, 3, 4, 5], [7, 8], [6]], 2, 9)
    assert x.tolist() == [[3, 4], [1, 2], [9, 7]]
    assert y.tolist() == [[4, 5], [2, 3], [-100, 8]]


def _model(n_items=12, max_len=5):
    torch.manual_seed(0)
    m = SASRec(SASRecConfig(n_items=n_items, max_len=max_len, d_model=16, n_layers=2, n_heads=2, dropout=0.0))
    return m.eval()


def test_sasrec_causal_and_padding_invariance():
    m = _model()
    seq = torch.tensor([[12, 1, 2, 3, 4]])  # right-aligned, pad = 12
    seq2 = seq.clone()
    seq2[0, 4] = 7  # change only the last position
    with torch.no_grad():
        h1, h2 = m.hidden(seq), m.hidden(seq2)
    torch.testing.assert_close(h1[:, :4], h2[:, :4])  # earlier positions do not see later items
    assert not torch.allclose(h1[:, 4], h2[:, 4])
    # the same history, padded to different widths, gives the same user vector; no NaN from pads
    a = m.encode(np.array([[1, 2, 3, -1, -1, -1]]))
    b = m.encode([[1, 2, 3]])
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    e = m.encode(np.array([[-1, -1]]))
    assert np.isfinite(e).all() and e.shape == (1, 16)
    assert m.item_embeddings().shape == (12, 16)
    with pytest.raises(RankingError, match="outside the catalog"):
        m.encode([[12]])


def _synthetic(n_items=12, n_users=60, length=8, seed=0):
    """Each user walks i -> i+1 (mod n) from a random start: the next item is determined by the last."""
    rng = np.random.default_rng(seed)
    seqs = [[(s + j) % n_items for j in range(length)] for s in rng.integers(0, n_items, n_users)]
    hist = np.array([s[-5:-1] for s in seqs[:20]])
    tgt = np.array([s[-1] for s in seqs[:20]])
    return [s[:-1] for s in seqs], hist, tgt


def test_sasrec_learns_pattern_deterministically(registry):
    train, vh, vt = _synthetic()
    mc = SASRecConfig(n_items=12, max_len=5, d_model=16, n_layers=1, n_heads=2, dropout=0.0)
    tc = TrainConfig(epochs=25, batch_size=32, lr=1e-2, patience=25, seed=7)
    r1 = train_sasrec(train, vh, vt, mc, tc, progress=False)
    topk, scores = r1.model.score_topk(vh, 3)
    assert hit_rate_at_k(topk, vt, 1) >= 0.9
    assert r1.best_valid_ndcg10 >= 0.9 and 1 <= r1.best_epoch <= len(r1.history)
    assert (np.diff(scores, axis=1) <= 0).all()
    r2 = train_sasrec(train, vh, vt, mc, tc, progress=False)
    for k, v in r1.model.state_dict().items():
        torch.testing.assert_close(v, r2.model.state_dict()[k])
    # RW weights change training but keep it working
    w = popularity_weights(np.bincount(np.concatenate([s[1:] for s in map(np.array, train)]), minlength=12), 1.0)
    r3 = train_sasrec(train, vh, vt, mc, tc, item_weights=w, progress=False)
    assert r3.best_valid_ndcg10 > 0.5
    # registry round trip: same vectors, same embeddings
    art = r1.model.save(registry, "toy-sasrec", parents=[], params={"seed": 7})
    loaded = SASRec.from_artifact(registry.load("model/toy-sasrec@latest"))
    np.testing.assert_allclose(loaded.encode(vh), r1.model.encode(vh), rtol=1e-6)
    np.testing.assert_allclose(loaded.item_embeddings(), r1.model.item_embeddings())
    assert art.load_json("config.json")["model"]["d_model"] == 16
    with pytest.raises(ArtifactCorrupted, match="not a model"):
        SASRec.from_artifact(registry.load(art.ref).__class__(art.path, art.manifest.model_copy(update={"kind": "rankings"})))


def test_sasrec_bad_input():
    with pytest.raises(ValueError, match="divisible"):
        SASRecConfig(n_items=5, d_model=10, n_heads=3)
    with pytest.raises(RankingError, match="fewer than 2"):
        train_sasrec([[1], [2]], np.array([[1]]), np.array([2]), SASRecConfig(n_items=5, max_len=3, d_model=8), TrainConfig(epochs=1), progress=False)


def test_select_gamma_hand_computed():
    from components.evaluation.baselines.rerank import select_gamma

    # items 0,1 hold all training interactions (2 groups: {0,1} H=1, {2,3} H=0)
    scores = np.array([[1.0, 0.9, 0.5, 0.0]])
    g, rows = select_gamma(scores, np.array([2]), np.array([3, 1, 0, 0]), [0.0, 1.0], k=2, n_groups=2)
    # gamma 1: adjusted [1-ln4, 0.9-ln2, 0.5, 0] -> top-2 [2, 1]: hit at rank 0 but exposure (0.5, 0.5) -> DGU 1
    assert rows[1]["NDCG@2"] == pytest.approx(1.0) and rows[1]["DGU@2"] == pytest.approx(1.0)
    assert rows[0]["NDCG@2"] == 0.0 and rows[0]["DGU@2"] == 0.0
    assert g == 0.0  # lowest DGU wins, whatever the accuracy gain
    with pytest.raises(RankingError, match="empty"):
        select_gamma(scores, np.array([2]), np.array([3, 1, 0, 0]), [], k=2)
