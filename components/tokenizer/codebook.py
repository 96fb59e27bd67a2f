"""The ``codebook`` artifact every tokenizer method writes and the rebalancer and generator read.

A codebook gives each item a semantic ID (SID): ``L`` tokens, coarse to fine. Token values are
*level-local* (level ``l`` token ``t`` is in ``[0, sizes[l])``); the generator adds per-level
offsets. Codes are shared across parents within a level (residual quantization), so the
parent-child structure is a set of edges per level, ``(token at l-1, token at l)``; the prefix tree
(node = SID prefix) is always a tree.

Artifact ``codebook/<name>`` files:

- ``sids.npy``               int32 ``[n_items, L]``, row ``i`` = SID of dataset item ``i``
- ``codewords.safetensors``  ``level_<l>``: float32 ``[sizes[l], d]`` for quantized levels (a
                              disambiguation level added for collisions has no codewords)
- ``codebook.json``          ``{"method", "sizes", "n_levels", "item_ids", "token_origin"}``;
                              ``token_origin[l][t]`` is the original token a rebalanced token came
                              from (identity when not rebalanced)
- ``tree.npz``               ``edges_<l>`` int32 ``[E, 2]`` (parent, child) for ``l >= 1``
- ``stats.json``             health statistics (per level), free-form
- ``encoder.safetensors``    optional: weights of a learned map from text embeddings to the
                              quantized space (RQ-VAE encoder), its architecture in
                              ``codebook.json["encoder_config"]``; absent for RQ-KMeans, whose
                              codewords live in the embedding space itself

Parents of the artifact: the dataset (and embeddings / previous codebook) it was built from;
``meta["dataset"]`` holds the dataset ref, checked by :meth:`Codebook.check_dataset`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from components.registry import Artifact, ArtifactCorrupted, ArtifactIncompatible, Registry


@dataclass
class Codebook:
    sids: np.ndarray  # int32 [n_items, L]
    sizes: list[int]
    item_ids: list[str]
    method: str
    codewords: dict[int, np.ndarray] = field(default_factory=dict)  # level -> float32 [size, d]
    token_origin: list[list[int]] | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    dataset_ref: str | None = None
    encoder_weights: dict[str, np.ndarray] = field(default_factory=dict)  # RQ-VAE encoder (optional)
    encoder_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sids = np.asarray(self.sids, dtype=np.int32)
        self.sizes = [int(s) for s in self.sizes]
        if self.token_origin is None:
            self.token_origin = [list(range(s)) for s in self.sizes]
        self.validate()

    # ---- structure ------------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return int(self.sids.shape[0])

    @property
    def n_levels(self) -> int:
        return int(self.sids.shape[1])

    def validate(self, require_unique: bool = True) -> None:
        if self.sids.ndim != 2 or self.sids.shape[0] != len(self.item_ids):
            raise ArtifactCorrupted(f"sids shape {self.sids.shape} does not match {len(self.item_ids)} items")
        if len(self.sizes) != self.n_levels:
            raise ArtifactCorrupted(f"{len(self.sizes)} level sizes for {self.n_levels}-token SIDs")
        for lvl, size in enumerate(self.sizes):
            col = self.sids[:, lvl]
            if col.size and (col.min() < 0 or col.max() >= size):
                raise ArtifactCorrupted(f"level {lvl} tokens outside [0, {size})")
            if lvl in self.codewords and self.codewords[lvl].shape[0] != size:
                raise ArtifactCorrupted(f"level {lvl}: {self.codewords[lvl].shape[0]} codewords for size {size}")
            if len(self.token_origin[lvl]) != size:
                raise ArtifactCorrupted(f"level {lvl}: token_origin has {len(self.token_origin[lvl])} entries for size {size}")
        if require_unique and self.n_collisions() > 0:
            raise ArtifactCorrupted(f"{self.n_collisions()} items share a full SID with another item")

    @property
    def quantized_levels(self) -> list[int]:
        """Levels that have codewords (a trailing disambiguation level has none)."""
        return sorted(self.codewords)

    @property
    def input_dim(self) -> int | None:
        """Dimension of the text embeddings this codebook quantizes (None if unknown)."""
        if self.encoder_config:
            return int(self.encoder_config["in_dim"])
        if self.codewords:
            return int(self.codewords[min(self.codewords)].shape[1])
        return None

    def n_collisions(self) -> int:
        """Items whose full SID is also another item's (count of items beyond the first per SID)."""
        return int(self.n_items - np.unique(self.sids, axis=0).shape[0])

    def edges(self, level: int) -> np.ndarray:
        """Unique (parent token at level-1, child token at level) pairs, int32 [E, 2]."""
        if not 1 <= level < self.n_levels:
            raise ValueError(f"edges exist for levels 1..{self.n_levels - 1}")
        return np.unique(self.sids[:, level - 1 : level + 1], axis=0).astype(np.int32)

    def lookup(self) -> dict[tuple[int, ...], int]:
        """Full SID → item index."""
        return {tuple(int(t) for t in row): i for i, row in enumerate(self.sids)}

    def check_dataset(self, dataset_ref: str, n_items: int) -> None:
        if self.n_items != n_items:
            raise ArtifactIncompatible(f"codebook covers {self.n_items} items, dataset {dataset_ref} has {n_items}")
        if self.dataset_ref and dataset_ref and self.dataset_ref.split("@")[0] == dataset_ref.split("@")[0] and self.dataset_ref != dataset_ref:
            raise ArtifactIncompatible(f"codebook was built from {self.dataset_ref}, not {dataset_ref}")

    # ---- artifact -------------------------------------------------------------------------
    def save(self, registry: Registry, name: str, parents: list, params: dict[str, Any]) -> Artifact:
        import torch

        self.validate()
        with registry.create("codebook", name, parents=parents, params=params) as w:
            w.write_numpy("sids.npy", self.sids)
            if self.codewords:
                w.write_safetensors(
                    "codewords.safetensors",
                    {f"level_{lvl}": torch.from_numpy(np.ascontiguousarray(cw, dtype=np.float32)) for lvl, cw in self.codewords.items()},
                )
            info = {"method": self.method, "sizes": self.sizes, "n_levels": self.n_levels, "item_ids": self.item_ids, "token_origin": self.token_origin}
            if self.encoder_weights:
                w.write_safetensors("encoder.safetensors", {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in self.encoder_weights.items()})
                info["encoder_config"] = self.encoder_config
            w.write_json("codebook.json", info)
            w.write_npz("tree.npz", **{f"edges_{lvl}": self.edges(lvl) for lvl in range(1, self.n_levels)})
            w.write_json("stats.json", self.stats)
            w.meta.update({"method": self.method, "sizes": self.sizes, "n_items": self.n_items, "dataset": self.dataset_ref, "collisions": self.n_collisions()})
        return w.artifact

    @classmethod
    def from_artifact(cls, art: Artifact) -> "Codebook":
        if art.kind != "codebook":
            raise ArtifactCorrupted(f"{art.ref} is a {art.kind!r} artifact, not a codebook")
        info = art.load_json("codebook.json")
        codewords = {}
        if art.has_file("codewords.safetensors"):
            codewords = {int(k.split("_")[1]): v.numpy() for k, v in art.load_safetensors("codewords.safetensors").items()}
        cb = cls(
            sids=art.load_numpy("sids.npy"),
            sizes=info["sizes"],
            item_ids=info["item_ids"],
            method=info["method"],
            codewords=codewords,
            token_origin=info.get("token_origin"),
            stats=art.load_json("stats.json") if art.has_file("stats.json") else {},
            dataset_ref=art.meta.get("dataset"),
            encoder_weights={k: v.numpy() for k, v in art.load_safetensors("encoder.safetensors").items()} if art.has_file("encoder.safetensors") else {},
            encoder_config=info.get("encoder_config", {}),
        )
        tree = art.load_numpy("tree.npz")
        for lvl in range(1, cb.n_levels):
            if not np.array_equal(tree.get(f"edges_{lvl}"), cb.edges(lvl)):
                raise ArtifactCorrupted(f"{art.ref}: stored tree at level {lvl} is inconsistent with the SIDs")
        return cb
