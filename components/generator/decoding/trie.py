"""The prefix tree of valid SIDs, built once, in one of two tensor layouts.

Level ``l`` has ``n_l`` prefix nodes (node = a distinct SID prefix of length ``l``; level 0 has
only the root, node 0). Nodes are numbered in lexicographic order of their prefixes, the same in
both layouts. Both layouts offer, per level ``l`` (what :func:`constrained_beam_search` uses):

- ``valid[l][nodes]``: bool ``[len(nodes), sizes[l]]``, token ``t`` may follow prefix node ``p``;
- ``child[l][nodes, tokens]``: int64, the node id of prefix ``p + (t,)`` at level ``l+1`` (-1 if
  invalid); at the last level the *item index* instead.

:class:`SIDTrie` (dense) stores ``valid[l]`` and ``child[l]`` as ``[n_l, sizes[l]]`` tensors, so a
decoding step is one row gather. Memory is ``sum_l n_l * sizes[l]`` entries (Industrial with
3 x 256 codes: ~1M; 10M items: ~10^8 or, with 4 x 256 codes, ~10^9), bounded by ``max_entries``.

:class:`SparseSIDTrie` (CSR) stores per level only the ``nnz_l`` edges (= ``n_{l+1}``, or the
items at the last level): ``indptr[l]`` ``[n_l + 1]`` and the sorted edge keys
``keys[l] = parent * sizes[l] + token`` ``[nnz_l]``; the child of edge ``e`` is ``e`` itself (edges
are in lexicographic order, like the nodes they lead to), at the last level ``leaf_item[e]``.
Memory is O(items x levels). A step builds the ``[beams, size]`` mask by scattering each beam
node's children (a fixed ``[beams, max_degree_l]`` gather, no per-beam Python work, no host sync;
on CPU each distinct node once) and finds a child by ``searchsorted`` on ``keys[l]``.

:func:`build_trie` picks the dense layout while it fits in ``max_entries`` and the sparse one
beyond; both give identical masks, children and beam-search results.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MAX_ENTRIES = 1 << 28  # dense entries (int64 child + bool valid: 9 bytes each, ~2.3 GiB at the limit)
_I32 = (1 << 31) - 1


@dataclass
class _Prefixes:
    """Validated SIDs in lexicographic order and the prefix structure both layouts are built from."""

    sizes: list[int]
    order: np.ndarray  # int64 [n]: item index of the i-th SID in lexicographic order
    sorted_sids: np.ndarray  # int64 [n, L]
    starts: list[np.ndarray]  # starts[l]: bool [n], sorted row i starts a new prefix of length l + 1
    n_nodes: list[int]  # prefix nodes at levels 0..L-1 (level 0: the root)

    @property
    def dense_entries(self) -> int:
        return sum(n * s for n, s in zip(self.n_nodes, self.sizes))

    def edges(self, lvl: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Edges of level ``lvl`` in lexicographic order: (sorted rows where they start, parent node, token)."""
        first = np.flatnonzero(self.starts[lvl])
        parent = (np.cumsum(self.starts[lvl - 1]) - 1)[first] if lvl else np.zeros(len(first), dtype=np.int64)
        return first, parent, self.sorted_sids[first, lvl]


