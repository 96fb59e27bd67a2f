"""The head plug-in interface: how CARE, GenPlugin (and others) change a backbone without forking it.

A model is ``backbone + [heads]``. The decoder side is laid out in *steps*: step ``t`` (``t = 0..L-1``)
produces SID token ``c_t`` and feeds the segment

    [ emb(prev_t) , extra vectors of head 1 , extra vectors of head 2 , ... ]

with ``prev_0 = BOS`` and ``prev_t = c_{t-1}``; the logits for ``c_t`` are read at the segment's last
position. With no heads every segment has length 1: plain teacher forcing. Hooks (all optional, all
no-ops in :class:`Head`):

- ``n_step_inputs(t)`` / ``step_inputs(t, batch_size)``: extra input vectors before token ``t``
  (CARE: ``n_t`` learnable query vectors; the item token is read from the last query's output).
- ``context_inputs(ctx)``: change / extend the history embeddings before the encoder (TIGER) or in
  the prompt (decoder-only) — e.g. GenPlugin's language view or retrieved neighbours for an LM.
  A head may also put ``ctx.extras["history_mask"]`` (bool ``[B, S, S]``, which history positions
  each history position may attend to) there: the backbones AND it into the T5 encoder's
  self-attention / the decoder-only prompt's causal mask (CARE's progressive history encoding).
- ``context_states(ctx)``: change / extend the encoded history (TIGER only), e.g. GenPlugin's
  retrieval augmentation concatenating cached user representations for the decoder.
- ``context_mask(ctx, layout)``: bool ``[B, T, S]``, which context positions each decoder position
  may attend to (ANDed over heads and with padding) — CARE's progressive mask: queries of step
  ``t`` see only levels ``< t+1`` of every history item (``ctx.levels``).
- ``teacher_inputs(embeds, targets, ctx)``: replace the teacher-forced token embeddings (training
  only) — GenPlugin's semantic substitution.
- ``losses(out)``: extra named training losses (already weighted), e.g. CARE's diversity loss,
  GenPlugin's contrastive / KL losses (a head may run extra backbone passes through ``self.model``).
- ``adjust_logits(t, logits, state)``: change step logits during decoding (before log-softmax).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn


EXTRA_USER = "user"  # ctx.extras key: int64 [B] dataset user index of each row (-1 = unknown), set by training and ranking


@dataclass
class Context:
    """The encoded history a decoder attends to (per batch row)."""

    embeds: torch.Tensor  # [B, S, d] input embeddings of the history (TIGER encoder input / LM prompt)
    mask: torch.Tensor  # bool [B, S] (False = padding)
    levels: torch.Tensor  # int64 [B, S] SID level of each position, -1 = special / added by a head
    slots: torch.Tensor  # int64 [B, S] history slot, -1 = special / added
    states: torch.Tensor | None = None  # [B, S, d] encoder outputs (TIGER), None for decoder-only
    extras: dict[str, Any] = field(default_factory=dict)  # side inputs: "items", "user" (EXTRA_USER), head data

    def replace(self, **kw) -> "Context":
        return replace(self, **kw)

    def expand(self, k: int) -> "Context":
        """Repeat every row ``k`` times (row ``b`` → rows ``b*k .. b*k+k-1``) for beam search."""
        rep = lambda x: x.repeat_interleave(k, dim=0) if isinstance(x, torch.Tensor) else x  # noqa: E731
        return Context(rep(self.embeds), rep(self.mask), rep(self.levels), rep(self.slots), rep(self.states),
                       {key: rep(v) for key, v in self.extras.items()})


@dataclass
class Layout:
    """Where each step's segment lives in the decoder sequence (same for every row)."""

    seg_lens: list[int]  # length of each step's segment
    pos_step: torch.Tensor  # int64 [T] step of every decoder position
    pos_owner: torch.Tensor  # int64 [T] -1 = the token position, i = extra vector of head i
    readout: torch.Tensor  # int64 [L] position whose output predicts c_t

    @classmethod
    def build(cls, n_levels: int, heads: list["Head"]) -> "Layout":
        seg_lens, step, owner = [], [], []
        for t in range(n_levels):
            own = [-1]
            for i, h in enumerate(heads):
                own += [i] * int(h.n_step_inputs(t))
            seg_lens.append(len(own))
            step += [t] * len(own)
            owner += own
        ends = torch.tensor(seg_lens).cumsum(0) - 1
        return cls(seg_lens, torch.tensor(step), torch.tensor(owner), ends)

    def step_slice(self, t: int) -> slice:
        start = sum(self.seg_lens[:t])
        return slice(start, start + self.seg_lens[t])


@dataclass
class ForwardOutput:
    """What a teacher-forced forward pass returns (heads read it in ``losses``)."""

    logits: torch.Tensor  # [B, L, V] logits predicting each target token
    hidden: torch.Tensor  # [B, T, d] decoder outputs at every decoder position
    targets: torch.Tensor  # int64 [B, L] global target tokens
    ctx: Context
    layout: Layout
    losses: dict[str, torch.Tensor] = field(default_factory=dict)


class Head(nn.Module):
    """Base head: every hook is the identity / no-op. Subclass and override what you need."""

    name = "head"
    supports = ("tiger", "decoder_lm")  # backbones the head works with

    def attach(self, model: nn.Module) -> None:
        """Called once by the model; keeps a non-owning reference (not a submodule)."""
        object.__setattr__(self, "_model", model)

    @property
    def model(self) -> nn.Module:
        return self._model  # type: ignore[attr-defined]

    def n_step_inputs(self, step: int) -> int:
        return 0

    def step_inputs(self, step: int, batch_size: int) -> torch.Tensor | None:
        return None

    def context_inputs(self, ctx: Context) -> Context:
        return ctx

    def context_states(self, ctx: Context) -> Context:
        return ctx

    def context_mask(self, ctx: Context, layout: Layout) -> torch.Tensor | None:
        return None

    def teacher_inputs(self, embeds: torch.Tensor, targets: torch.Tensor, ctx: Context) -> torch.Tensor:
        return embeds

    def losses(self, out: ForwardOutput) -> dict[str, torch.Tensor]:
        return {}

    def adjust_logits(self, step: int, logits: torch.Tensor, ctx: Context) -> torch.Tensor:
        return logits

    def config(self) -> dict[str, Any]:
        """JSON config stored in a checkpoint (with ``type``) to rebuild the head."""
        return {"type": self.name}

    def first_stage_config(self) -> dict[str, Any]:
        """The part of :meth:`config` the first training stage depends on. A head with a second stage
        (``second_stage``) leaves out the options only that stage reads, so variants that differ in
        them share one first stage (``train_generator``)."""
        return self.config()


HEAD_TYPES: dict[str, type[Head]] = {}


def register_head(cls: type[Head]) -> type[Head]:
    """Decorator: make a head type buildable from a checkpoint's / params' ``{"type": name, ...}``."""
    HEAD_TYPES[cls.name] = cls
    return cls


def build_head(cfg: dict[str, Any], d_model: int) -> Head:
    cfg = dict(cfg)
    typ = cfg.pop("type", None)
    if typ not in HEAD_TYPES:
        raise ValueError(f"unknown head type {typ!r}; registered: {sorted(HEAD_TYPES)}")
    return HEAD_TYPES[typ](d_model=d_model, **cfg)
