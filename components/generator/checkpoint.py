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
