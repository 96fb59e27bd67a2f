"""Token-level bias amplification per SID level against hand-computed shares."""

from __future__ import annotations

import numpy as np
import pytest

from components.evaluation.bias import token_bias, token_bias_from_topk, token_groups, token_popularity
from components.evaluation.metrics import RankingError
from components.tokenizer.codebook import Codebook

SIDS = np.array([[0, 0], [0, 1], [1, 1], [1, 0]])
COUNTS = np.array([5, 3, 1, 1])


def _codebook() -> Codebook:
    return Codebook(sids=SIDS, sizes=[2, 2], item_ids=["a", "b", "c", "d"], method="test")


def test_token_popularity_and_groups():
    pops = token_popularity(SIDS, [2, 2], COUNTS)
    assert pops[0].tolist() == [8, 2] and pops[1].tolist() == [6, 4]
    assert token_groups(np.array([1.0, 7.0, 3.0, 3.0, 0.0]), 2).tolist() == [1, 0, 0, 0, 1]  # 7, 3, 3 | 1, 0
    # unused codes are left out of the groups
    present = np.array([True, True, False, True, True])
    assert token_groups(np.array([1.0, 7.0, 3.0, 3.0, 0.0]), 2, present).tolist() == [1, 0, -1, 0, 1]


def test_token_bias_hand_computed():
    topk = np.array([[0, 3], [0, 1], [1, 2], [2, 0]])  # top-1 items 0, 0, 1, 2
    targets = np.array([1, 2, 3, 0])
    tb = token_bias_from_topk(_codebook(), topk, targets, COUNTS, k=1, n_groups=2)
    # level 0: generated tokens 0,0,0,1 vs target tokens 0,1,1,0
    assert tb[0]["generated_share"] == [0.75, 0.25] and tb[0]["test_share"] == [0.5, 0.5]
    assert tb[0]["amplification"] == [1.5, 0.5] and tb[0]["amp_top"] == 1.5
    assert tb[0]["tv"] == pytest.approx(0.25)
    # level 1: generated 0,0,1,1 vs target 1,1,0,0: no amplification
    assert tb[1]["generated_share"] == [0.5, 0.5] and tb[1]["amplification"] == [1.0, 1.0] and tb[1]["tv"] == 0.0
    # top-2: generated items 0,3,0,1,1,2,2,0 -> level-0 tokens 0,1,0,0,0,1,1,0
    tb2 = token_bias_from_topk(_codebook(), topk, targets, COUNTS, k=2, n_groups=2)
    assert tb2[0]["generated_share"] == [0.625, 0.375]


def test_token_bias_direct_tokens_and_errors():
    gen = np.array([[0, 0], [-1, -1], [1, 1]])  # an invalid generation is skipped
    tgt = np.array([[0, 0], [0, 1]])
    tb = token_bias(gen, tgt, SIDS, [2, 2], COUNTS, n_groups=2)
    assert tb[0]["generated_share"] == [0.5, 0.5] and tb[0]["test_share"] == [1.0, 0.0]
    assert tb[0]["amplification"] == [0.5, None]  # no test token in group 1: None, not inf/NaN
    with pytest.raises(RankingError, match="outside"):
        token_bias(np.array([[0, 2]]), tgt, SIDS, [2, 2], COUNTS)
    with pytest.raises(RankingError, match="empty test set"):
        token_bias(gen, np.zeros((0, 2), dtype=int), SIDS, [2, 2], COUNTS)
    with pytest.raises(RankingError, match="outside the catalog"):
        token_bias_from_topk(_codebook(), np.array([[4], [0]]), np.array([0, 1]), COUNTS)


def test_token_bias_plot_with_codebooks_of_different_group_counts(tmp_path):
    """A FlexCode codebook's disambiguation level has 7 used tokens (7 groups) while TIGER's has 8:
    the report's plot used to fail on the shape mismatch."""
    from components.evaluation.report import plot_token_bias

    def level(g):
        share = [1.0 / g] * g
        return {"level": 0, "n_groups": g, "generated_share": share, "test_share": share, "amplification": [1.0] * g, "amp_top": 1.0, "tv": 0.0}

    path = tmp_path / "tb.png"
    plot_token_bias({"tiger": [level(8), level(8)], "tiger-flexcode": [level(8), level(7)], "short": [level(3)]}, path)
    assert path.read_bytes()[:4] == b"\x89PNG"
