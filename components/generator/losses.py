"""Extra training losses plugged into :class:`~components.generator.train.Trainer` by params
(``generator.train.extra_loss: "module:factory"``): ``factory(model, codebook)`` returns a callable
``loss(model) -> scalar``, weighted by ``generator.train.extra_loss_weight``.

``crab_alignment``: CRAB's hierarchical semantic alignment (Eq. 9, the rebalancer's
``HierarchicalAlignmentLoss``) on the SID token embeddings. A fine-tune from a checkpoint
(``init_from``) adds it by itself with weight ``generator.finetune.beta``
(:mod:`components.generator.finetune`); ``extra_loss`` is for training with it from scratch. It
never writes the embeddings: split tokens start as their origin's rows in
:func:`components.generator.checkpoint.warm_start`, and a model that already learned the split
tokens' rows keeps them.
"""

from __future__ import annotations

from typing import Callable

import torch


def crab_alignment(model, codebook) -> Callable[[object], torch.Tensor]:
    from components.rebalancer.alignment import HierarchicalAlignmentLoss

    loss = HierarchicalAlignmentLoss.from_codebook(codebook, model.vocab.offsets).to(model.device)

    def fn(m) -> torch.Tensor:
        return loss(m.backbone.sid_embeddings())

    return fn
