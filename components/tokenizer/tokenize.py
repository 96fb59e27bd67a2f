"""Embeddings → codebook (the ``tokenize`` stage's core) and new items → SIDs (online).

:func:`build_codebook` runs the chosen quantizer (``rqkmeans`` | ``balanced`` | ``rqvae``),
resolves collisions, computes health statistics and returns a :class:`Codebook`.
:func:`assign_new_items` places unseen items (their text embeddings, same encoder) into an
existing codebook without retraining; see its docstring for the rule.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from components.registry import Artifact, ArtifactIncompatible, Registry
from components.tokenizer.codebook import Codebook
from components.tokenizer.collisions import resolve_collisions, widen_search
from components.tokenizer.encoders import TokenizerError, check_embeddings
from components.tokenizer.rq_kmeans import faiss_threads, mean_sq_norm, nearest, quant_errors, quantize, residual_at
from components.tokenizer.stats import codebook_stats

log = logging.getLogger(__name__)


def build_codebook(
    emb: np.ndarray,
    item_ids: list[str],
    p: Any,
    item_counts: np.ndarray | None = None,
    seed: int = 0,
    dataset_ref: str | None = None,
    progress: bool = False,
    cf_view: Any = None,
) -> Codebook:
    """Quantize item embeddings into unique SIDs with ``tokenizer`` params ``p``.

    ``stats`` holds :func:`~components.tokenizer.stats.codebook_stats` plus ``method``,
    ``collisions_raw`` (items sharing a full quantized SID before handling),
    ``collisions_resolved`` and ``collision_strategy``. ``cf_view`` (a
    :class:`~components.tokenizer.flexcode.CFView`) is required by ``method: flexcode``.
    """
    if p.method == "flexcode":
        from components.tokenizer.flexcode import build_flexcode_codebook

        return build_flexcode_codebook(emb, item_ids, p, item_counts, cf_view, seed, dataset_ref, progress)
    faiss_threads()
    x = check_embeddings(emb, n_items=len(item_ids))
    if item_counts is not None and len(item_counts) != len(item_ids):
        raise TokenizerError(f"{len(item_counts)} item counts for {len(item_ids)} items")
    sizes = [p.codebook_size] * p.levels
    enc_w: dict[str, np.ndarray] = {}
    enc_cfg: dict[str, Any] = {}
    if p.method == "rqkmeans":
        from components.tokenizer.rq_kmeans import rq_kmeans

        res, space = rq_kmeans(x, sizes, p.niter, seed, p.max_points_per_centroid, progress), x
    elif p.method == "balanced":
        from components.tokenizer.balanced import balanced_rq_kmeans

        res, space = balanced_rq_kmeans(x, sizes, p.niter, p.balanced_iters, seed, p.max_points_per_centroid, progress), x
    elif p.method == "rqvae":
        from components.tokenizer.rq_vae import train_rqvae

        res, space, enc_w, enc_cfg = train_rqvae(x, sizes, p.rqvae, seed, progress)
    else:
        raise TokenizerError(f"unknown tokenizer method {p.method!r}")
    raw = res.codes
    n_raw = int(len(raw) - len(np.unique(raw, axis=0)))
    cap = -(-len(x) // sizes[-1]) if p.method == "balanced" else None
    sids, out_sizes, n_resolved = resolve_collisions(raw, sizes, p.collisions, space, res.codewords, cap)
    qerr = quant_errors(space, sids[:, : len(sizes)], res.codewords)
    stats = codebook_stats(sids, out_sizes, item_counts, x, qerr, mean_sq_norm(space - space.mean(0, keepdims=True)))
    stats.update({"method": p.method, "collisions_raw": n_raw, "collisions_resolved": n_resolved, "collision_strategy": p.collisions})
    log.info("%s: %d raw collisions, %d resolved by %s", p.method, n_raw, n_resolved, p.collisions)
    return Codebook(
        sids=sids,
        sizes=out_sizes,
        item_ids=list(item_ids),
        method=p.method,
        codewords={lvl: cw for lvl, cw in enumerate(res.codewords)},
        stats=stats,
        dataset_ref=dataset_ref,
        encoder_weights=enc_w,
        encoder_config=enc_cfg,
    )


def assign_new_items(codebook: Codebook, embeddings: np.ndarray) -> np.ndarray:
    """SIDs ``[m, n_levels]`` for new items, unique against the codebook's items and each other.

    The new item's embedding goes through the stored encoder (RQ-VAE) if any, is residual-
    quantized greedily with the fixed codewords for all but the last quantized level, and then
    takes the nearest last-level code ``k`` (by ``||r_{L-1} - C_{L-1}[k]||²``) whose SID is free;
    with a disambiguation level, the SID ``(prefix, k, t)`` uses the smallest free ``t`` below
    that level's size. Without one, a full prefix widens the search one level up (as in
    ``collisions=reassign``). Raises :class:`TokenizerError` if an item has no free SID left.
    The codebook itself is not modified. A FlexCode codebook (also after CRAB) places new items
    with its stored semantic encoder
    (:func:`~components.tokenizer.flexcode.assign_new_flexcode_items`);
    :func:`new_item_support` says beforehand why a codebook cannot place new items.
    """
    why = new_item_support(codebook)
    if why:
        raise TokenizerError(why)
    if _is_flexcode(codebook):
        from components.tokenizer.flexcode import assign_new_flexcode_items

        return assign_new_flexcode_items(codebook, embeddings)
    levels = codebook.quantized_levels
    x = check_embeddings(embeddings, dim=codebook.input_dim, what="new item embeddings")
    if codebook.encoder_weights:
        from components.tokenizer.rq_vae import encode_latents

        x = encode_latents(x, codebook.encoder_weights, codebook.encoder_config)
    cw = [codebook.codewords[lvl] for lvl in levels]
    Lq = len(cw)
    codes, _ = quantize(x, cw[:-1]) if Lq > 1 else (np.zeros((len(x), 0), np.int32), None)
    r = residual_at(x, codes, cw[:-1], Lq - 1) if Lq > 1 else x
    _, ranked = nearest(r, cw[-1], cw[-1].shape[0])
    extra = codebook.n_levels > Lq
    taken = {tuple(row) for row in codebook.sids.tolist()}
    out = np.zeros((len(x), codebook.n_levels), dtype=np.int32)
    for i in range(len(x)):
        prefix = tuple(int(t) for t in codes[i])
        for k in ranked[i]:
            cand = prefix + (int(k),)
            if not extra:
                if cand not in taken:
                    full = cand
                    break
                continue
            free = next((t for t in range(codebook.sizes[-1]) if cand + (t,) not in taken), None)
            if free is not None:
                full = cand + (free,)
                break
        else:
            wide = widen_search(x[i], np.r_[codes[i], 0], cw, taken) if not extra and Lq >= 2 else None
            if wide is None:
                raise TokenizerError(f"new item {i}: every SID under prefix {prefix} is taken")
            full = wide
        taken.add(full)
        out[i] = full
    return out


def _is_flexcode(codebook: Codebook) -> bool:
    return codebook.method.split("+")[0] == "flexcode" or "flexcode" in (codebook.stats or {})


def new_item_support(codebook: Codebook) -> str | None:
    """Why :func:`assign_new_items` cannot place new items in ``codebook`` (None: it can). Decided
    from the codebook alone, so a caller can refuse before loading a text encoder."""
    if _is_flexcode(codebook):
        if "token_split" not in (codebook.stats.get("flexcode") or {}):
            return f"codebook {codebook.method!r} has lost its FlexCode token split (stats['flexcode']): new items cannot be placed in it"
        from components.tokenizer.flexcode import new_item_support as flexcode_support

        return flexcode_support(codebook)
    levels = codebook.quantized_levels
    if not levels or levels != list(range(len(levels))):
        return f"codebook {codebook.method!r} has no codewords for levels 0..{codebook.n_levels - 1}; cannot place new items"
    return None


def load_codebook(registry: Registry, ref: str, dataset_art: Artifact | None = None, item_ids: list[str] | None = None) -> tuple[Codebook, Artifact]:
    """Load a codebook artifact; with a dataset, refuse one built from another dataset (version)."""
    art = registry.load(ref)
    cb = Codebook.from_artifact(art)
    if dataset_art is not None:
        if dataset_art.ref not in art.manifest.parents and cb.dataset_ref != dataset_art.ref:
            raise ArtifactIncompatible(f"{art.ref} was built from {cb.dataset_ref or art.manifest.parents}, not {dataset_art.ref}: run `genrec tokenize` again")
        cb.check_dataset(dataset_art.ref, int(dataset_art.meta.get("n_items", cb.n_items)))
    if item_ids is not None and list(item_ids) != cb.item_ids:
        raise ArtifactIncompatible(f"{art.ref}: its item ids differ from the dataset's")
    return cb, art
