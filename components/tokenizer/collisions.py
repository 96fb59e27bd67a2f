"""Collision handling: make every item's full SID unique.

Two strategies (``tokenizer.collisions``):

- ``extra_level`` (TIGER): append a disambiguation token, the item's rank among the items that
  share its quantized SID (0 for an item alone); the new level's size is the largest group.
  Nothing is appended when there is no collision.
- ``reassign``: in each group of items sharing a SID, the item closest to its last-level
  codeword keeps it; every other item moves to the nearest *free* code at the last level:
  ``argmin_k ||r_{L-1}(i) - C_{L-1}[k]||²`` over ``k`` with ``(prefix_i, k)`` unused. SID length
  stays ``L``. When every last-level code under the item's prefix is taken, the search widens
  one level up: ``(c_0..c_{L-3}, j, k)`` with ``j`` in order of ``||r_{L-2} - C_{L-2}[j]||²`` and
  ``k`` nearest to ``r_{L-2} - C_{L-2}[j]``; if that fails too the error says to use ``extra_level``.

Both return the number of items whose SID changed ("resolved").
"""

from __future__ import annotations

import numpy as np

from components.tokenizer.encoders import TokenizerError
from components.tokenizer.rq_kmeans import residual_at


def collision_groups(sids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group id per item, rank of the item inside its group in index order)."""
    _, inv = np.unique(sids, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    order = np.argsort(inv, kind="stable")
    sorted_inv = inv[order]
    rank_sorted = np.arange(len(inv)) - np.searchsorted(sorted_inv, sorted_inv, side="left")
    rank = np.empty_like(rank_sorted)
    rank[order] = rank_sorted
    return inv, rank


def add_extra_level(sids: np.ndarray, sizes: list[int]) -> tuple[np.ndarray, list[int], int]:
    """TIGER-style disambiguation token; returns (sids, sizes, n_resolved)."""
    _, rank = collision_groups(sids)
    n_resolved = int((rank > 0).sum())
    if n_resolved == 0:
        return sids.astype(np.int32), list(sizes), 0
    out = np.concatenate([sids, rank[:, None]], axis=1).astype(np.int32)
    return out, [*sizes, int(rank.max()) + 1], n_resolved


def reassign_last_level(sids: np.ndarray, sizes: list[int], x: np.ndarray, codewords: list[np.ndarray], capacity: int | None = None) -> tuple[np.ndarray, int]:
    """Move all but one item of each colliding group to the nearest free last-level code.

    With ``capacity`` (balanced codebooks), codes already holding ``capacity`` items at the last
    level are tried only after every code with room (under the prefix, then one level up), so the
  size constraint survives except for the rare item whose every candidate with room is taken.
    """
    sids = sids.astype(np.int32).copy()
    L = sids.shape[1]
    if len(codewords) < L:
        raise TokenizerError("reassign needs codewords for every level")
    r = residual_at(x, sids, codewords, L - 1)
    cw = codewords[L - 1]
    own = ((r - cw[sids[:, -1]]) ** 2).sum(1)
    inv, _ = collision_groups(sids)
    # keep, per group, the item nearest to its codeword; move the rest
    order = np.lexsort((own, inv))
    first = np.r_[True, inv[order][1:] != inv[order][:-1]]
    movers = np.sort(order[~first])
    if movers.size == 0:
        return sids, 0
    taken = {tuple(row) for row in sids[np.setdiff1d(np.arange(len(sids)), movers)].tolist()}
    d = ((r[movers, None, :] - cw[None, :, :]) ** 2).sum(-1)  # [m, K]
    ranked = np.argsort(d, axis=1, kind="stable")
    stay = np.setdiff1d(np.arange(len(sids)), movers)
    load = np.bincount(sids[stay, -1], minlength=cw.shape[0])
    load2 = np.bincount(sids[:, -2], minlength=codewords[L - 2].shape[0]) if L >= 2 else None
    for row, i in enumerate(movers):
        prefix = tuple(sids[i, :-1].tolist())
        full = None
        # with a capacity: codes with room under the prefix, then with room one level up, then any
        for strict in ([True, False] if capacity is not None else [False]):
            ks = _room_first(ranked[row], load, capacity, strict)
            k = next((int(k) for k in ks if prefix + (int(k),) not in taken), None)
            if k is not None:
                full = prefix + (k,)
                break
            if L >= 2:
                full = widen_search(x[i], sids[i], codewords, taken, (load2, load), capacity, strict)
                if full is not None:
                    break
        if full is None:
            raise TokenizerError(f"reassign: all {sizes[-1]} last-level codes under prefix {prefix} are taken; use tokenizer.collisions=extra_level")
        if L >= 2:
            load2[sids[i, -2]] -= 1
            load2[full[-2]] += 1
        sids[i] = full
        taken.add(full)
        load[full[-1]] += 1
    return sids, int(movers.size)


def _room_first(order: np.ndarray, load: np.ndarray | None, capacity: int | None, strict: bool = False) -> np.ndarray:
    """``order`` with codes whose load is below ``capacity`` first (only those when ``strict``)."""
    if capacity is None or load is None:
        return order
    room = load[order] < capacity
    return order[room] if strict else np.concatenate([order[room], order[~room]])


def widen_search(
    x: np.ndarray,
    sid: np.ndarray,
    codewords: list[np.ndarray],
    taken: set,
    loads: tuple[np.ndarray, np.ndarray] | None = None,
    capacity: int | None = None,
    strict: bool = False,
) -> tuple[int, ...] | None:
    """Nearest free ``(c_0..c_{L-3}, j, k)`` for one vector ``x`` whose prefix ``sid[:L-2]`` is kept.

    With ``capacity`` and ``loads`` (item counts per code at levels L-2 and L-1), codes with room
    are tried first at both levels (only they, when ``strict``).
    """
    L = len(codewords)
    head = tuple(int(t) for t in sid[: L - 2])
    r = np.array(x, dtype=np.float32, copy=True)
    for lvl in range(L - 2):
        r -= codewords[lvl][sid[lvl]]
    cw2, cwl = codewords[L - 2], codewords[L - 1]
    load2, load_last = loads if loads is not None else (None, None)
    for j in _room_first(np.argsort(((r[None] - cw2) ** 2).sum(1), kind="stable"), load2, capacity, strict):
        r2 = r - cw2[j]
        for k in _room_first(np.argsort(((r2[None] - cwl) ** 2).sum(1), kind="stable"), load_last, capacity, strict):
            cand = head + (int(j), int(k))
            if cand not in taken:
                return cand
    return None


def resolve_collisions(
    sids: np.ndarray, sizes: list[int], strategy: str, x: np.ndarray | None = None, codewords: list[np.ndarray] | None = None, capacity: int | None = None
) -> tuple[np.ndarray, list[int], int]:
    """Apply ``strategy``; returns (unique sids, sizes, n_resolved)."""
    if strategy == "extra_level":
        return add_extra_level(sids, sizes)
    if strategy == "reassign":
        if x is None or codewords is None:
            raise TokenizerError("reassign needs the quantized vectors and codewords")
        out, n = reassign_last_level(sids, sizes, x, codewords, capacity)
        return out, list(sizes), n
    raise TokenizerError(f"unknown collision strategy {strategy!r} (extra_level | reassign)")
