"""The ``rankings`` artifact: what every recommender (baselines now, the generator later) hands
to evaluation. ``rankings/<dataset>-<method>`` holds, per split it covers (``valid``, ``test``),
``<split>.npz`` with ``topk`` int32 ``[n, K]`` (item indices of the dataset, best first,
``-1`` = invalid output) and optionally ``scores`` float32 ``[n, K]``. Row ``u`` answers sample
``u`` of the dataset's split, in the dataset's order. ``meta``: ``dataset`` (ref), ``method``,
``k``, ``n_items``. Ranking is over ALL items; history items are NOT excluded.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from components.evaluation.metrics import RankingError, check_topk
from components.registry import Artifact, ArtifactIncompatible, Registry

KIND = "rankings"


def rankings_name(dataset: str, method: str) -> str:
    return f"{dataset}-{method}"


def save_rankings(
    registry: Registry,
    dataset: str,
    method: str,
    topk: dict[str, np.ndarray],
    n_items: int,
    parents: list[str],
    params: dict[str, Any] | None = None,
    scores: dict[str, np.ndarray] | None = None,
    meta: dict[str, Any] | None = None,
) -> Artifact:
    """Validate (ids in the catalog or -1, no duplicates) and write ``rankings/<dataset>-<method>``."""
    if not topk:
        raise RankingError("no split to write")
    ks = set()
    with registry.create(KIND, rankings_name(dataset, method), parents=parents, params=params or {}) as w:
        for split, mat in topk.items():
            mat = check_topk(mat, n_items=n_items).astype(np.int32)
            ks.add(mat.shape[1])
            arrays = {"topk": mat}
            if scores is not None and split in scores:
                s = np.asarray(scores[split], dtype=np.float32)
                if s.shape != mat.shape:
                    raise RankingError(f"{split}: scores {s.shape} do not match topk {mat.shape}")
                arrays["scores"] = s
            w.write_npz(f"{split}.npz", **arrays)
        w.meta.update({"dataset": parents[0] if parents else dataset, "method": method, "k": min(ks), "n_items": n_items, "splits": sorted(topk), **(meta or {})})
    return w.artifact


def load_rankings(art: Artifact, split: str, n_samples: int | None = None, n_items: int | None = None) -> np.ndarray:
    """``topk`` of one split, checked against the dataset's sample and item counts."""
    if art.kind != KIND:
        raise ArtifactIncompatible(f"{art.ref} is a {art.kind!r} artifact, not rankings")
    if not art.has_file(f"{split}.npz"):
        raise ArtifactIncompatible(f"{art.ref} has no {split!r} rankings (it has {art.meta.get('splits')})")
    topk = art.load_numpy(f"{split}.npz")["topk"]
    if n_samples is not None and topk.shape[0] != n_samples:
        raise ArtifactIncompatible(f"{art.ref}: {topk.shape[0]} {split} rankings for {n_samples} {split} samples of the dataset")
    if n_items is not None and art.meta.get("n_items") not in (None, n_items):
        raise ArtifactIncompatible(f"{art.ref} ranks a catalog of {art.meta.get('n_items')} items, the dataset has {n_items}")
    return topk


def load_split_rankings(art: Artifact, split: str, targets: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """``(topk, targets)`` of one split, from either rankings layout:

    - this module's ``<split>.npz`` (``topk`` for every sample of the split), or
    - the generator's ``rankings.npz`` (``<split>_topk``, ``<split>_targets``), which may cover only
      the first ``n`` samples (``generator.decode.max_samples``): then the first ``n`` dataset
      targets are returned, after checking they equal the stored ones.
    """
    if art.kind != KIND:
        raise ArtifactIncompatible(f"{art.ref} is a {art.kind!r} artifact, not rankings")
    targets = np.asarray(targets)
    if art.has_file(f"{split}.npz"):
        return load_rankings(art, split, n_samples=len(targets), n_items=n_items), targets
    if art.has_file("rankings.npz"):
        data = art.load_numpy("rankings.npz")
        if f"{split}_topk" not in data:
            raise ArtifactIncompatible(f"{art.ref} has no {split!r} rankings (keys {sorted(data)})")
        topk = data[f"{split}_topk"]
        n = topk.shape[0]
        if n > len(targets):
            raise ArtifactIncompatible(f"{art.ref}: {n} {split} rankings for {len(targets)} {split} samples of the dataset")
        stored = data.get(f"{split}_targets")
        if stored is not None and not np.array_equal(np.asarray(stored), targets[:n]):
            raise ArtifactIncompatible(f"{art.ref}: its {split} targets differ from the dataset's: ranked for another split or dataset")
        return topk, targets[:n]
    raise ArtifactIncompatible(f"{art.ref} holds neither {split}.npz nor rankings.npz")
