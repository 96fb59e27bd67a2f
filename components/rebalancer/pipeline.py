"""The ``rebalance`` stage as one function: load the input codebook and dataset artifacts, split,
write ``codebook/<name>`` (parents: input codebook, dataset[, embeddings]) and return metrics.

Item features for the residuals (``rebalance.embeddings``): an ``item-embeddings`` ref is loaded and
checked against the dataset version; ``auto`` (the default) takes ``item-embeddings/<dataset>@latest``
(what the ``embed`` stage writes) when it exists and was embedded from this dataset version, and
otherwise falls back, with a warning when it exists but is stale, to ``null``: the codebook's
codeword reconstructions, else TF-IDF+SVD of the item text (:func:`~components.rebalancer.residuals.item_features`).
The choice is logged and recorded (metrics ``feature_source`` and ``embeddings``, the embeddings
artifact among the output's parents).

With ``enabled: false`` it is a no-op that passes the input through: the input codebook is
re-saved unchanged under the output name (parent = the input codebook, params
``rebalance.enabled: false``, ``stats.json`` ``rebalanced: false``), so the downstream stage always reads ``codebook/<dataset>-crab@latest``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from components.rebalancer.crab import RebalanceError, RebalanceResult, detect_semantic_levels, rebalance_codebook
from components.rebalancer.popularity import level_stats, token_popularity
from components.rebalancer.params import RebalanceParams
from components.registry import Artifact, ArtifactIncompatible, ArtifactNotFound, Registry
from components.tokenizer.codebook import Codebook

log = logging.getLogger(__name__)

AUTO = "auto"


@dataclass
class StageOutput:
    artifact: Artifact
    metrics: dict[str, Any]
    result: RebalanceResult | None
    popularity_before: list[np.ndarray]
    popularity_after: list[np.ndarray]
    plot_levels: list[int]


def codebook_ref(value: str) -> str:
    """A bare name means ``codebook/<name>@latest``."""
    return value if "/" in value else f"codebook/{value}@latest"


def resolve_embeddings(registry: Registry, value: str | None, dataset: str, dataset_ref: str, n_items: int) -> tuple[np.ndarray | None, Artifact | None]:
    """``(embeddings float32 [n_items, d], their artifact)`` for ``rebalance.embeddings`` (module
    docstring), or ``(None, None)`` for the codewords / text fallback. An explicit ref must exist and
    come from ``dataset_ref``; ``auto`` falls back instead."""
    from components.tokenizer.encoders import load_embeddings  # the item-embeddings format's owner

    if not value:
        return None, None
    if value != AUTO:
        art = registry.load(value)
        return load_embeddings(art, dataset_ref=dataset_ref, n_items=n_items), art
    ref = f"item-embeddings/{dataset}@latest"
    try:
        art = registry.load(ref)
    except ArtifactNotFound:
        log.info("rebalance.embeddings=auto: no %s, features from the codebook's codewords or the item text", ref)
        return None, None
    try:
        emb = load_embeddings(art, dataset_ref=dataset_ref, n_items=n_items)
    except ArtifactIncompatible as e:
        warnings.warn(f"rebalance.embeddings=auto: not using {art.ref} ({e}); features from the codebook's codewords "
                      "or the item text", stacklevel=2)
        return None, None
    log.info("rebalance.embeddings=auto: residuals from %s", art.ref)
    return emb, art


def run_rebalance(registry: Registry, params: RebalanceParams, dataset: str, seed: int = 2024, progress: bool = False,
                  dataset_ref: str | None = None) -> StageOutput:
    """``dataset`` names the output (``<dataset>-crab``); ``dataset_ref`` (default
    ``dataset/<dataset>@latest``) is the dataset whose training counts define popularity."""
    from components.data.dataset import Dataset

    cb_art = registry.load(codebook_ref(params.codebook))
    cb = Codebook.from_artifact(cb_art)  # raises ArtifactCorrupted when the stored tree disagrees with the SIDs
    ds_art = registry.load(dataset_ref or f"dataset/{dataset}@latest")
    ds = Dataset.from_artifact(ds_art)
    cb.check_dataset(ds_art.ref, ds.n_items)
    if list(cb.item_ids) != list(ds.item_ids):
        raise RebalanceError(f"{cb_art.ref} lists items in another order than {ds_art.ref}")
    name = params.name or f"{dataset}-crab"
    pdict = params.model_dump(mode="json")
    if not params.enabled:
        cb.stats = {**(cb.stats or {}), "rebalanced": False}
        art = cb.save(registry, name, parents=[cb_art, ds_art], params={"rebalance": pdict})
        counts = ds.train_item_counts()
        pop = [token_popularity(cb.sids, counts, lvl, cb.sizes[lvl]) for lvl in range(cb.n_levels)]
        n_sem = params.semantic_levels or detect_semantic_levels(cb)
        metrics = {"enabled": False, "input": cb_art.ref, "output": art.ref,
                   "levels": {f"level_{s['level']}": s for s in level_stats(cb.sids, counts, cb.sizes)}}
        return StageOutput(art, metrics, None, pop, pop, list(range(n_sem)))
    parents: list[Any] = [cb_art, ds_art]
    emb, e_art = resolve_embeddings(registry, params.embeddings, dataset, ds_art.ref, ds.n_items)
    if e_art is not None:
        parents.append(e_art)
    result = rebalance_codebook(
        cb,
        ds.train_item_counts(),
        embeddings=emb,
        item_text=ds.item_text,
        split_ratio=params.split_ratio,
        max_splits=params.max_splits,
        levels=params.levels,
        lam=params.lam,
        n_init=params.n_init,
        semantic_levels=params.semantic_levels,
        seed=seed,
        exact_max=params.exact_max,
        text_dim=params.text_dim,
        progress=progress,
    )
    result.codebook.dataset_ref = ds_art.ref
    art = result.codebook.save(registry, name, parents=parents, params={"rebalance": pdict, "seed": seed})
    log.info("rebalance: features %s%s", result.feature_source, f" ({e_art.ref})" if e_art is not None else "")
    metrics = stage_metrics(result, cb_art.ref, art.ref, e_art.ref if e_art is not None else None)
    return StageOutput(art, metrics, result, result.popularity_before, result.popularity_after, list(range(result.semantic_levels)))


def stage_metrics(result: RebalanceResult, input_ref: str, output_ref: str, embeddings_ref: str | None = None) -> dict[str, Any]:
    levels = {}
    for row in result.summary()["levels"]:
        b, a = row["before"], row["after"]
        levels[f"level_{row['level']}"] = {
            "split": row["split"],
            "n_split_tokens": row["n_split_tokens"],
            "vocab_before": b["vocab"],
            "vocab_after": a["vocab"],
            "max_before": b["max"],
            "max_after": a["max"],
            "top_share_before": round(b["top_share"], 6),
            "top_share_after": round(a["top_share"], 6),
            "top10pct_share_before": round(b["top10pct_share"], 6),
            "top10pct_share_after": round(a["top10pct_share"], 6),
            "gini_before": round(b["gini"], 6),
            "gini_after": round(a["gini"], 6),
        }
    return {
        "enabled": True,
        "input": input_ref,
        "output": output_ref,
        "feature_source": result.feature_source,
        "embeddings": embeddings_ref,
        "collisions": result.codebook.n_collisions(),
        "levels": levels,
    }
