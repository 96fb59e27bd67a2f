"""``GenerativeRecommender`` = backbone + heads: teacher-forced loss and the incremental decoding
steps the beam search drives.

Training loss per sample: ``CE = -(1/L) * sum_t log softmax(z_t)[c_t]`` over the SID vocabulary;
with per-sample weights ``w`` (popularity re-weighting) the batch loss is ``mean(w * CE)``; heads'
losses are added.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from components.generator.backbones.base import Backbone, build_backbone
from components.generator.heads.base import Context, ForwardOutput, Head, Layout, build_head
from components.generator.vocab import BOS, EncodedHistory, SIDVocab


@dataclass
class DecodeState:
    ctx: Context
    ctx_mask: torch.Tensor | None  # bool [N, T, S] for every decoder position
    backbone_state: dict[str, Any]
    n_rows: int


class GenerativeRecommender(nn.Module):
    def __init__(self, backbone: Backbone, heads: list[Head] | None = None, max_items: int = 10):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleList(heads or [])
        for h in self.heads:
            if backbone.kind not in h.supports:
                raise ValueError(f"head {h.name!r} does not support backbone {backbone.kind!r} (supports {h.supports})")
            h.attach(self)
        self.max_items = int(max_items)
        self.layout = Layout.build(backbone.vocab.n_levels, list(self.heads))

    @property
    def vocab(self) -> SIDVocab:
        return self.backbone.vocab

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---- config ---------------------------------------------------------------------------
    def config_dict(self, first_stage: bool = False) -> dict[str, Any]:
        """The config that rebuilds the model; ``first_stage``: each head's :meth:`first_stage_config`
        instead (what a head's first training stage depends on: the identity of a shared run)."""
        heads = [h.first_stage_config() if first_stage else h.config() for h in self.heads]
        return {"backbone": self.backbone.config_dict(), "heads": heads, "max_items": self.max_items,
                "vocab": {"sizes": self.vocab.sizes, "n_items": self.vocab.n_items, "fingerprint": self.vocab.fingerprint()}}

    @classmethod
    def from_config(cls, cfg: dict[str, Any], vocab: SIDVocab) -> "GenerativeRecommender":
        bb = build_backbone(cfg["backbone"], vocab)
        heads = [build_head(h, bb.d_model) for h in cfg.get("heads", [])]
        return cls(bb, heads, max_items=cfg.get("max_items", 10))

    # ---- shared pieces --------------------------------------------------------------------
    def encode_history(self, history, max_items: int | None = None) -> EncodedHistory:
        return self.vocab.encode_history(history, max_items or self.max_items, append_eos=self.backbone.append_eos).to(self.device)

    def context(self, hist: EncodedHistory, extras: dict[str, Any] | None = None) -> Context:
        ctx = self.backbone.make_context(hist)
        if extras:
            ctx.extras.update(extras)
        for h in self.heads:
            ctx = h.context_inputs(ctx)
        ctx = self.backbone.encode(ctx)
        if ctx.states is not None:
            for h in self.heads:
                ctx = h.context_states(ctx)
        return ctx

    def context_mask(self, ctx: Context) -> torch.Tensor | None:
        out = None
        for h in self.heads:
            m = h.context_mask(ctx, self.layout)
            if m is not None:
                out = m if out is None else out & m
        return out

    def _segment(self, t: int, token_embeds: torch.Tensor) -> torch.Tensor:
        parts = [token_embeds]
        for h in self.heads:
            n = int(h.n_step_inputs(t))
            if n:
                extra = h.step_inputs(t, token_embeds.shape[0])
                if extra is None or tuple(extra.shape) != (token_embeds.shape[0], n, token_embeds.shape[-1]):
                    raise ValueError(f"head {h.name!r}: step_inputs({t}) must be [{token_embeds.shape[0]}, {n}, {token_embeds.shape[-1]}]")
                parts.append(extra.to(token_embeds.dtype))
        return torch.cat(parts, dim=1) if len(parts) > 1 else token_embeds

    # ---- training -------------------------------------------------------------------------
    def forward(self, hist: EncodedHistory, targets: torch.Tensor, weights: torch.Tensor | None = None,
                extras: dict[str, Any] | None = None) -> ForwardOutput:
        ctx = self.context(hist, {"targets": targets, **(extras or {})})  # heads may read the targets and extras (e.g. "user")
        B, L = targets.shape
        prev = torch.cat([torch.full((B, 1), BOS, dtype=torch.long, device=targets.device), targets[:, :-1]], dim=1)
        tok_emb = self.backbone.embed(prev)
        if self.training:
            for h in self.heads:
                tok_emb = h.teacher_inputs(tok_emb, targets, ctx)
        dec = torch.cat([self._segment(t, tok_emb[:, t : t + 1]) for t in range(L)], dim=1)
        hidden, _ = self.backbone.decode(ctx, dec, self.context_mask(ctx), None)
        logits = self.backbone.logits(hidden[:, self.layout.readout.to(hidden.device)])
        out = ForwardOutput(logits=logits, hidden=hidden, targets=targets, ctx=ctx, layout=self.layout)
        ce = F.cross_entropy(logits.float().reshape(B * L, -1), targets.reshape(-1), reduction="none").view(B, L).mean(1)
        out.losses["rec"] = (ce * weights).mean() if weights is not None else ce.mean()
        for h in self.heads:
            for k, v in h.losses(out).items():
                out.losses[f"{h.name}.{k}"] = v
        return out

    @torch.no_grad()
    def score_sids(self, hist: EncodedHistory, sids: torch.Tensor) -> torch.Tensor:
        """Sum over levels of log softmax(z_t)[c_t] for each (history row, SID row) pair: [B] for
        ``sids`` [B, L] (teacher forcing; the reference the beam search must agree with)."""
        out = self.forward(hist, sids)
        lp = torch.log_softmax(out.logits.float(), dim=-1)
        return lp.gather(-1, sids[..., None]).squeeze(-1).sum(-1)

    # ---- incremental decoding -------------------------------------------------------------
    def begin(self, hist: EncodedHistory, extras: dict[str, Any] | None = None) -> DecodeState:
        ctx = self.context(hist, extras)
        return DecodeState(ctx, self.context_mask(ctx), {"use_cache": True}, hist.tokens.shape[0])

    def step(self, state: DecodeState, t: int, prev_tokens: torch.Tensor) -> torch.Tensor:
        """Feed step ``t``'s segment (token ``prev_tokens`` [N] + heads' vectors); logits [N, V]."""
        seg = self._segment(t, self.backbone.embed(prev_tokens[:, None]))
        cm = None if state.ctx_mask is None else state.ctx_mask[:, self.layout.step_slice(t)]
        hidden, state.backbone_state = self.backbone.decode(state.ctx, seg, cm, state.backbone_state)
        logits = self.backbone.logits(hidden[:, -1])
        for h in self.heads:
            logits = h.adjust_logits(t, logits, state.ctx)
        return logits

    def select(self, state: DecodeState, idx: torch.Tensor, context: bool = True) -> None:
        """Keep / reorder / expand rows: row ``i`` of the new state is old row ``idx[i]``.
        ``context=False`` reorders only the KV cache (valid when ``idx`` only permutes rows whose
        context is identical, e.g. beams of one request after the first expansion)."""
        if context:
            state.ctx = _select_ctx(state.ctx, idx)
            if state.ctx_mask is not None:
                state.ctx_mask = state.ctx_mask.index_select(0, idx)
        self.backbone.select(state.backbone_state, idx, context=context)
        state.n_rows = int(idx.shape[0])


def _select_ctx(ctx: Context, idx: torch.Tensor) -> Context:
    sel = lambda x: x.index_select(0, idx) if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] > 0 else x  # noqa: E731
    return Context(sel(ctx.embeds), sel(ctx.mask), sel(ctx.levels), sel(ctx.slots), sel(ctx.states), {k: sel(v) for k, v in ctx.extras.items()})


def state_dict_for_save(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached contiguous copies (tied weights duplicated, so safetensors accepts them)."""
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