def _prefixes(sids, sizes) -> _Prefixes:
    arr = np.asarray(sids)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"trie needs a non-empty [n_items, L] SID matrix, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind != "f" or not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"SIDs must be integer tokens, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    n, L = arr.shape
    try:
        sizes = [int(s) for s in sizes]
    except TypeError as e:
        raise ValueError(f"sizes must be a list of {L} codebook sizes, got {sizes!r}") from e
    if len(sizes) != L:
        raise ValueError(f"sizes has {len(sizes)} levels but the SIDs have {L}: {sizes}")
    if min(sizes) < 1:
        raise ValueError(f"codebook sizes must be >= 1, got {sizes}")
    lo, hi = arr.min(axis=0), arr.max(axis=0)
    for lvl, size in enumerate(sizes):
        if lo[lvl] < 0 or hi[lvl] >= size:
            bad = int(lo[lvl]) if lo[lvl] < 0 else int(hi[lvl])
            raise ValueError(f"SID level {lvl}: token {bad} outside [0, {size}) (sizes {sizes})")
    if float(np.prod(sizes, dtype=np.float64)) < 2.0**62:  # one mixed-radix key: one argsort, not L passes
        key = np.zeros(n, dtype=np.int64)
        for lvl, size in enumerate(sizes):
            key *= size
            key += arr[:, lvl]
        order = np.argsort(key, kind="stable")
        del key
    else:
        order = np.lexsort(arr.T[::-1])  # primary key: level 0
    s = arr[order]
    diff = s[1:] != s[:-1]  # [n-1, L]
    changed = np.zeros(n - 1, dtype=bool)
    starts, n_nodes = [], [1]
    for lvl in range(L):
        changed |= diff[:, lvl]
        st = np.empty(n, dtype=bool)
        st[0] = True
        st[1:] = changed
        starts.append(st)
        if lvl < L - 1:
            n_nodes.append(int(st.sum()))
    if not starts[-1].all():
        i = int(np.flatnonzero(~starts[-1])[0])
        raise ValueError(f"SIDs are not unique: resolve collisions before building the trie (items {int(order[i - 1])} "
                         f"and {int(order[i])} share {s[i].tolist()}; {int((~starts[-1]).sum())} duplicates)")
    return _Prefixes(sizes, order.astype(np.int64, copy=False), s, starts, n_nodes)


def _compact(a: np.ndarray, bound: int) -> torch.Tensor:
    """int32 when every value fits (``bound``: an upper bound of the values), else int64."""
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int32 if bound <= _I32 else np.int64))


class PrefixTrie:
    """What both layouts share. Subclasses set ``sizes``, ``n_levels``, ``n_items``, ``n_nodes``,
    ``device``, ``valid``/``child`` (per level, indexable as described in the module docstring) and
    implement :meth:`next_mask`, :meth:`next_node`, :meth:`_edges`, :meth:`tensors`, :meth:`to`."""

    layout = "?"
    sizes: list[int]
    n_levels: int
    n_items: int
    n_nodes: list[int]
    device: torch.device

    def _init_common(self, pre: _Prefixes) -> None:
        self.sizes = list(pre.sizes)
        self.n_levels = len(pre.sizes)
        self.n_items = int(pre.order.shape[0])
        self.n_nodes = list(pre.n_nodes)
        self.device = torch.device("cpu")

    def _as_long(self, x) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.long, device=self.device)

    def next_mask(self, lvl: int, nodes) -> torch.Tensor:  # bool [*nodes.shape, sizes[lvl]]
        raise NotImplementedError

    def next_node(self, lvl: int, nodes, tokens) -> torch.Tensor:  # int64, broadcast shape; -1 if invalid
        raise NotImplementedError

    def _edges(self, lvl: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(parent, token, child) numpy arrays of every edge of ``lvl``, sorted by (parent, token)."""
        raise NotImplementedError

    def tensors(self) -> list[torch.Tensor]:
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        """Bytes held by the structure's tensors."""
        return sum(t.element_size() * t.numel() for t in self.tensors())

    def items_of(self, local_sids: torch.Tensor) -> torch.Tensor:
        """Level-local SIDs [n, L] → item index (-1 if not an item)."""
        local_sids = self._as_long(local_sids)
        node = torch.zeros(local_sids.shape[0], dtype=torch.long, device=self.device)
        ok = torch.ones_like(node, dtype=torch.bool)
        for lvl in range(self.n_levels):
            nxt = self.next_node(lvl, node, local_sids[:, lvl])
            ok &= nxt >= 0
            node = torch.where(ok, nxt, torch.zeros_like(nxt))
        return torch.where(ok, node, torch.full_like(node, -1))

    def allowed_tokens_dict(self, offsets: list[int]) -> dict[tuple[int, ...], list[int]]:
        """Plain dict trie ``global-token prefix -> allowed next global tokens`` (the baseline
        HF ``prefix_allowed_tokens_fn`` uses in the benchmark and tests)."""
        out: dict[tuple[int, ...], list[int]] = {}
        prefix_of: list = [()]  # node id -> global-token prefix, current level
        for lvl in range(self.n_levels):
            parent, token, child = self._edges(lvl)
            last = lvl == self.n_levels - 1
            nxt: list = [None] * (0 if last else self.n_nodes[lvl + 1])
            for p, t, c in zip(parent.tolist(), token.tolist(), child.tolist()):
                g = t + offsets[lvl]
                out.setdefault(prefix_of[p], []).append(g)
                if not last:
                    nxt[c] = prefix_of[p] + (g,)
            prefix_of = nxt
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.n_items} items, sizes {self.sizes}, nodes {self.n_nodes}, "
                f"{self.nbytes / 2**20:.1f} MiB on {self.device})")


