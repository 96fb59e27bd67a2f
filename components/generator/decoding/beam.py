"""Trie-constrained beam search, batched over requests and beams.

Score of a SID ``c`` for history ``h``: ``s(c) = sum_t log softmax(z_t)[c_t]`` with ``z_t`` the
model's logits over the whole SID vocabulary at step ``t`` (the same score HF ``generate`` uses
with ``prefix_allowed_tokens_fn``, and :meth:`GenerativeRecommender.score_sids`). Each step: one
log-softmax over ``[rows, V]``, a slice to the level's token block, one gather of the trie's valid
mask for every row's prefix node, one top-k over ``[B, width x level_size]``, one gather of the
child node ids, and one reorder of the KV cache / context rows. Step 0 runs on ``B`` rows (all
beams are equal there) and the reorder expands them to ``B x beam``.

Guarantees: every returned item is a valid SID of the catalog (only trie children are ever
finite), no item appears twice in a row (beams hold distinct prefixes), and with ``beam`` at
least the largest number of prefix nodes at any level the search is exhaustive, i.e. equal to
ranking every item by ``s``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from components.generator.decoding.trie import SIDTrie
from components.generator.vocab import BOS, EncodedHistory


@dataclass
class BeamResult:
    items: torch.Tensor  # int64 [B, k], -1 only if fewer than k items exist
    scores: torch.Tensor  # float32 [B, k], summed log-probabilities, best first
    tokens: torch.Tensor  # int64 [B, k, L] level-local SIDs


@torch.no_grad()
def constrained_beam_search(model, hist: EncodedHistory, trie: SIDTrie, beam: int, k: int,
                            extras: dict[str, Any] | None = None) -> BeamResult:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if beam < k:
        raise ValueError(f"beam ({beam}) must be >= k ({k}): a beam search returns at most `beam` items")
    if k > trie.n_items:
        raise ValueError(f"k ({k}) exceeds the catalog size ({trie.n_items} items)")
    vocab = model.vocab
    device = hist.tokens.device
    B = hist.tokens.shape[0]
    state = model.begin(hist, extras)
    width = 1
    node = torch.zeros(B, 1, dtype=torch.long, device=device)
    scores = torch.zeros(B, 1, dtype=torch.float32, device=device)
    tokens = torch.zeros(B, 1, 0, dtype=torch.long, device=device)
    prev = torch.full((B,), BOS, dtype=torch.long, device=device)
    rows = torch.arange(B, device=device)[:, None]
    neg_inf = torch.tensor(float("-inf"), device=device)
    for t in range(vocab.n_levels):
        logits = model.step(state, t, prev)  # [B*width, V]
        lo, hi = vocab.level_range(t)
        lp = torch.log_softmax(logits.float(), dim=-1)[:, lo:hi]  # [B*width, S_t]
        size = hi - lo
        flat_node = node.reshape(-1)
        lp = torch.where(trie.valid[t][flat_node], lp, neg_inf)
        cand = (scores.reshape(-1, 1) + lp).view(B, width * size)
        new_width = min(beam, width * size)
        top_s, top_i = cand.topk(new_width, dim=1)
        origin = torch.div(top_i, size, rounding_mode="floor")
        tok = top_i - origin * size
        src = (rows * width + origin).reshape(-1)  # rows of the previous state each new beam extends
        child = trie.child[t][flat_node[src], tok.reshape(-1)].view(B, new_width)
        alive = torch.isfinite(top_s)
        node = torch.where(alive, child, torch.zeros_like(child))
        scores = top_s
        tokens = torch.cat([tokens.reshape(B * width, -1)[src].view(B, new_width, -1), tok[..., None]], dim=-1)
        prev = (tok + lo).reshape(-1)
        if t < vocab.n_levels - 1:
            # every beam of a request shares its context: while the width stays the same only the
            # KV cache moves; when it grows (step 0, small levels) the context rows are expanded too
            model.select(state, src, context=(new_width != width))
        width = new_width
    items = torch.where(torch.isfinite(scores), node, torch.full_like(node, -1))
    return BeamResult(items[:, :k], scores[:, :k], tokens[:, :k])
