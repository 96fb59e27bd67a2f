"""Token-level popularity-bias amplification per SID level (CARE §1 Fig. 1, §4.3.2 Fig. 7).

For SID level ``l`` with ``S_l`` tokens (``codebook.sids[:, l]``):

- token popularity   pop_l(t) = Σ_{i : sid_i[l] = t} count_i     (training interactions of the
  items under the token, CRAB Eq. 3)
- token groups       the tokens some item uses, sorted by pop_l descending (ties by token id),
  cut into ``G`` groups of equal token count (``np.array_split``); group 0 = most popular
  (CARE's G1..G8, so G = 8); unused codes are left out (nothing can generate them)
- generated share    P_gen(g)  = #{generated level-l tokens in group g} / #{generated tokens}
- test share         P_test(g) = #{test-target level-l tokens in group g} / n
- amplification      A(g) = P_gen(g) / P_test(g)   (CARE: "246% on the most popular group" is
                     A(0) = 2.46); ``None`` where P_test(g) = 0
- summary            amp_top = A(0), and the total-variation distance
                     TV_l = ½ Σ_g |P_gen(g) − P_test(g)|

"Generated tokens" are either the tokens a model emits per level (CARE feeds the history and the
target's prefix and takes the argmax token at each position: pass that ``[n, L]`` matrix to
:func:`token_bias`), or, from ranked lists, the SIDs of the top-``k`` recommended items
(:func:`token_bias_from_topk`, ``k = 1`` by default: the item the model would show first).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from components.evaluation.metrics import INVALID, RankingError, check_topk


def token_popularity(sids: np.ndarray, sizes: list[int], train_counts: np.ndarray) -> list[np.ndarray]:
    """pop_l(t) per level: training interactions of the items whose level-l token is t."""
    sids = np.asarray(sids)
    counts = np.asarray(train_counts, dtype=np.float64)
    if sids.shape[0] != counts.shape[0]:
        raise RankingError(f"codebook has {sids.shape[0]} items, train_counts {counts.shape[0]}")
    return [np.bincount(sids[:, lvl], weights=counts, minlength=sizes[lvl]) for lvl in range(sids.shape[1])]


def token_groups(popularity: np.ndarray, n_groups: int, present: np.ndarray | None = None) -> np.ndarray:
    """Group id per token (0 = most popular), equal token count per group, over the ``present``
    tokens only (those some item uses; the others get -1: they can be neither generated nor a target)."""
    size = popularity.shape[0]
    present = np.ones(size, dtype=bool) if present is None else np.asarray(present, dtype=bool)
    used = np.flatnonzero(present)
    g = min(n_groups, used.size)
    if g < 1:
        raise RankingError(f"n_groups must be >= 1 and some token must be used, got n_groups={n_groups}, {used.size} used tokens")
    out = np.full(size, -1, dtype=np.int64)
    order = used[np.argsort(-popularity[used], kind="stable")]
    for gid, idx in enumerate(np.array_split(order, g)):
        out[idx] = gid
    return out


def token_bias(
    generated_tokens: np.ndarray,
    target_tokens: np.ndarray,
    sids: np.ndarray,
    sizes: list[int],
    train_counts: np.ndarray,
    n_groups: int = 8,
) -> list[dict[str, Any]]:
    """Per level: group shares of generated vs test-target tokens and their ratio (see module doc).

    ``generated_tokens`` ``[m, L]`` (rows may be ``INVALID`` = -1 for "nothing generated": skipped),
    ``target_tokens`` ``[n, L]``.
    """
    gen = np.asarray(generated_tokens)
    tgt = np.asarray(target_tokens)
    L = len(sizes)
    if gen.ndim != 2 or gen.shape[1] != L or tgt.ndim != 2 or tgt.shape[1] != L:
        raise RankingError(f"generated {gen.shape} and target {tgt.shape} tokens must be [*, {L}] matrices")
    if tgt.shape[0] == 0:
        raise RankingError("empty test set: no target tokens")
    pops = token_popularity(sids, sizes, train_counts)
    out = []
    for lvl in range(L):
        g_tok, t_tok = gen[:, lvl], tgt[:, lvl]
        g_tok = g_tok[g_tok != INVALID]
        for name, tok in (("generated", g_tok), ("target", t_tok)):
            if tok.size and (tok.min() < 0 or tok.max() >= sizes[lvl]):
                raise RankingError(f"level {lvl}: {name} tokens outside [0, {sizes[lvl]})")
        if g_tok.size == 0:
            raise RankingError(f"level {lvl}: no generated token to compare")
        present = np.bincount(np.asarray(sids)[:, lvl], minlength=sizes[lvl]) > 0
        groups = token_groups(pops[lvl], n_groups, present)
        for name, tok in (("generated", g_tok), ("target", t_tok)):
            if (groups[tok] < 0).any():
                raise RankingError(f"level {lvl}: a {name} token is used by no item of the codebook")
        G = int(groups.max() + 1)
        p_gen = np.bincount(groups[g_tok], minlength=G) / g_tok.size
        p_test = np.bincount(groups[t_tok], minlength=G) / t_tok.size
        amp = [float(a / b) if b > 0 else None for a, b in zip(p_gen, p_test)]
        out.append(
            {
                "level": lvl,
                "n_groups": G,
                "generated_share": [float(x) for x in p_gen],
                "test_share": [float(x) for x in p_test],
                "amplification": amp,
                "amp_top": amp[0],
                "tv": float(0.5 * np.abs(p_gen - p_test).sum()),
            }
        )
    return out


def token_bias_from_topk(codebook: Any, topk: np.ndarray, targets: np.ndarray, train_counts: np.ndarray, k: int = 1, n_groups: int = 8) -> list[dict[str, Any]]:
    """:func:`token_bias` with generated tokens = SIDs of the top-``k`` items of each ranked list."""
    topk = check_topk(topk, targets, n_items=codebook.n_items, k=k)
    slots = topk[:, :k].ravel()
    slots = slots[slots != INVALID]
    if slots.size == 0:
        raise RankingError(f"no valid item in any top-{k} list")
    return token_bias(codebook.sids[slots], codebook.sids[np.asarray(targets)], codebook.sids, codebook.sizes, train_counts, n_groups)
