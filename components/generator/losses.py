"""Extra training losses plugged into :class:`~components.generator.train.Trainer` by params
(``generator.train.extra_loss: "module:factory"``): ``factory(model, codebook)`` returns a callable
``loss(model) -> scalar``, weighted by ``generator.train.extra_loss_weight``.

``crab_alignment``: CRAB's hierarchical semantic alignment (Eq. 9, the rebalancer's
``HierarchicalAlignmentLoss``) on the SID token embeddings, after initialising every token a
split created from its origin token's embedding (``init_new_token_embeddings``). So "TIGER",
"TIGER+RW" (``reweight_power``) and "TIGER+CRAB" (this loss on a rebalanced codebook) are params.
"""

from __future__ import annotations

from typing import Callable

import torch


def crab_alignment(model, codebook) -> Callable[[object], torch.Tensor]:
    from components.rebalancer.alignment import HierarchicalAlignmentLoss, init_new_token_embeddings

    offsets = model.vocab.offsets
    bb = model.backbone
    weight = None
    if bb.kind == "tiger":
        weight = bb.t5.shared.weight
    elif getattr(bb, "token_map", None) is None and not bb.cfg.get("lora_applied"):
        weight = bb.lm.get_input_embeddings().weight
    if weight is not None and codebook.token_origin is not None:
        init_new_token_embeddings(weight.data, codebook.token_origin, offsets)
    loss = HierarchicalAlignmentLoss.from_codebook(codebook, offsets).to(model.device)

    def fn(m) -> torch.Tensor:
        return loss(m.backbone.sid_embeddings())

    return fn