class SIDTrie(PrefixTrie):
    """Dense layout: ``valid[l]`` bool and ``child[l]`` int64 tensors of shape ``[n_l, sizes[l]]``.
    Refuses catalogs needing more than ``max_entries`` entries in all (use :func:`build_trie`)."""

    layout = "dense"

    def __init__(self, sids: np.ndarray, sizes: list[int], max_entries: int = MAX_ENTRIES):
        self._build(_prefixes(sids, sizes), max_entries)

    @classmethod
    def _from_prefixes(cls, pre: _Prefixes, max_entries: int = MAX_ENTRIES) -> "SIDTrie":
        self = cls.__new__(cls)
        self._build(pre, max_entries)
        return self

    def _build(self, pre: _Prefixes, max_entries: int) -> None:
        if pre.dense_entries > max_entries:
            per_level = " + ".join(f"{n} x {s}" for n, s in zip(pre.n_nodes, pre.sizes))
            raise ValueError(f"dense trie needs {per_level} = {pre.dense_entries} entries > max_entries={max_entries}: "
                             f"build it with build_trie(), which switches to the sparse (CSR) layout")
        self._init_common(pre)
        self.valid: list[torch.Tensor] = []
        self.child: list[torch.Tensor] = []
        for lvl, size in enumerate(self.sizes):
            first, parent, token = pre.edges(lvl)
            child = np.full(self.n_nodes[lvl] * size, -1, dtype=np.int64)
            child[parent * size + token] = pre.order if lvl == self.n_levels - 1 else np.arange(len(first))
            c = torch.from_numpy(child.reshape(self.n_nodes[lvl], size))
            self.child.append(c)
            self.valid.append(c >= 0)

    def to(self, device) -> "SIDTrie":
        device = torch.device(device)
        self.valid = [v.to(device) for v in self.valid]
        self.child = [c.to(device) for c in self.child]
        self.device = device
        return self

    def tensors(self) -> list[torch.Tensor]:
        return [*self.valid, *self.child]

    def next_mask(self, lvl: int, nodes) -> torch.Tensor:
        return self.valid[lvl][self._as_long(nodes)]

    def next_node(self, lvl: int, nodes, tokens) -> torch.Tensor:
        nodes, tokens = torch.broadcast_tensors(self._as_long(nodes), self._as_long(tokens))
        size = self.sizes[lvl]
        ok = (tokens >= 0) & (tokens < size)
        c = self.child[lvl][nodes, tokens.clamp(0, size - 1)]
        return torch.where(ok, c, torch.full_like(c, -1))

    def _edges(self, lvl: int):
        child = self.child[lvl].cpu().numpy()
        parent, token = np.nonzero(child >= 0)
        return parent, token, child[parent, token]


class _SparseValid:
    """``trie.valid[l]`` of a sparse trie: ``valid[l][nodes]`` → bool ``[*nodes.shape, sizes[l]]``."""

    def __init__(self, trie: "SparseSIDTrie", lvl: int):
        self.trie, self.lvl = trie, lvl

    @property
    def shape(self) -> tuple[int, int]:
        return (self.trie.n_nodes[self.lvl], self.trie.sizes[self.lvl])

    def __getitem__(self, nodes) -> torch.Tensor:
        return self.trie.next_mask(self.lvl, nodes)


