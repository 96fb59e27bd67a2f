"""Generator checkpoints as registry artifacts ``generator/<name>``.

Files: ``model.safetensors`` (the full state dict; tied weights stored as copies) and
``config.json`` (``GenerativeRecommender.config_dict()`` + the codebook ref and fingerprint),
``popularity.npy`` (training target counts per item: the empty-history fallback).
Parents: the codebook and the dataset. Loading refuses a codebook whose SIDs differ from the
one the model was trained on (``ArtifactIncompatible``). No pickle.
"""

from __future__ import annotations

from typing import Any

from components.generator.model import GenerativeRecommender, state_dict_for_save
from components.generator.vocab import SIDVocab
from components.registry import Artifact, ArtifactCorrupted, ArtifactIncompatible, Registry
from components.tokenizer.codebook import Codebook


def save_checkpoint(registry: Registry, name: str, model: GenerativeRecommender, codebook_ref: str, dataset_ref: str,
                    params: dict[str, Any], meta: dict[str, Any] | None = None, state_dict: dict | None = None,
                    popularity=None) -> Artifact:
    cfg = model.config_dict()
    cfg["codebook"] = codebook_ref
    cfg["dataset"] = dataset_ref
    with registry.create("generator", name, parents=[codebook_ref, dataset_ref], params=params) as w:
        w.write_safetensors("model.safetensors", state_dict or state_dict_for_save(model), metadata={"format": "pt"})
        w.write_json("config.json", cfg)
        if popularity is not None:
            w.write_numpy("popularity.npy", popularity)
        w.meta.update({"backbone": cfg["backbone"]["kind"], "heads": [h["type"] for h in cfg["heads"]], "codebook": codebook_ref,
                       "dataset": dataset_ref, "fingerprint": cfg["vocab"]["fingerprint"], **(meta or {})})
    return w.artifact


