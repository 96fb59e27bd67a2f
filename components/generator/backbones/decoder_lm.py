"""Decoder-only LM backbone: ``Qwen2ForCausalLM`` over [history SID tokens | decoder segments].

Either a small random-init model from a ``Qwen2Config`` (SID vocabulary = model vocabulary), or a
local pretrained directory (e.g. Qwen2.5-0.5B, loaded offline) whose vocabulary is extended with
the SID vocabulary: SID token ``v`` is model token ``base_vocab + v`` (``token_map``); logits are
the model's logits at those columns. LoRA (peft) goes on the attention projections
``q_proj, k_proj, v_proj, o_proj``; the new-token embedding rows stay trainable
(``trainable_token_indices``). ``lora="auto"``: LoRA for pretrained weights, full training for a
random-init model.

The prompt is the history, left-padded; positions are ``cumsum(mask) - 1``. Heads' context masks
become a 4-D additive attention mask (causal + padding + head mask on the prompt columns).
"""

from __future__ import annotations

from typing import Any

import torch

from components.generator.backbones.base import Backbone, additive_mask, run_with_cache
from components.generator.heads.base import Context
from components.generator.vocab import BOS, EOS, PAD, SIDVocab

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


class DecoderLMBackbone(Backbone):
    kind = "decoder_lm"

    def __init__(self, vocab: SIDVocab, pretrained: str | None = None, hidden_size: int = 128, intermediate_size: int = 512,
                 num_layers: int = 4, num_heads: int = 4, num_kv_heads: int = 2, max_positions: int = 1024,
                 dropout: float = 0.0, lora: str | bool = "auto", lora_r: int = 8, lora_alpha: int = 16,
                 lora_dropout: float = 0.05, attn_implementation: str = "sdpa"):
        super().__init__(vocab)
        self.cfg = dict(pretrained=pretrained, hidden_size=hidden_size, intermediate_size=intermediate_size, num_layers=num_layers,
                        num_heads=num_heads, num_kv_heads=num_kv_heads, max_positions=max_positions, dropout=dropout, lora=lora,
                        lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, attn_implementation=attn_implementation)
        if pretrained:
            from transformers import AutoModelForCausalLM

            lm = AutoModelForCausalLM.from_pretrained(pretrained, dtype=torch.float32, attn_implementation=attn_implementation)
            base = lm.get_input_embeddings().weight.shape[0]
            lm.resize_token_embeddings(base + vocab.size, mean_resizing=True)
            lm.config.pad_token_id = base + PAD
            lm.config.bos_token_id = base + BOS
            lm.config.eos_token_id = base + EOS
            self.register_buffer("token_map", torch.arange(vocab.size) + base, persistent=False)
            self.base_vocab = base
        else:
            from transformers import Qwen2Config, Qwen2ForCausalLM

            config = Qwen2Config(
                vocab_size=vocab.size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                max_position_embeddings=max_positions, attention_dropout=dropout, tie_word_embeddings=True,
                pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
            )
            config._attn_implementation = attn_implementation
            lm = Qwen2ForCausalLM(config)
            self.token_map = None
            self.base_vocab = 0
        use_lora = bool(pretrained) if lora == "auto" else bool(lora)
        self.cfg["lora_applied"] = use_lora
        if use_lora:
            from peft import LoraConfig, get_peft_model

            names = {n.rsplit(".", 1)[-1] for n, _ in lm.named_modules()}
            missing = [t for t in LORA_TARGETS if t not in names]
            if missing:
                raise ValueError(f"LoRA target modules {missing} not found in the LM's named_modules()")
            pcfg = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=list(LORA_TARGETS),
                              trainable_token_indices={"embed_tokens": list(range(self.base_vocab, self.base_vocab + vocab.size))})
            lm = get_peft_model(lm, pcfg)
        self.lm = lm

    @property
    def d_model(self) -> int:
        return int(self.lm.get_input_embeddings().weight.shape[1])

    def _ids(self, ids: torch.Tensor) -> torch.Tensor:
        return ids if self.token_map is None else self.token_map[ids]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm.get_input_embeddings()(self._ids(ids))

    def decode(self, ctx: Context, embeds: torch.Tensor, ctx_mask: torch.Tensor | None, state: dict[str, Any] | None):
        state = state if state is not None else {}
        use_cache = state.get("use_cache", False)
        past = int(state.get("past_dec", 0))
        prefill = not state.get("prefilled", False)
        N, q, _ = embeds.shape
        P = ctx.embeds.shape[1]
        dev = embeds.device
        plen = ctx.mask.sum(1)
        dec_pos = plen[:, None] + past + torch.arange(q, device=dev)[None, :]
        if prefill:
            x = torch.cat([ctx.embeds.to(embeds.dtype), embeds], dim=1)
            pos = torch.cat([(ctx.mask.long().cumsum(1) - 1).clamp(min=0), dec_pos], dim=1)
        else:
            x, pos = embeds, dec_pos
        total = P + past + q
        hm = ctx.extras.get("history_mask") if prefill else None  # optional bool [N, P, P] prompt mask from a head
        if ctx_mask is None and hm is None:
            mask = torch.cat([ctx.mask, torch.ones(N, past + q, dtype=torch.bool, device=dev)], dim=1).long()
        else:
            rows = (P if prefill else 0) + q
            qi = torch.arange(total - rows, total, device=dev)  # absolute position of each query row
            kj = torch.arange(total, device=dev)
            allowed = (kj[None, :] <= qi[:, None])[None].expand(N, rows, total).clone()
            allowed[:, :, :P] &= ctx.mask[:, None, :]
            if ctx_mask is not None:
                allowed[:, rows - q :, :P] &= ctx_mask
            if hm is not None:
                allowed[:, :P, :P] &= hm
            mask = additive_mask(allowed, x.dtype if x.dtype != torch.bfloat16 else torch.float32)
        body = self.lm.get_decoder()
        out, state["cache"] = run_with_cache(body, state.get("cache"), use_cache, inputs_embeds=x, attention_mask=mask, position_ids=pos)
        state["past_dec"] = past + q
        state["prefilled"] = True
        return out.last_hidden_state[:, -q:], state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.lm.get_output_embeddings()(hidden)
        return out if self.token_map is None else out[..., self.token_map]

    def config_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **{k: v for k, v in self.cfg.items() if k != "lora_applied"}}