class _SparseChild:
    """``trie.child[l]`` of a sparse trie: ``child[l][nodes, tokens]`` → int64 child ids (-1 if
    none); ``child[l][nodes]`` → the dense rows ``[*nodes.shape, sizes[l]]``."""

    def __init__(self, trie: "SparseSIDTrie", lvl: int):
        self.trie, self.lvl = trie, lvl

    @property
    def shape(self) -> tuple[int, int]:
        return (self.trie.n_nodes[self.lvl], self.trie.sizes[self.lvl])

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, tuple):
            if len(idx) != 2:
                raise IndexError(f"sparse trie child[{self.lvl}] takes [nodes] or [nodes, tokens], got {len(idx)} indices")
            return self.trie.next_node(self.lvl, idx[0], idx[1])
        return self.trie.child_rows(self.lvl, idx)


class SparseSIDTrie(PrefixTrie):
    """CSR layout (see the module docstring): memory O(edges), same node ids, masks and children
    as :class:`SIDTrie`. Keys, indptr and leaf items are int32 where the values fit."""

    layout = "sparse"

    def __init__(self, sids: np.ndarray, sizes: list[int]):
        self._build(_prefixes(sids, sizes))

    @classmethod
    def _from_prefixes(cls, pre: _Prefixes, max_entries: int = MAX_ENTRIES) -> "SparseSIDTrie":
        self = cls.__new__(cls)
        self._build(pre)
        return self

    def _build(self, pre: _Prefixes) -> None:
        self._init_common(pre)
        self.indptr: list[torch.Tensor] = []
        self.keys: list[torch.Tensor] = []
        self.max_degree: list[int] = []
        for lvl, size in enumerate(self.sizes):
            n = self.n_nodes[lvl]
            _, parent, token = pre.edges(lvl)
            counts = np.bincount(parent, minlength=n)
            indptr = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(counts, out=indptr[1:])
            self.indptr.append(_compact(indptr, len(parent)))
            self.keys.append(_compact(parent * size + token, n * size))
            self.max_degree.append(int(counts.max()))
        self.leaf_item = _compact(pre.order, self.n_items)
        self._views()

    def _views(self) -> None:
        self.valid = [_SparseValid(self, lvl) for lvl in range(self.n_levels)]
        self.child = [_SparseChild(self, lvl) for lvl in range(self.n_levels)]

    def to(self, device) -> "SparseSIDTrie":
        device = torch.device(device)
        self.indptr = [p.to(device) for p in self.indptr]
        self.keys = [k.to(device) for k in self.keys]
        self.leaf_item = self.leaf_item.to(device)
        self.device = device
        return self

    def tensors(self) -> list[torch.Tensor]:
        return [*self.indptr, *self.keys, self.leaf_item]

    def _edge_child(self, lvl: int, pos: torch.Tensor) -> torch.Tensor:
        """Child id of edge ``pos``: the edge index itself, at the last level the item."""
        return self.leaf_item[pos].long() if lvl == self.n_levels - 1 else pos

    def _row_edges(self, lvl: int, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For flat ``nodes`` [n]: edge positions and tokens ``[n, max_degree]``; slots past a
        node's last child have token ``sizes[lvl]`` (a spill column) and a clamped position."""
        size, ptr, keys = self.sizes[lvl], self.indptr[lvl], self.keys[lvl]
        start = ptr[nodes].long()
        count = ptr[nodes + 1].long() - start
        j = torch.arange(self.max_degree[lvl], device=self.device)
        ok = j < count[:, None]
        pos = (start[:, None] + j).clamp_(max=keys.shape[0] - 1)
        tok = keys[pos].long()
        tok -= (nodes * size)[:, None]
        return pos, tok.masked_fill_(~ok, size)

    def _flat_nodes(self, lvl: int, nodes) -> tuple[torch.Tensor, tuple[int, ...]]:
        nodes = self._as_long(nodes)
        flat = nodes.reshape(-1)
        if flat.numel() and self.device.type == "cpu":  # the dense layout raises too (no check on GPU: no sync)
            lo, hi = int(flat.min()), int(flat.max())
            if lo < 0 or hi >= self.n_nodes[lvl]:
                raise IndexError(f"trie level {lvl}: node {lo if lo < 0 else hi} out of range [0, {self.n_nodes[lvl]})")
        return flat, tuple(nodes.shape)

    def _per_node(self, lvl: int, nodes, build) -> torch.Tensor:
        """``build(lvl, flat_nodes)`` → rows ``[n, size]``, reshaped to ``[*nodes.shape, size]``.
        On CPU repeated nodes (every beam is at the root at step 0; shallow levels, where nodes
        have many children, have few nodes) are built once and the rows gathered; on GPU every
        row is built (no host sync)."""
        flat, shape = self._flat_nodes(lvl, nodes)
        size = self.sizes[lvl]
        if self.device.type == "cpu" and flat.numel() > 1:
            uniq, inv = torch.unique(flat, return_inverse=True)
            if uniq.numel() < flat.numel():
                return build(lvl, uniq)[inv].reshape(*shape, size)
        return build(lvl, flat).reshape(*shape, size)

    def _mask_rows(self, lvl: int, flat: torch.Tensor) -> torch.Tensor:
        size = self.sizes[lvl]
        _, tok = self._row_edges(lvl, flat)
        mask = torch.zeros(flat.shape[0], size + 1, dtype=torch.bool, device=self.device)
        mask.scatter_(1, tok, True)
        return mask[:, :size]

    def _child_rows(self, lvl: int, flat: torch.Tensor) -> torch.Tensor:
        size = self.sizes[lvl]
        pos, tok = self._row_edges(lvl, flat)
        rows = torch.full((flat.shape[0], size + 1), -1, dtype=torch.long, device=self.device)
        rows.scatter_(1, tok, self._edge_child(lvl, pos))
        return rows[:, :size]

    def next_mask(self, lvl: int, nodes) -> torch.Tensor:
        return self._per_node(lvl, nodes, self._mask_rows)

    def child_rows(self, lvl: int, nodes) -> torch.Tensor:
        """Dense child rows ``[*nodes.shape, sizes[lvl]]`` (-1 where no child), like ``SIDTrie.child[l][nodes]``."""
        return self._per_node(lvl, nodes, self._child_rows)

    def next_node(self, lvl: int, nodes, tokens) -> torch.Tensor:
        """Child of each (node, token): ``searchsorted`` of ``node * size + token`` in ``keys[lvl]``
        (a per-row binary search was slower on CPU at 5,120 beams: ~10 rounds of small ops)."""
        nodes, tokens = torch.broadcast_tensors(self._as_long(nodes), self._as_long(tokens))
        size, keys = self.sizes[lvl], self.keys[lvl]
        ok = (tokens >= 0) & (tokens < size) & (nodes >= 0) & (nodes < self.n_nodes[lvl])
        query = torch.where(ok, nodes * size + tokens, torch.full_like(nodes, -1)).reshape(-1)
        pos = torch.searchsorted(keys, query.to(keys.dtype)).clamp_(max=keys.shape[0] - 1)
        hit = ok.reshape(-1) & (keys[pos].long() == query)
        out = torch.where(hit, self._edge_child(lvl, pos), torch.full_like(pos, -1))
        return out.reshape(nodes.shape)

    def _edges(self, lvl: int):
        keys = self.keys[lvl].cpu().numpy().astype(np.int64)
        child = (self.leaf_item.cpu().numpy().astype(np.int64) if lvl == self.n_levels - 1
                 else np.arange(len(keys), dtype=np.int64))
        return keys // self.sizes[lvl], keys % self.sizes[lvl], child


def build_trie(sids: np.ndarray, sizes: list[int], max_entries: int = MAX_ENTRIES, layout: str = "auto") -> PrefixTrie:
    """The trie of ``sids``: dense (:class:`SIDTrie`) while ``sum_l n_l x sizes[l] <= max_entries``,
    sparse (:class:`SparseSIDTrie`) beyond. ``layout="dense"``/``"sparse"`` forces one."""
    if layout not in ("auto", "dense", "sparse"):
        raise ValueError(f"layout must be 'auto', 'dense' or 'sparse', got {layout!r}")
    pre = _prefixes(sids, sizes)
    if layout == "auto":
        layout = "dense" if pre.dense_entries <= max_entries else "sparse"
    cls = SIDTrie if layout == "dense" else SparseSIDTrie
    return cls._from_prefixes(pre, max_entries)
