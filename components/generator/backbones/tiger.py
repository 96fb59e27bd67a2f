"""TIGER: a T5 encoder-decoder (``T5ForConditionalGeneration``, random init) over the SID vocabulary.

The encoder reads the flattened SIDs of the history (+ EOS); the decoder writes the target SID
starting from BOS. Defaults follow TIGER / GenPlugin: 4 + 4 layers, 6 heads x d_kv 64,
d_model 128, FFN 1024, dropout 0.1. Encoder outputs are computed once per request; decoder
self- and cross-attention keys/values are cached and reordered by beam.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import T5Config, T5ForConditionalGeneration

from components.generator.backbones.base import Backbone, additive_mask, run_with_cache
from components.generator.heads.base import Context
from components.generator.vocab import BOS, EOS, PAD, SIDVocab


class TigerBackbone(Backbone):
    kind = "tiger"
    append_eos = True

    def __init__(self, vocab: SIDVocab, d_model: int = 128, d_kv: int = 64, d_ff: int = 1024, num_layers: int = 4,
                 num_decoder_layers: int = 4, num_heads: int = 6, dropout: float = 0.1, feed_forward_proj: str = "relu",
                 tie_word_embeddings: bool = True, attn_implementation: str = "sdpa"):
        super().__init__(vocab)
        self.cfg = dict(d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_layers=num_layers, num_decoder_layers=num_decoder_layers,
                        num_heads=num_heads, dropout=dropout, feed_forward_proj=feed_forward_proj,
                        tie_word_embeddings=tie_word_embeddings, attn_implementation=attn_implementation)
        config = T5Config(
            vocab_size=vocab.size, d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_layers=num_layers,
            num_decoder_layers=num_decoder_layers, num_heads=num_heads, dropout_rate=dropout,
            feed_forward_proj=feed_forward_proj, tie_word_embeddings=tie_word_embeddings,
            pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS, decoder_start_token_id=BOS,
        )
        config._attn_implementation = attn_implementation
        self.t5 = T5ForConditionalGeneration(config)

    @property
    def d_model(self) -> int:
        return self.cfg["d_model"]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.t5.shared(ids)

    def encode(self, ctx: Context) -> Context:
        hm = ctx.extras.get("history_mask")  # optional bool [B, S, S] from a head (CARE's progressive encoding)
        mask = ctx.mask.long() if hm is None else additive_mask(ctx.mask[:, None, :] & hm, ctx.embeds.dtype)
        enc = self.t5.get_encoder()(inputs_embeds=ctx.embeds, attention_mask=mask)
        return ctx.replace(states=enc.last_hidden_state)

    def decode(self, ctx, embeds, ctx_mask, state):
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        state = state if state is not None else {}
        use_cache = state.get("use_cache", False)
        cache = state.get("cache")
        if use_cache and cache is None:
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        if ctx_mask is None:
            enc_mask = ctx.mask.long()
        else:
            enc_mask = additive_mask(ctx.mask[:, None, :] & ctx_mask, embeds.dtype if embeds.is_floating_point() else torch.float32)
        out, state["cache"] = run_with_cache(
            self.t5.get_decoder(), cache, use_cache,
            inputs_embeds=embeds, encoder_hidden_states=ctx.states, encoder_attention_mask=enc_mask,
        )
        return out.last_hidden_state, state

    def select(self, state: dict[str, Any], idx: torch.Tensor, context: bool = True) -> None:
        cache = state.get("cache")
        if cache is None:
            return
        if context:
            cache.reorder_cache(idx)
        else:  # cross-attention keys/values are the same for every beam of a request
            cache.self_attention_cache.reorder_cache(idx)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.t5.config.tie_word_embeddings:
            hidden = hidden * (self.d_model**-0.5)
        return self.t5.lm_head(hidden)

    def config_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.cfg}
