"""The prefix tree of valid SIDs as dense tensors, built once.

Level ``l`` has ``n_l`` prefix nodes (node = a distinct SID prefix of length ``l``; level 0 has
only the root, node 0). For each level:

- ``valid[l]``: bool ``[n_l, sizes[l]]``, token ``t`` may follow prefix node ``p``;
- ``child[l]``: int64 ``[n_l, sizes[l]]``, the node id of prefix ``p + (t,)`` at level ``l+1``
  (-1 if invalid); at the last level the *item index* instead.

A decoding step gathers the rows of the current nodes (one gather), so masking costs
``O(beams x sizes[l])`` with no per-beam Python work. Memory is ``sum_l n_l * sizes[l]`` entries
(Industrial with 3 x 256 codes: ~1M); ``max_entries`` guards against catalogs where a CSR layout
would be needed.
"""

from __future__ import annotations

import numpy as np
import torch


class SIDTrie:
    def __init__(self, sids: np.ndarray, sizes: list[int], max_entries: int = 1 << 28):
        sids = np.asarray(sids, dtype=np.int64)
        if sids.ndim != 2 or sids.shape[0] == 0:
            raise ValueError(f"trie needs a non-empty [n_items, L] SID matrix, got {sids.shape}")
        if np.unique(sids, axis=0).shape[0] != sids.shape[0]:
            raise ValueError("SIDs are not unique: resolve collisions before building the trie")
        self.sizes = [int(s) for s in sizes]
        self.n_levels = sids.shape[1]
        self.n_items = sids.shape[0]
        node = np.zeros(self.n_items, dtype=np.int64)  # prefix node of every item at the current level
        n_nodes = 1
        self.valid: list[torch.Tensor] = []
        self.child: list[torch.Tensor] = []
        self.n_nodes: list[int] = []
        for lvl, size in enumerate(self.sizes):
            if n_nodes * size > max_entries:
                raise ValueError(f"trie level {lvl}: {n_nodes} x {size} dense entries exceed max_entries={max_entries}")
            key = node * size + sids[:, lvl]
            child = np.full(n_nodes * size, -1, dtype=np.int64)
            if lvl == self.n_levels - 1:
                child[key] = np.arange(self.n_items)
                nxt, n_next = None, self.n_items
            else:
                uniq, inv = np.unique(key, return_inverse=True)
                child[uniq] = np.arange(len(uniq))
                nxt, n_next = inv.reshape(-1), len(uniq)
            self.n_nodes.append(n_nodes)
            c = torch.from_numpy(child.reshape(n_nodes, size))
            self.child.append(c)
            self.valid.append(c >= 0)
            if nxt is not None:
                node, n_nodes = nxt, n_next
        self.device = torch.device("cpu")

    def to(self, device) -> "SIDTrie":
        device = torch.device(device)
        self.valid = [v.to(device) for v in self.valid]
        self.child = [c.to(device) for c in self.child]
        self.device = device
        return self

    def items_of(self, local_sids: torch.Tensor) -> torch.Tensor:
        """Level-local SIDs [n, L] → item index (-1 if not an item)."""
        node = torch.zeros(local_sids.shape[0], dtype=torch.long, device=local_sids.device)
        ok = torch.ones_like(node, dtype=torch.bool)
        for lvl in range(self.n_levels):
            tok = local_sids[:, lvl]
            ok &= (tok >= 0) & (tok < self.sizes[lvl])
            nxt = self.child[lvl][node.clamp(min=0), tok.clamp(0, self.sizes[lvl] - 1)]
            ok &= nxt >= 0
            node = torch.where(ok, nxt, torch.zeros_like(nxt))
        return torch.where(ok, node, torch.full_like(node, -1))

    def allowed_tokens_dict(self, offsets: list[int]) -> dict[tuple[int, ...], list[int]]:
        """Plain dict trie ``global-token prefix -> allowed next global tokens`` (the baseline
        HF ``prefix_allowed_tokens_fn`` uses in the benchmark and tests)."""
        out: dict[tuple[int, ...], list[int]] = {}
        frontier = {(): 0}
        for lvl in range(self.n_levels):
            nxt = {}
            child = self.child[lvl].cpu().numpy()
            for prefix, node in frontier.items():
                toks = np.nonzero(child[node] >= 0)[0]
                out[prefix] = [int(t) + offsets[lvl] for t in toks]
                for t in toks:
                    nxt[prefix + (int(t) + offsets[lvl],)] = int(child[node, t])
            frontier = nxt
        return out
