"""CARE (Lin et al., WWW'26): query-anchored reasoning, progressive history encoding with a
progressive attention mask, and a reasoning diversity loss, as a head plug-in.

**Query-anchored reasoning** (Eq. 2). Step ``t`` (``t = 0..L-1``) feeds the segment
``[c_{t-1}, Q_t]`` (``c_{-1}`` = BOS): the fed token first, then ``n_t`` learnable query vectors
``Q_t``, so the decoder sequence is::

    p_t = M(h, BOS, Q_0, c_0, Q_1, ..., c_{t-1}, Q_t),   c_t = argmax p_t

which is the paper's ``M(h, Q_1, c_1, ..., Q_{t-1}, c_{t-1}, Q_t)`` with the backbone's decoder start
token in front. The logits of ``c_t`` are read at the last query of ``Q_t`` (with ``n_t = 0``: at
the fed token, i.e. plain TIGER). Every step has its own queries (``sum_t n_t`` distinct rows of
``queries``). All steps run in the same teacher-forced pass during training and one incremental
pass per step during beam search, i.e. no extra autoregressive steps.

**Progressive attention** (Sec. 3.1.2-3.1.3). ``lev(j)`` is the SID level of history position
``j`` (specials such as TIGER's EOS and positions added by other heads count as level 0, i.e.
visible to every step); ``X~_t`` is the history restricted to levels ``<= t``. Two masks:

- decoder mask (``progressive``, Fig. 5): a decoder position of step ``t`` attends to history
  position ``j`` only if ``lev(j) <= t`` (cross-attention mask for TIGER, the prompt columns of the
  4-D mask for the decoder-only LM). ``mask_scope="segment"`` restricts every position of step
  ``t``'s segment (the fed token ``c_{t-1}`` and ``Q_t``); ``"queries"`` only the queries (Fig. 5
  literally; the fed token then sees the whole history and the queries read it from there).
- history mask (``progressive_history``): history position ``i`` attends to history position
  ``j`` only if ``lev(j) <= lev(i)``, ANDed with the backbone's own mask (bidirectional + padding
  for the T5 encoder, causal + padding for the decoder-only prompt). ``"auto"`` (default) = ``true``
  on TIGER, ``false`` on the decoder-only LM. ``false`` is the paper's text: the history is encoded
  once with the backbone's standard mask and only what step ``t`` reads from it is restricted.
  ``true`` is an extension; ``auto`` keeps it on TIGER because that is the configuration TIGER+CARE
  was measured with.

What the masks guarantee (``progressive: true``, ``mask_scope="segment"``; tested against references
built without these mask functions in ``tests/test_care_faithful.py``):

1. Decoder side (either history encoding): step ``t``'s logits equal those of a decoder whose
   positions of each step ``s <= t`` physically attend only to the level-``<= s`` rows of *one*
   encoding ``H`` of the full history (T5: cross-attention over those encoder states only; LM: a
   KV cache holding only those prompt entries, RoPE positions of the full layout).
2. ``progressive_history: false``: ``H`` is the backbone's standard encoding, so its level-``<= t``
   rows carry information from finer levels (T5: of every item; LM: of the earlier items) and
   step ``t``'s logits do depend on level-``> t`` tokens.
3. ``progressive_history: true``: the level-``<= t`` rows of ``H`` depend on level-``<= t`` tokens
   only, so step ``t``'s logits are unchanged when the level-``> t`` tokens are changed (or, on
   TIGER, replaced by padding at the same positions).
   Precisely, ``H`` is a cascade: the level-``l`` rows are those of the backbone's standard
   encoding of ``X~_l`` in which, at every layer, the states of the levels ``< l`` are held at their
   own (cascade) values instead of attending to level ``l``.

Not guaranteed: the paper's ``h_t = KV(X~_t)`` in the sense of Fig. 4's costly version (each
``X~_t`` encoded separately with the backbone's standard mask). Only step 0 equals it, and only with
``progressive_history: true`` (level 0 of the cascade *is* the standard encoding of ``X~_0``: T5
with the level-``> 0`` positions padded, relative positions unchanged; LM on a shorter prompt with
the full layout's RoPE ids). For ``t >= 1`` it does not: in a separate standard encoding of
``X~_t`` the level-``< t`` tokens attend to the level-``t`` tokens (T5: all of them; LM: those of
earlier items), here they never do (``true``) or also see the levels ``> t`` (``false``); on tiny
random models the step-1/2 logits differ by O(1) on TIGER and O(1e-2) on the LM.
With ``mask_scope="queries"`` neither 1 nor 3 holds: the fed token of every step (BOS at step 0)
sees the whole history and the queries attend to it.

**Diversity loss** (Eq. 4-5): with ``o_1..o_N`` the decoder output states of all ``N = sum_t n_t``
queries of a sample, ``L_div = 1/(N^2 - N) * sum_{i != j} cos(o_i, o_j)`` averaged over the batch;
the head adds ``alpha * L_div`` to the generative loss (``alpha = 0.7`` in the paper).

Ablations (Sec. 4.4.2) are options: ``queries: 0-0-0`` (w/o reasoning), ``progressive: false``
(w/o PA: the backbone's plain masks, both the decoder and the history mask off), ``alpha: 0``
(w/o L_div). Training and decoding build the same masks (no train/eval difference).
"""

