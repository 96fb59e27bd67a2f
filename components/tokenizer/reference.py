"""Codebooks from released SID files (for comparison runs and tests), e.g. MiniOneRec's
``minionerec.index.json``: ``{"<item id>": ["<a_236>", "<b_231>", "<c_226>"], ...}``.

Tokens ``<x_k>`` are parsed as level ``ord(x) - ord('a')``, code ``k``. Items that share a full SID
(collisions) get a disambiguating extra level: the ``j``-th item (in dataset order) of a group
sharing a SID gets token ``j`` there, every other item token 0; the level size is the largest group.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from components.tokenizer.codebook import Codebook

_TOKEN = re.compile(r"^<([a-z])_(\d+)>$")


class ReferenceSIDError(ValueError):
    """A released SID file is malformed or does not cover the dataset's items."""


def codebook_from_index_json(path: str | Path, dataset: Any, method: str = "reference") -> Codebook:
    """Build a :class:`Codebook` for ``dataset`` (anything with ``item_ids``) from an index json."""
    p = Path(path)
    try:
        index = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ReferenceSIDError(f"{p}: cannot read SID index: {e}") from None
    item_ids = list(dataset.item_ids)
    missing = [i for i in item_ids if i not in index]
    if missing:
        raise ReferenceSIDError(f"{p}: no SID for {len(missing)} dataset items, e.g. {missing[:5]}")
    rows = []
    for iid in item_ids:
        toks = index[iid]
        row = []
        for lvl, tok in enumerate(toks):
            m = _TOKEN.match(tok)
            if not m or ord(m.group(1)) - ord("a") != lvl:
                raise ReferenceSIDError(f"{p}: item {iid}: token {tok!r} at level {lvl} is not <{chr(ord('a') + lvl)}_k>")
            row.append(int(m.group(2)))
        rows.append(row)
    if len({len(r) for r in rows}) != 1:
        raise ReferenceSIDError(f"{p}: SIDs of different lengths")
    sids = np.asarray(rows, dtype=np.int32)
    sizes = [int(sids[:, lvl].max()) + 1 for lvl in range(sids.shape[1])]
    # disambiguate collisions with an extra level
    _, inverse, counts = np.unique(sids, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    if counts.max() > 1:
        extra = np.zeros(len(item_ids), dtype=np.int32)
        seen: dict[int, int] = {}
        for i, g in enumerate(inverse):
            extra[i] = seen.get(int(g), 0)
            seen[int(g)] = extra[i] + 1
        sids = np.concatenate([sids, extra[:, None]], axis=1)
        sizes.append(int(counts.max()))
    return Codebook(
        sids=sids,
        sizes=sizes,
        item_ids=item_ids,
        method=method,
        stats={"source": str(p), "collisions_resolved": int((counts > 1).sum())},
        dataset_ref=None,
    )