def load_checkpoint(registry: Registry, ref: str, codebook: Codebook | None = None, device: str = "cpu") -> tuple[GenerativeRecommender, Codebook, Artifact]:
    """Rebuild the model (eval mode) and its codebook. With ``codebook`` given, it must be the
    checkpoint's (same SIDs), else :class:`ArtifactIncompatible`."""
    art = registry.load(ref)
    if art.kind != "generator":
        raise ArtifactCorrupted(f"{art.ref} is a {art.kind!r} artifact, not a generator checkpoint")
    cfg = art.load_json("config.json")
    if codebook is None:
        codebook = Codebook.from_artifact(registry.load(cfg["codebook"]))
    vocab = SIDVocab.from_codebook(codebook)
    want = cfg["vocab"]["fingerprint"]
    if vocab.fingerprint() != want or vocab.sizes != list(cfg["vocab"]["sizes"]):
        raise ArtifactIncompatible(f"{art.ref} was trained on codebook {cfg['codebook']} (SID fingerprint {want}, sizes "
                                   f"{cfg['vocab']['sizes']}); the given codebook has fingerprint {vocab.fingerprint()}, sizes {vocab.sizes}")
    model = GenerativeRecommender.from_config(cfg, vocab)
    state = art.load_safetensors("model.safetensors")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ArtifactCorrupted(f"{art.ref}: state dict mismatch (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.to(device).eval(), codebook, art


def _lineage_ok(registry: Registry, old_cb: Codebook, old_cb_ref: str, codebook_art: Artifact) -> bool:
    """Whether ``codebook_art`` was rebalanced from the codebook the checkpoint was trained on: that
    ref is among its parents, or a parent codebook has the same SIDs (a pass-through copy made by
    ``rebalance.enabled: false`` or a re-tokenize with identical output counts as the same)."""
    parents = list(codebook_art.manifest.parents)
    if old_cb_ref in parents:
        return True
    want = SIDVocab.from_codebook(old_cb).fingerprint()
    for ref in parents:
        if not ref.startswith("codebook/"):
            continue
        try:
            cand = Codebook.from_artifact(registry.load(ref))
        except Exception:  # a missing / unreadable parent simply does not vouch for the lineage
            continue
        if cand.sizes == old_cb.sizes and SIDVocab.from_codebook(cand).fingerprint() == want:
            return True
    return False


def warm_start(model: GenerativeRecommender, registry: Registry, ref: str, codebook: Codebook, codebook_art: Artifact) -> Artifact:
    """Initialise ``model`` (built for ``codebook``) from checkpoint ``ref`` — CRAB §4.3.

    Every weight is copied; vocabulary-sized rows (token embeddings, a tied or untied output layer,
    peft's trainable-token deltas; for a pretrained decoder LM the rows after its own vocabulary)
    are re-laid out for the new codebook with each token taking the row of its origin token
    (``codebook.token_origin``), so a token a split created starts as the token it came from. Heads
    the checkpoint does not have (e.g. CARE or GenPlugin added for the fine-tune) keep their fresh
    initialisation; every other missing weight is an error.

    The checkpoint must have been trained on the codebook ``codebook`` was rebalanced from (CRAB:
    re-layout; see :func:`_lineage_ok`) or on ``codebook`` itself (same SIDs: a plain continuation,
    announced as such -- the rows it learned for split tokens are kept, nothing is re-initialised);
    else :class:`ArtifactIncompatible`."""
    import torch

    from components.rebalancer.alignment import expand_token_embeddings

    old_model, old_cb, old_art = load_checkpoint(registry, ref)
    old_cb_ref = old_art.load_json("config.json")["codebook"]
    same = old_cb.sizes == codebook.sizes and old_cb.sids.shape == codebook.sids.shape and bool((old_cb.sids == codebook.sids).all())
    if not same and not _lineage_ok(registry, old_cb, old_cb_ref, codebook_art):
        raise ArtifactIncompatible(f"{old_art.ref} was trained on {old_cb_ref}; {codebook_art.ref} was not rebalanced from it "
                                   f"(its parents: {codebook_art.manifest.parents})")
    ov, nv = old_model.vocab, model.vocab
    if same:
        print(f"warm start: {old_art.ref} was trained on these SIDs ({old_cb_ref}): continuing it, no token re-layout")
        origin = [list(range(s)) for s in codebook.sizes]
    else:
        origin = codebook.token_origin
        if origin is None or [len(o) for o in origin] != list(codebook.sizes) or any(
                max(o, default=-1) >= old for o, old in zip(origin, ov.sizes)):
            raise ArtifactIncompatible(f"{codebook_art.ref}: token_origin does not map its tokens onto {old_cb_ref}'s "
                                       f"(sizes {ov.sizes} -> {nv.sizes})")
        print(f"warm start: {old_art.ref} ({old_cb_ref}) -> {codebook_art.ref}: "
              f"{sum(nv.sizes) - sum(ov.sizes)} split tokens start as their origin token")
    base = int(getattr(model.backbone, "base_vocab", 0) or 0)  # a pretrained LM's own vocabulary precedes the SID rows
    if base != int(getattr(old_model.backbone, "base_vocab", 0) or 0):
        raise ArtifactIncompatible(f"{old_art.ref} has another base vocabulary ({getattr(old_model.backbone, 'base_vocab', 0)} vs {base})")

    def relayout(prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor | None:
        for off in sorted({0, base}):
            if prev.ndim >= 1 and prev.shape[0] == off + ov.size and cur.shape[0] == off + nv.size and prev.shape[1:] == cur.shape[1:]:
                flat = prev[off:].reshape(ov.size, -1)
                grown = expand_token_embeddings(flat, ov.offsets, ov.sizes, nv.offsets, nv.sizes, origin)
                return torch.cat([prev[:off].reshape(off, flat.shape[1]), grown]).reshape(cur.shape)
        return None

    old_state, new_state = old_model.state_dict(), model.state_dict()
    old_heads = {h.name for h in old_model.heads}
    for key, cur in new_state.items():
        prev = old_state.get(key)
        if prev is None and key.startswith("heads.") and model.heads[int(key.split(".")[1])].name not in old_heads:
            continue  # a head the source model did not have (e.g. CARE added for the fine-tune) keeps its fresh init
        if prev is None:
            raise ArtifactIncompatible(f"{old_art.ref} has no weight {key!r} (another architecture?)")
        if same and prev.shape == cur.shape:
            new_state[key] = prev
            continue
        grown = relayout(prev, cur)
        if grown is not None:
            new_state[key] = grown
        elif prev.shape == cur.shape:
            new_state[key] = prev
        else:
            raise ArtifactIncompatible(f"{key}: checkpoint shape {tuple(prev.shape)} does not fit {tuple(cur.shape)}")
    with torch.no_grad():
        model.load_state_dict(new_state)
    return old_art