from __future__ import annotations

import re
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import nn

from components.generator.heads.base import Context, ForwardOutput, Head, Layout, register_head

HISTORY_MASK_KEY = "history_mask"  # ctx.extras key read by the backbones: bool [B, S, S]


class CareConfigError(ValueError):
    """Bad CARE head options (query counts, alpha, scope)."""


class CareOptions(BaseModel):
    """``{type: care, ...}`` options of a generator head (checked when the model is built)."""

    model_config = ConfigDict(extra="forbid")

    queries: str | list[int] = Field("auto", description="reasoning queries per SID step, e.g. '1-1-2-2' or [1, 1, 2, 2]; "
                                                          "one count per SID level; auto = 1 for the first half, 2 for the second")
    alpha: float = Field(0.7, ge=0.0, description="weight of the reasoning diversity loss (Eq. 5); 0 = off")
    progressive: bool = Field(True, description="progressive attention mask on the decoder side (false = plain masks, 'w/o PA')")
    progressive_history: bool | Literal["auto"] = Field(
        "auto", description="history self-attention: level-l positions see only levels <= l (true) or the backbone's standard "
                            "mask (false, the paper); auto = true on tiger (the measured TIGER+CARE), false on decoder_lm")
    mask_scope: Literal["segment", "queries"] = Field("segment", description="positions of step t restricted to levels <= t: "
                                                                             "the whole segment (token + queries) or the queries only")
    init_std: float | None = Field(None, gt=0.0, description="std of the query init; null = the std of the SID token embeddings")

    @field_validator("queries", mode="before")
    @classmethod
    def _counts(cls, v: Any) -> Any:
        if isinstance(v, str):
            if v == "auto":
                return v
            if not re.fullmatch(r"\s*\d+(\s*-\s*\d+)*\s*", v):
                raise ValueError(f"queries {v!r}: expected non-negative integers joined by '-', e.g. '1-1-2-2'")
            return [int(x) for x in v.split("-")]
        if isinstance(v, (list, tuple)):
            out = []
            for x in v:
                if isinstance(x, bool) or not (isinstance(x, int) or (isinstance(x, float) and x.is_integer())):
                    raise ValueError(f"queries {list(v)!r}: count {x!r} is not an integer")
                if int(x) < 0:
                    raise ValueError(f"queries {list(v)!r}: count {x!r} is negative")
                out.append(int(x))
            return out
        if isinstance(v, int) and not isinstance(v, bool):
            raise ValueError(f"queries {v!r}: give one count per SID level, e.g. '1-1-2' (a bare integer is ambiguous)")
        raise ValueError(f"queries {v!r}: expected a string like '1-1-2-2' or a list of integers")

    @field_validator("progressive_history", mode="before")
    @classmethod
    def _auto_or_bool(cls, v: Any) -> Any:
        if v == "auto" or isinstance(v, bool):
            return v
        raise ValueError(f"progressive_history {v!r}: expected true, false or 'auto'")


def format_counts(counts: list[int]) -> str:
    return "-".join(str(c) for c in counts)


def effective_levels(levels: torch.Tensor) -> torch.Tensor:
    """SID level per position with specials / head-added positions (``-1``) mapped to level 0."""
    return levels.clamp(min=0)


def history_mask(levels: torch.Tensor) -> torch.Tensor:
    """bool [B, S, S]: history position ``i`` may attend to ``j`` iff ``lev(j) <= lev(i)``."""
    lev = effective_levels(levels)
    return lev[:, None, :] <= lev[:, :, None]


def decoder_mask(levels: torch.Tensor, pos_step: torch.Tensor, restricted: torch.Tensor) -> torch.Tensor:
    """bool [B, T, S]: decoder position ``p`` may attend to history position ``j`` iff
    ``lev(j) <= step(p)`` where ``restricted[p]``, always otherwise."""
    lev = effective_levels(levels)
    allowed = lev[:, None, :] <= pos_step.to(lev.device)[None, :, None]
    return allowed | ~restricted.to(lev.device)[None, :, None]


