"""CRAB hierarchical semantic alignment (Sec. 4.2, Eq. 9) and the fine-tuning recipe of Sec. 4.3.

API for the generator (token ids are *global*: level-``l`` token ``t`` is row ``offsets[l] + t`` of
the embedding matrix; ``offsets`` is the generator's layout, ``token_origin`` comes from the
rebalanced codebook, ``token_origin[l][t]`` = token of the input codebook that ``t`` came from)::

    from components.rebalancer.alignment import (
        HierarchicalAlignmentLoss, CrabObjective, init_new_token_embeddings,
        expand_token_embeddings, attention_lora_targets)

    # 1. grow the trained model's embedding matrix to the new vocabulary, new rows = origin rows
    new_w = expand_token_embeddings(old_w, old_offsets, old_sizes, new_offsets, new_sizes, token_origin)
    #    (or, when the new-layout matrix already holds the trained rows of the kept tokens:)
    init_new_token_embeddings(weight, token_origin, offsets)          # in place, no grad
    # 2. what trains: LoRA on attention projections only + the token embeddings
    #    (components.generator.finetune.prepare_finetune, with attention_lora_targets(model))
    # 3. loss L = L_rec + beta * L_reg
    objective = CrabObjective(HierarchicalAlignmentLoss.from_codebook(codebook, offsets), beta=0.1)
    loss, parts = objective(rec_loss, model.get_input_embeddings().weight)

Eq. 9 (children of parent token ``p``: ``C(p)`` = tokens ``c`` at the next level with an item
carrying both, i.e. the codebook's tree edges; parents with a single child are skipped as their
term is 0)::

    L_reg = sum_p sum_{c in C(p)} dist(e_c, ebar_p),    ebar_p = mean_{c' in C(p)} e_{c'}

``dist`` = squared Euclidean (default) or cosine distance ``1 - cos``; ``reduction="mean"`` divides
by the number of (parent, child) terms (scale-free in the vocabulary size), ``"sum"`` is Eq. 9
literally. A child shared by several parents (RQ codes) appears once per parent. The forward is
two gathers and one ``index_add`` over precomputed index tensors: no Python loop over tokens.
It applies to old and new tokens alike (the tree of the rebalanced codebook).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn


class HierarchicalAlignmentLoss(nn.Module):
    """Eq. 9 over a fixed token tree. Buffers: ``child_ids`` (global row of each term's child),
    ``group`` (its parent group), ``group_size`` (children per parent)."""

    def __init__(self, parent_ids: torch.Tensor | np.ndarray, child_ids: torch.Tensor | np.ndarray, distance: str = "l2",
                 reduction: str = "mean", detach_mean: bool = False):
        super().__init__()
        if distance not in ("l2", "cosine"):
            raise ValueError(f"distance must be 'l2' or 'cosine', got {distance!r}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        parent = torch.as_tensor(np.asarray(parent_ids), dtype=torch.long).reshape(-1)
        child = torch.as_tensor(np.asarray(child_ids), dtype=torch.long).reshape(-1)
        if parent.numel() != child.numel():
            raise ValueError(f"{parent.numel()} parents for {child.numel()} children")
        if child.numel() and child.min() < 0:
            raise ValueError("negative token ids")
        # one term per distinct (parent, child); parents compacted to 0..G-1; singletons dropped
        pairs = torch.unique(torch.stack([parent, child], 1), dim=0) if child.numel() else torch.zeros(0, 2, dtype=torch.long)
        _, group, counts = torch.unique(pairs[:, 0], return_inverse=True, return_counts=True)
        keep = counts[group] > 1
        pairs = pairs[keep]
        _, group, counts = torch.unique(pairs[:, 0], return_inverse=True, return_counts=True)
        self.register_buffer("child_ids", pairs[:, 1].contiguous())
        self.register_buffer("parent_ids", pairs[:, 0].contiguous())
        self.register_buffer("group", group.contiguous())
        self.register_buffer("group_size", counts.to(torch.float32))
        self.distance = distance
        self.reduction = reduction
        self.detach_mean = detach_mean

    @property
    def n_terms(self) -> int:
        return int(self.child_ids.numel())

    @classmethod
    def from_edges(cls, edges: dict[int, np.ndarray], offsets: Sequence[int], include_root: bool = False,
                   root_children: Sequence[int] | None = None, **kw: Any) -> "HierarchicalAlignmentLoss":
        """``edges[l]`` = int ``[E, 2]`` (parent token at ``l-1``, child token at ``l``), level-local.
        Parent keys are the parents' global rows; ``include_root`` adds the level-0 tokens
        ``root_children`` as children of one virtual root (key -1)."""
        parents, children = [], []
        for lvl, e in sorted(edges.items()):
            e = np.asarray(e, dtype=np.int64).reshape(-1, 2)
            if lvl < 1 or lvl >= len(offsets):
                raise ValueError(f"edge level {lvl} outside 1..{len(offsets) - 1}")
            parents.append(offsets[lvl - 1] + e[:, 0])
            children.append(offsets[lvl] + e[:, 1])
        if include_root:
            rc = np.asarray(root_children if root_children is not None else [], dtype=np.int64)
            parents.append(np.full(rc.size, -1, dtype=np.int64))
            children.append(offsets[0] + rc)
        p = np.concatenate(parents) if parents else np.zeros(0, dtype=np.int64)
        c = np.concatenate(children) if children else np.zeros(0, dtype=np.int64)
        return cls(p, c, **kw)

    @classmethod
    def from_codebook(cls, codebook, offsets: Sequence[int], levels: Sequence[int] | None = None,
                      include_root: bool = False, **kw: Any) -> "HierarchicalAlignmentLoss":
        """Tree of a :class:`~components.tokenizer.codebook.Codebook`. ``levels``: child levels whose
        edges count (default ``1 .. semantic_levels-1``: a collision-disambiguation level is left
        out, see :func:`components.rebalancer.crab.detect_semantic_levels`)."""
        from components.rebalancer.crab import detect_semantic_levels

        if len(offsets) < codebook.n_levels:
            raise ValueError(f"{len(offsets)} offsets for a {codebook.n_levels}-level codebook")
        if levels is None:
            levels = range(1, detect_semantic_levels(codebook))
        edges = {int(lvl): codebook.edges(int(lvl)) for lvl in levels}
        root = np.unique(codebook.sids[:, 0]) if include_root else None
        return cls.from_edges(edges, offsets, include_root=include_root, root_children=root, **kw)

    def forward(self, embedding_weight: torch.Tensor) -> torch.Tensor:
        if self.n_terms == 0:
            return embedding_weight.sum() * 0.0
        if int(self.child_ids.max()) >= embedding_weight.shape[0]:
            raise ValueError(f"token row {int(self.child_ids.max())} outside the embedding matrix ({embedding_weight.shape[0]} rows)")
        e = embedding_weight.index_select(0, self.child_ids)  # [E, d]
        G = self.group_size.numel()
        sums = torch.zeros(G, e.shape[1], dtype=e.dtype, device=e.device).index_add_(0, self.group, e)
        means = sums / self.group_size.to(e.dtype).unsqueeze(1)
        if self.detach_mean:
            means = means.detach()
        m = means.index_select(0, self.group)
        if self.distance == "l2":
            per = (e - m).pow(2).sum(-1)
        else:
            per = 1.0 - torch.nn.functional.cosine_similarity(e, m, dim=-1, eps=1e-8)
        return per.mean() if self.reduction == "mean" else per.sum()


class CrabObjective(nn.Module):
    """Eq. 10: ``L = L_rec + beta * L_reg``; returns ``(loss, {"rec", "reg"})`` (detached parts)."""

    def __init__(self, alignment: HierarchicalAlignmentLoss, beta: float = 0.1):
        super().__init__()
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.alignment = alignment
        self.beta = float(beta)

    def forward(self, rec_loss: torch.Tensor, embedding_weight: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        reg = self.alignment(embedding_weight)
        return rec_loss + self.beta * reg, {"rec": float(rec_loss.detach()), "reg": float(reg.detach())}


def _origin_rows(token_origin: Sequence[Sequence[int]], offsets: Sequence[int], src_offsets: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    dst, src = [], []
    for lvl, orig in enumerate(token_origin):
        o = np.asarray(orig, dtype=np.int64)
        dst.append(offsets[lvl] + np.arange(o.size))
        src.append(src_offsets[lvl] + o)
    return np.concatenate(dst), np.concatenate(src)


@torch.no_grad()
def init_new_token_embeddings(embedding_weight: torch.Tensor, token_origin: Sequence[Sequence[int]], offsets: Sequence[int],
                              noise_std: float = 0.0, generator: torch.Generator | None = None) -> int:
    """In place: every token whose origin differs from itself (the new tokens a split created) gets
    a copy of its origin token's row (+ optional Gaussian noise). Assumes ``embedding_weight`` is in
    the new layout and already holds the trained rows of kept tokens. Returns rows written."""
    if len(offsets) < len(token_origin):
        raise ValueError(f"{len(offsets)} offsets for {len(token_origin)} levels")
    dst, src = _origin_rows(token_origin, offsets, offsets)
    new = dst != src
    dst, src = dst[new], src[new]
    if dst.size == 0:
        return 0
    if max(dst.max(), src.max()) >= embedding_weight.shape[0]:
        raise ValueError(f"token rows up to {int(max(dst.max(), src.max()))} but the embedding has {embedding_weight.shape[0]} rows")
    d = torch.as_tensor(dst, device=embedding_weight.device)
    s = torch.as_tensor(src, device=embedding_weight.device)
    rows = embedding_weight.index_select(0, s).clone()
    if noise_std > 0:
        rows += noise_std * torch.randn(rows.shape, generator=generator, dtype=rows.dtype).to(rows.device)
    embedding_weight.index_copy_(0, d, rows)
    return int(dst.size)


@torch.no_grad()
def expand_token_embeddings(old_weight: torch.Tensor, old_offsets: Sequence[int], old_sizes: Sequence[int],
                            new_offsets: Sequence[int], new_sizes: Sequence[int], token_origin: Sequence[Sequence[int]]) -> torch.Tensor:
    """A new embedding matrix for the rebalanced vocabulary: SID row ``new_offsets[l] + t`` =
    old row ``old_offsets[l] + token_origin[l][t]``; every other row (specials, text vocabulary)
    keeps its relative order. ``V_new = V_old + sum_l (new_sizes[l] - old_sizes[l])``."""
    L = len(token_origin)
    if not (len(old_offsets) >= L and len(new_offsets) >= L and len(old_sizes) >= L and len(new_sizes) >= L):
        raise ValueError("offsets / sizes do not cover every level")
    for lvl in range(L):
        if len(token_origin[lvl]) != new_sizes[lvl]:
            raise ValueError(f"level {lvl}: token_origin has {len(token_origin[lvl])} entries, new size {new_sizes[lvl]}")
        if max(token_origin[lvl], default=-1) >= old_sizes[lvl]:
            raise ValueError(f"level {lvl}: token_origin points past the old size {old_sizes[lvl]}")
    V_old = old_weight.shape[0]
    V_new = V_old + sum(int(new_sizes[l]) - int(old_sizes[l]) for l in range(L))
    old_sid = np.zeros(V_old, dtype=bool)
    new_sid = np.zeros(V_new, dtype=bool)
    for lvl in range(L):
        old_sid[old_offsets[lvl] : old_offsets[lvl] + old_sizes[lvl]] = True
        new_sid[new_offsets[lvl] : new_offsets[lvl] + new_sizes[lvl]] = True
    if int(old_sid.sum()) != sum(old_sizes[:L]) or int(new_sid.sum()) != sum(new_sizes[:L]):
        raise ValueError("SID blocks overlap or run past the embedding matrix")
    src = np.full(V_new, -1, dtype=np.int64)
    dst, s = _origin_rows(token_origin, new_offsets, old_offsets)
    src[dst] = s
    src[~new_sid] = np.flatnonzero(~old_sid)
    out = old_weight.index_select(0, torch.as_tensor(src, device=old_weight.device)).clone()
    return out


_ATTN_LEAVES = {"q_proj", "k_proj", "v_proj", "o_proj", "q", "k", "v", "o", "query", "key", "value", "out_proj",
                "c_attn", "qkv_proj", "Wqkv", "dense"}
_ATTN_PARENT = re.compile(r"(attn|attention)", re.IGNORECASE)


def attention_lora_targets(model: nn.Module) -> list[str]:
    """Full names of the linear projections inside attention blocks (Qwen/LLaMA ``*_proj``, T5
    ``SelfAttention.{q,k,v,o}`` / ``EncDecAttention``, GPT-2 ``attn.c_attn``/``attn.c_proj``, BERT);
    MLP layers are excluded. Pass to peft ``LoraConfig(target_modules=...)``."""
    out = []
    for name, mod in model.named_modules():
        if not name:
            continue
        parent, _, leaf = name.rpartition(".")
        is_linear = isinstance(mod, nn.Linear) or type(mod).__name__ == "Conv1D"
        if is_linear and _ATTN_PARENT.search(parent) and (leaf in _ATTN_LEAVES or leaf == "c_proj"):
            out.append(name)
    if not out:
        raise ValueError(f"no attention projections found in {type(model).__name__}")
    return out
