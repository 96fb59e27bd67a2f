"""CRAB §4.3 warm start: a model for a rebalanced codebook starts from the checkpoint trained on
the original codebook; kept tokens keep their rows, split tokens copy their origin's row, every
other weight is copied; a checkpoint from an unrelated codebook is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.generator.checkpoint import save_checkpoint, warm_start
from components.generator.vocab import SIDVocab
from components.registry import ArtifactIncompatible, Registry
from components.tokenizer.codebook import Codebook
from tests.generator_helpers import random_sids, tiny_model


def test_warm_start_from_original_codebook(tmp_path):
    reg = Registry(tmp_path / "artifacts")
    sizes = [3, 4, 2]
    ids = [f"i{k}" for k in range(20)]
    sids = random_sids(sizes, len(ids), seed=3)
    cb = Codebook(sids=sids, sizes=sizes, item_ids=ids, method="random")
    cart = cb.save(reg, "orig", parents=[], params={})
    old = tiny_model("tiger", sids, sizes, seed=1)
    gart = save_checkpoint(reg, "orig-tiger", old, cart.ref, "dataset/x@0", {})
    # "rebalance" by hand: level-0 token 0 splits; its items with level-1 token >= 2 move to new token 3
    new_sids = sids.copy()
    moved = (sids[:, 0] == 0) & (sids[:, 1] >= 2)
    new_sids[moved, 0] = 3
    origin = [[0, 1, 2, 0], list(range(4)), list(range(2))]
    rb = Codebook(sids=new_sids, sizes=[4, 4, 2], item_ids=ids, method="crab", token_origin=origin)
    rart = rb.save(reg, "orig-crab", parents=[cart.ref], params={})
    model = tiny_model("tiger", new_sids, [4, 4, 2], seed=2)
    warm_start(model, reg, gart.ref, rb, rart)
    ov, nv = SIDVocab(sids, sizes), SIDVocab(new_sids, [4, 4, 2])
    old_emb = old.backbone.t5.shared.weight.detach()
    new_emb = model.backbone.t5.shared.weight.detach()
    assert torch.equal(new_emb[nv.offsets[0] + 3], old_emb[ov.offsets[0] + 0])  # the split token starts as its origin
    for lvl in range(3):
        for t in range(sizes[lvl]):
            assert torch.equal(new_emb[nv.offsets[lvl] + t], old_emb[ov.offsets[lvl] + t])
    assert torch.equal(new_emb[:4], old_emb[:4])  # special tokens
    o, n = dict(old.named_parameters()), dict(model.named_parameters())
    for k, v in n.items():
        if v.shape == o[k].shape and "shared" not in k and "lm_head" not in k:
            assert torch.equal(v, o[k]), k
    # unrelated codebook: refused
    other = Codebook(sids=random_sids([4, 4, 2], len(ids), seed=9), sizes=[4, 4, 2], item_ids=ids, method="x",
                     token_origin=origin)
    oart = other.save(reg, "other", parents=[], params={})
    with pytest.raises(ArtifactIncompatible, match="was not rebalanced from it"):
        warm_start(tiny_model("tiger", other.sids, [4, 4, 2]), reg, gart.ref, other, oart)
    assert np.array_equal(rb.sids, new_sids)
