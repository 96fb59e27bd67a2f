"""Hierarchical semantic alignment loss (Eq. 9), the Eq. 10 objective, embedding init and the
LoRA-on-attention recipe (Sec. 4.3)."""

import numpy as np
import pytest
import torch

from components.rebalancer.alignment import (
    CrabObjective,
    HierarchicalAlignmentLoss,
    attention_lora_targets,
    expand_token_embeddings,
    init_new_token_embeddings,
)
from components.tokenizer.codebook import Codebook

# level 0: tokens 0, 1 (rows 0, 1); level 1: tokens 0..2 (rows 2..4)
OFFSETS = [0, 2]
EDGES = {1: np.array([[0, 0], [0, 1], [1, 0], [1, 2]])}  # child token 0 shared by both parents


def weight() -> torch.Tensor:
    return torch.tensor([[9.0, 9.0], [9.0, 9.0], [0.0, 0.0], [2.0, 0.0], [0.0, 4.0]], requires_grad=True)


def test_eq9_hand_computed_l2():
    loss = HierarchicalAlignmentLoss.from_edges(EDGES, OFFSETS, reduction="sum")
    # parent 0: children (0,0),(2,0), mean (1,0): 1 + 1 = 2; parent 1: (0,0),(0,4), mean (0,2): 4 + 4 = 8
    assert loss(weight()).item() == pytest.approx(10.0)
    mean = HierarchicalAlignmentLoss.from_edges(EDGES, OFFSETS)
    assert mean.n_terms == 4 and mean(weight()).item() == pytest.approx(2.5)


def test_eq9_cosine_and_gradients_flow_to_children_only():
    w = weight()
    HierarchicalAlignmentLoss.from_edges(EDGES, OFFSETS, distance="cosine")(w).backward()
    assert torch.all(w.grad[:2] == 0) and w.grad[2:].abs().sum() > 0


def test_tensorized_equals_naive_loop_on_random_tree():
    rng = np.random.default_rng(0)
    parents = rng.integers(0, 6, 40)
    children = rng.integers(0, 15, 40)
    edges = {1: np.unique(np.stack([parents, children], 1), axis=0)}
    w = torch.randn(6 + 15, 5, dtype=torch.float64)
    got = HierarchicalAlignmentLoss.from_edges(edges, [0, 6], reduction="sum")(w).item()
    want = 0.0
    for p in np.unique(edges[1][:, 0]):
        kids = edges[1][edges[1][:, 0] == p, 1] + 6
        if len(kids) < 2:
            continue
        m = w[kids].mean(0)
        want += float(((w[kids] - m) ** 2).sum())
    assert got == pytest.approx(want)


def test_from_codebook_skips_disambiguation_level_and_singletons():
    sids = np.array([[0, 0, 0, 0], [0, 1, 2, 0], [0, 1, 2, 1], [1, 2, 1, 0], [1, 0, 1, 0], [2, 2, 2, 0]])
    cb = Codebook(sids=sids, sizes=[3, 3, 3, 2], item_ids=list("abcdef"), method="t")
    loss = HierarchicalAlignmentLoss.from_codebook(cb, [0, 3, 6, 9])
    # level-1 edges: (0,0),(0,1),(1,2),(1,0),(2,2); level-2: (0,0),(1,2),(2,1),(0,1)... singletons dropped
    pairs = set(zip(loss.parent_ids.tolist(), loss.child_ids.tolist()))
    assert (0, 3) in pairs and (0, 4) in pairs and (1, 5) in pairs and (1, 3) in pairs
    assert all(c < 9 for _, c in pairs)  # no disambiguation-level term
    assert not any(p == 2 for p, _ in pairs)  # parent token 2 has a single child


def test_objective_is_rec_plus_beta_reg():
    obj = CrabObjective(HierarchicalAlignmentLoss.from_edges(EDGES, OFFSETS), beta=0.5)
    total, parts = obj(torch.tensor(1.0), weight())
    assert total.item() == pytest.approx(1.0 + 0.5 * 2.5) and parts == {"rec": 1.0, "reg": 2.5}
    with pytest.raises(ValueError, match="beta"):
        CrabObjective(HierarchicalAlignmentLoss.from_edges(EDGES, OFFSETS), beta=-1)


def test_init_new_token_embeddings_copies_origin_rows():
    w = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    # level 0: 2 tokens + new token 2 from 0 (rows 0..2); level 1: 3 tokens (rows 3..5), none new
    n = init_new_token_embeddings(w, [[0, 1, 0], [0, 1, 2]], [0, 3])
    assert n == 1 and w[2].tolist() == [0.0, 1.0] and w[3].tolist() == [6.0, 7.0]


def test_expand_token_embeddings_keeps_other_rows_in_order():
    # old layout: [pad, bos] + level0 (2) + level1 (2) + [eos]; level 0 grows by one token from 1
    old = torch.arange(7, dtype=torch.float32)[:, None].repeat(1, 2)
    new = expand_token_embeddings(old, [2, 4], [2, 2], [2, 5], [3, 2], [[0, 1, 1], [0, 1]])
    assert new[:, 0].tolist() == [0, 1, 2, 3, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="token_origin has 2 entries"):
        expand_token_embeddings(old, [2, 4], [2, 2], [2, 5], [3, 2], [[0, 1], [0, 1]])


def test_attention_targets_on_t5_cover_self_and_cross_attention():
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(vocab_size=32, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    names = attention_lora_targets(T5ForConditionalGeneration(cfg))
    assert len(names) == 12  # encoder self (4) + decoder self (4) + decoder cross (4)
    assert all(("SelfAttention" in n or "EncDecAttention" in n) and n.rsplit(".", 1)[1] in "qkvo" for n in names)
