"""What the model needs from a backbone: embeddings, context encoding, a decoder pass with an
optional per-position context mask and a KV cache, and logits over the SID vocabulary."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import nn

from components.generator.heads.base import Context
from components.generator.vocab import EncodedHistory, SIDVocab


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool [B, q, k] → additive float [B, 1, q, k] (0 where allowed, dtype-min elsewhere)."""
    out = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    out.masked_fill_(~allowed, torch.finfo(dtype).min)
    return out[:, None]


@functools.cache
def _cache_kwarg(forward) -> str:
    """The KV-cache keyword of a transformers ``forward``: ``cache`` since transformers 5.2x (the old
    ``past_key_values`` warns and goes away in 5.40), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def run_with_cache(module: nn.Module, cache: Any, use_cache: bool, **kwargs: Any) -> tuple[Any, Any]:
    """Call a transformers decoder stack with a KV cache under whichever name the installed version
    uses; returns ``(output, new cache or None)``."""
    kw = _cache_kwarg(type(module).forward)  # the output field carries the same name as the keyword
    out = module(**kwargs, use_cache=use_cache, **{kw: cache})
    return out, (getattr(out, kw) if use_cache else None)


class Backbone(nn.Module):
    """Abstract backbone; see :class:`~components.generator.backbones.tiger.TigerBackbone` and
    :class:`~components.generator.backbones.decoder_lm.DecoderLMBackbone`."""

    kind: str = "abstract"
    append_eos: bool = False  # whether the history encoding ends with EOS

    def __init__(self, vocab: SIDVocab):
        super().__init__()
        self.vocab = vocab

    @property
    def d_model(self) -> int:
        raise NotImplementedError

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def make_context(self, hist: EncodedHistory) -> Context:
        return Context(self.embed(hist.tokens), hist.mask, hist.levels, hist.slots, None, {"items": hist.items})

    def encode(self, ctx: Context) -> Context:
        return ctx

    def decode(self, ctx: Context, embeds: torch.Tensor, ctx_mask: torch.Tensor | None, state: dict[str, Any] | None) -> tuple[torch.Tensor, dict[str, Any]]:
        """Run decoder positions ``embeds`` [N, q, d] (after those already in ``state``'s cache).

        ``ctx_mask``: bool [N, q, S] context visibility of these positions (None = all unpadded).
        Returns hidden states [N, q, d] and the updated state (cache etc.)."""
        raise NotImplementedError

    def sid_embeddings(self) -> torch.Tensor:
        """Input embeddings of the whole SID vocabulary, [V, d] (differentiable; row = SID token id)."""
        return self.embed(torch.arange(self.vocab.size, device=next(self.parameters()).device))

    def select(self, state: dict[str, Any], idx: torch.Tensor, context: bool = True) -> None:
        """Keep rows ``idx`` of the decoding state (beam reorder / expansion), in place.
        ``context=False``: rows of one request share their context, so context-only caches
        (cross-attention) need not move."""
        cache = state.get("cache")
        if cache is not None:
            cache.reorder_cache(idx)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def config_dict(self) -> dict[str, Any]:
        raise NotImplementedError


def build_backbone(cfg: dict[str, Any], vocab: SIDVocab) -> Backbone:
    kind = cfg.get("kind")
    if kind == "tiger":
        from components.generator.backbones.tiger import TigerBackbone

        return TigerBackbone(vocab, **{k: v for k, v in cfg.items() if k != "kind"})
    if kind == "decoder_lm":
        from components.generator.backbones.decoder_lm import DecoderLMBackbone

        return DecoderLMBackbone(vocab, **{k: v for k, v in cfg.items() if k != "kind"})
    raise ValueError(f"unknown backbone kind {kind!r} (tiger | decoder_lm)")