@register_head
class CareHead(Head):
    name = "care"
    supports = ("tiger", "decoder_lm")

    def __init__(self, d_model: int, **options: Any):
        super().__init__()
        try:
            opt = CareOptions(**options)
        except ValidationError as e:
            msgs = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'care'}: "
                             + (f"unknown option (known: {', '.join(CareOptions.model_fields)})" if err["type"] == "extra_forbidden" else err["msg"])
                             for err in e.errors())
            raise CareConfigError(f"generator head 'care': {msgs}") from None
        self.opt = opt
        self.d_model = int(d_model)
        self.counts: list[int] | None = None if opt.queries == "auto" else list(opt.queries)  # type: ignore[arg-type]
        self.queries: nn.Parameter | None = None
        self.offsets: list[int] = []
        # resolved in attach() when "auto": true on TIGER, false on the decoder-only LM
        self.progressive_history: bool | None = None if opt.progressive_history == "auto" else bool(opt.progressive_history)

    # ---- set-up ---------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        super().attach(model)
        L = int(model.vocab.n_levels)
        if self.progressive_history is None:
            self.progressive_history = model.backbone.kind == "tiger"
        if self.counts is None:
            self.counts = [1] * (L - L // 2) + [2] * (L // 2)
        if len(self.counts) != L:
            raise CareConfigError(
                f"generator head 'care': queries {format_counts(self.counts)!r} gives {len(self.counts)} counts but the codebook's "
                f"SIDs have {L} levels (sizes {model.vocab.sizes}); give one count per level, e.g. {format_counts([1] * L)!r}")
        self.offsets = [0]
        for c in self.counts:
            self.offsets.append(self.offsets[-1] + c)
        total = self.offsets[-1]
        if total and self.queries is None:
            with torch.no_grad():
                std = self.opt.init_std or float(model.backbone.sid_embeddings().float().std())
            self.queries = nn.Parameter(torch.randn(total, self.d_model) * std)

    def config(self) -> dict[str, Any]:
        return {"type": self.name, "queries": format_counts(self.counts or []) if self.counts is not None else "auto",
                "alpha": self.opt.alpha, "progressive": self.opt.progressive,
                "progressive_history": "auto" if self.progressive_history is None else self.progressive_history,
                "mask_scope": self.opt.mask_scope, "init_std": self.opt.init_std}

    # ---- reasoning queries ----------------------------------------------------------------
    def n_step_inputs(self, step: int) -> int:
        return int(self.counts[step]) if self.counts is not None else 0

    def step_inputs(self, step: int, batch_size: int) -> torch.Tensor | None:
        n = self.n_step_inputs(step)
        if n == 0 or self.queries is None:
            return None
        q = self.queries[self.offsets[step] : self.offsets[step + 1]]
        return q[None].expand(batch_size, -1, -1)

    # ---- progressive history encoding -----------------------------------------------------
    def context_inputs(self, ctx: Context) -> Context:
        if not (self.opt.progressive and self.progressive_history):
            return ctx
        m = history_mask(ctx.levels)
        prev = ctx.extras.get(HISTORY_MASK_KEY)
        return ctx.replace(extras={**ctx.extras, HISTORY_MASK_KEY: m if prev is None else prev & m})

    def context_states(self, ctx: Context) -> Context:
        # TIGER: the encoder has consumed the history mask; do not carry it through beam search
        if HISTORY_MASK_KEY in ctx.extras:
            return ctx.replace(extras={k: v for k, v in ctx.extras.items() if k != HISTORY_MASK_KEY})
        return ctx

    def context_mask(self, ctx: Context, layout: Layout) -> torch.Tensor | None:
        if not self.opt.progressive:
            return None
        restricted = torch.ones_like(layout.pos_step, dtype=torch.bool) if self.opt.mask_scope == "segment" else self._own(layout)
        m = decoder_mask(ctx.levels, layout.pos_step, restricted)
        return m

    # ---- diversity loss -------------------------------------------------------------------
    def _index(self) -> int:
        for i, h in enumerate(self.model.heads):
            if h is self:
                return i
        raise RuntimeError("care head is not attached to its model")

    def _own(self, layout: Layout) -> torch.Tensor:
        return layout.pos_owner == self._index()

    def diversity(self, out: ForwardOutput) -> torch.Tensor | None:
        """Eq. 4: mean pairwise cosine similarity of the queries' output states (None if N < 2)."""
        own = self._own(out.layout).to(out.hidden.device)
        n = int(own.sum())
        if n < 2:
            return None
        q = F.normalize(out.hidden[:, own].float(), dim=-1)  # [B, N, d]
        sim = q @ q.transpose(1, 2)
        off = sim.sum((1, 2)) - sim.diagonal(dim1=1, dim2=2).sum(1)
        return (off / (n * n - n)).mean()

    def losses(self, out: ForwardOutput) -> dict[str, torch.Tensor]:
        if self.opt.alpha == 0:
            return {}
        div = self.diversity(out)
        return {} if div is None else {"div": self.opt.alpha * div}
