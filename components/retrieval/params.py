"""``retrieval:`` params (RecBole style: every key typed and described)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from components.params import Section


class RetrievalParams(Section):
    """Similar-user retrieval for GenPlugin's retrieval augmentation."""

    fields: list[str] = Field(["title", "brand", "categories"], description="item text fields in a user's BM25 pseudo-document")
    k1: float = Field(1.5, gt=0, description="BM25 term-frequency saturation")
    b: float = Field(0.75, ge=0, le=1, description="BM25 document-length normalization")
    index: Literal["flat", "hnsw", "ivf"] = Field("flat", description="faiss index over user vectors: flat (exact) | hnsw | ivf")
    hnsw_m: int = Field(32, ge=4, description="HNSW graph degree (index: hnsw)")
    ivf_nlist: int = Field(0, ge=0, description="IVF cells; 0 = sqrt(#users) (index: ivf)")
    ivf_nprobe: int = Field(8, ge=1, description="IVF cells probed per query (index: ivf)")
    user_vectors: Literal["item-mean", "sasrec"] = Field("item-mean", description="collaborative-path user vectors: item-mean (mean of the item embeddings of the training history) | sasrec (GenPlugin §3.3: a trained SASRec's user state g_u)")
    sasrec_model: str | None = Field(None, description="user_vectors: sasrec — the SASRec model ref; null = model/<dataset>-sasrec@latest (written by `genrec evaluate baselines`)")
    z: int = Field(20, ge=1, description="candidates per path (BM25, faiss)")
    v: int = Field(10, ge=1, description="users kept after the merge and re-rank")
