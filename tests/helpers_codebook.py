"""Test/bench helpers: codebooks built without the tokenizer component.

- :func:`reference_codebook`: the SIDs released with MiniOneRec for Industrial
  (``reference/minionerec.index.json``: ``{"<item id>": ["<a_236>", "<b_231>", "<c_226>"]}``,
  3 levels x 256), as a :class:`Codebook` with a 4th level that disambiguates the 16 colliding
  items (rank among the items sharing the 3 tokens, in dataset item order; 0 for everyone else).
- :func:`synthetic_codebook`: a random 3-level residual codebook (shared codes across parents),
  with Zipf item popularity and item embeddings = sum of codewords + noise.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from components.tokenizer.codebook import Codebook
from components.tokenizer.reference import codebook_from_index_json


def reference_codebook(index_path: str | Path, item_ids: list[str], dataset_ref: str | None = None) -> Codebook:
    """The released SIDs via :func:`components.tokenizer.reference.codebook_from_index_json`, with the
    three semantic levels sized 256 (the released codebook's size, though level 0 uses fewer codes)."""
    cb = codebook_from_index_json(index_path, SimpleNamespace(item_ids=list(item_ids)), method="minionerec-reference")
    sizes = [max(256, s) for s in cb.sizes[:3]] + list(cb.sizes[3:])
    return Codebook(sids=cb.sids, sizes=sizes, item_ids=list(item_ids), method=cb.method, dataset_ref=dataset_ref)


def synthetic_codebook(n_items: int, K: int = 256, levels: int = 3, d: int = 32, seed: int = 0,
                       zipf: float = 1.1) -> tuple[Codebook, np.ndarray, np.ndarray]:
    """``(codebook, item_counts, embeddings)``: random residual codes with skewed token usage."""
    rng = np.random.default_rng(seed)
    cws = [rng.normal(scale=1.0 / (lvl + 1), size=(K, d)).astype(np.float32) for lvl in range(levels)]
    # skewed token usage per level (so some tokens are over-popular)
    probs = [(1.0 / np.arange(1, K + 1) ** 0.8) for _ in range(levels)]
    sids = np.stack([rng.choice(K, size=n_items, p=p / p.sum()) for p in probs], axis=1).astype(np.int64)
    # make SIDs unique: re-draw every level of the duplicates (uniformly) until none remain
    for _ in range(200):
        _, first, inv = np.unique(sids, axis=0, return_index=True, return_inverse=True)
        dup = np.ones(n_items, dtype=bool)
        dup[first] = False
        if not dup.any():
            break
        sids[dup] = rng.integers(0, K, size=(int(dup.sum()), levels))
    else:
        raise RuntimeError("could not make synthetic SIDs unique")
    emb = sum(cws[lvl][sids[:, lvl]] for lvl in range(levels)) + rng.normal(scale=0.05, size=(n_items, d)).astype(np.float32)
    counts = np.minimum(rng.zipf(zipf + 0.5, size=n_items), 10_000).astype(np.int64)
    cb = Codebook(sids=sids.astype(np.int32), sizes=[K] * levels, item_ids=[str(i) for i in range(n_items)], method="synthetic",
                  codewords={lvl: cws[lvl] for lvl in range(levels)})
    return cb, counts, emb.astype(np.float32)
