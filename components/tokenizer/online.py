"""New items into an existing codebook, as a whole new ``codebook`` artifact (no retraining).

:func:`embed_records` embeds item records with the encoder the codebook was built with (refusing
a different one, and ``tfidf``, which is fitted per catalog); :func:`extend_codebook` appends the
items with the SIDs :func:`~components.tokenizer.tokenize.assign_new_items` gave them. Level sizes,
codewords and every existing item's SID stay as they were, so a generator trained on the old
codebook can decode the new items at once (only its trie changes).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from components.tokenizer.codebook import Codebook
from components.tokenizer.encoders import TextEncoder, TokenizerError, item_texts, make_encoder
from components.tokenizer.tokenize import assign_new_items


EMBEDDING_CONFIG = "embedding_config"  # codebook stats key: how the embeddings were made (text template + encoder)
TEMPLATE = "field: value; v1"  # the item_texts template version (bump when item_texts changes)


def embedding_config(p: Any, encoder_name: str | None = None) -> dict[str, Any]:
    """Everything that decides an item's embedding besides its text: the encoder, the text template
    (fields in order, truncation) and the post-processing. Two embeddings are comparable only if
    these are equal."""
    cfg: dict[str, Any] = {
        "encoder": encoder_name or (p.encoder if p.encoder in ("minilm",) else f"{p.encoder}:{p.model_path}"),
        "template": TEMPLATE,
        "text_fields": list(p.text_fields),
        "max_field_chars": {str(k): int(v) for k, v in sorted(dict(p.max_field_chars or {}).items())},
        "normalize": bool(p.normalize),
    }
    if p.encoder == "hf-mean":
        cfg["max_length"] = int(p.max_length)
    return cfg


def check_embedding_config(cb: Codebook, p: Any, encoder_name: str | None, where: str = "the codebook") -> None:
    """Refuse to embed new items for ``cb`` unless they would be embedded the way its catalog was:
    same encoder (name) and, when the codebook records it, the same text template, fields,
    truncation and normalisation. Raises :class:`TokenizerError` naming every difference."""
    built_with = cb.stats.get("encoder")
    if built_with and encoder_name and built_with != encoder_name:
        raise TokenizerError(f"{where} was built on {built_with} embeddings; the encoder gives {encoder_name}")
    recorded = cb.stats.get(EMBEDDING_CONFIG)
    if not recorded:  # made before the config was recorded: the encoder name is all there is to check
        return
    now = embedding_config(p, encoder_name or recorded.get("encoder"))
    diff = [f"{k}: built with {recorded.get(k)!r}, now {now.get(k)!r}" for k in sorted(set(recorded) | set(now)) if recorded.get(k) != now.get(k)]
    if diff:
        raise TokenizerError(f"new items would be embedded differently from {where}'s catalog (" + "; ".join(diff)
                             + "): set the tokenizer params the codebook was built with")


def embed_records(cb: Codebook, records: dict[str, dict[str, Any]], p: Any, seed: int = 0, encoder: TextEncoder | None = None) -> np.ndarray:
    if not records:
        raise TokenizerError("no items given")
    if not cb.quantized_levels:
        raise TokenizerError(f"codebook {cb.method!r} has no codewords: new items cannot be placed in it")
    if p.encoder == "tfidf" and encoder is None:
        raise TokenizerError("the tfidf encoder is fitted per catalog and cannot embed new items; use minilm or a model_path encoder")
    enc = encoder or make_encoder(p, seed=seed, progress=False)
    check_embedding_config(cb, p, getattr(enc, "name", None))
    ids = list(records)
    return enc.encode(item_texts(ids, list(records.values()), p.text_fields, p.max_field_chars))


TEXT_HASHES = "online_text_sha256"  # stats key: item id → sha256 of the text it was added with


def text_hash(fields: dict[str, Any]) -> str:
    """Fingerprint of an item's text fields (order-independent), to tell a retry from a conflict."""
    return hashlib.sha256(json.dumps({str(k): str(v) for k, v in fields.items()}, sort_keys=True).encode()).hexdigest()


def extend_codebook(cb: Codebook, new_ids: list[str], embeddings: np.ndarray,
                    text_hashes: dict[str, str] | None = None) -> tuple[Codebook, np.ndarray]:
    """A new codebook with ``new_ids`` appended; returns it and the new items' SIDs.

    ``text_hashes`` (item id → :func:`text_hash`) are kept in the stats, so a later AddItems can
    tell a retry of the same item (same text) from a different item under a taken id."""
    dup = sorted(set(new_ids) & set(cb.item_ids))
    if dup:
        raise TokenizerError(f"items already in the codebook: {dup[:10]}")
    if len(set(new_ids)) != len(new_ids):
        raise TokenizerError("duplicate item ids among the new items")
    sids = assign_new_items(cb, embeddings)
    stats = dict(cb.stats)
    stats["online_items_added"] = int(stats.get("online_items_added", 0)) + len(new_ids)
    if text_hashes:
        stats[TEXT_HASHES] = {**stats.get(TEXT_HASHES, {}), **{i: text_hashes[i] for i in new_ids if i in text_hashes}}
    new = Codebook(
        sids=np.concatenate([cb.sids, sids]).astype(np.int32),
        sizes=list(cb.sizes),
        item_ids=[*cb.item_ids, *new_ids],
        method=cb.method,
        codewords=dict(cb.codewords),
        token_origin=cb.token_origin,
        stats=stats,
        dataset_ref=cb.dataset_ref,
        encoder_weights=cb.encoder_weights,
        encoder_config=cb.encoder_config,
    )
    if "flexcode" in stats and "cf_tokens" in stats["flexcode"]:  # the per-item allocation covers the new items too
        from components.tokenizer.flexcode import cf_tokens_of

        new.stats = {**stats, "flexcode": {**stats["flexcode"], "cf_tokens": cf_tokens_of(new).tolist()}}
    return new, sids
