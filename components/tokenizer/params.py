"""``tokenizer:`` params: how item text becomes embeddings and embeddings become semantic IDs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.params import Section
from components.tokenizer.flexcode_params import FlexCodeParams


class RQVAEParams(Section):
    """``tokenizer.rqvae:`` the RQ-VAE's network and training."""

    latent_dim: int = Field(32, ge=1, description="dimension of the quantized latent z = encoder(x)")
    hidden: list[int] = Field([512, 256, 128], description="encoder MLP hidden widths (the decoder mirrors them)")
    epochs: int = Field(200, ge=1, description="training epochs over all items")
    batch_size: int = Field(1024, ge=1, description="items per optimisation step")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    beta: float = Field(0.25, ge=0, description="commitment loss weight: beta * ||z_l - sg(e)||^2")
    dead_code_every: int = Field(10, ge=0, description="every N epochs re-seed codes no item used (0 = never)")
    kmeans_init: bool = Field(True, description="initialise each level's codes by k-means on the first residuals")
    device: str = Field("auto", description="torch device: auto (cuda when present) | cpu | cuda[:i]")


class TokenizerParams(Section):
    """``tokenizer:`` text encoder, quantization method, codebook shape, collision handling."""

    encoder: Literal["minilm", "sentence-transformers", "hf-mean", "tfidf"] = Field(
        "minilm", description="minilm = the offline all-MiniLM-L6-v2 package; sentence-transformers / hf-mean = model_path; tfidf = TF-IDF + SVD (fast, CPU)"
    )
    model_path: str | None = Field(None, description="local model directory for encoder sentence-transformers or hf-mean")
    text_fields: list[str] = Field(["title", "brand", "categories", "description"], description="item text fields in template order; missing or empty ones are skipped")
    max_field_chars: dict[str, int] = Field({"description": 300}, description="truncate these fields to this many characters")
    batch_size: int = Field(64, ge=1, description="texts per encoder batch")
    max_length: int = Field(256, ge=8, description="encoder max tokens per text (hf-mean)")
    normalize: bool = Field(True, description="L2-normalise text embeddings")
    tfidf_dim: int = Field(128, ge=2, description="tfidf encoder: SVD output dimension")
    device: str = Field("auto", description="encoder device: auto (cuda when present) | cpu | cuda[:i]")

    method: Literal["rqkmeans", "balanced", "rqvae", "flexcode"] = Field(
        "rqkmeans", description="rqkmeans (faiss) | balanced (size-constrained RQ-KMeans) | rqvae (torch) | flexcode (popularity-aware dual CF + semantic codebook)"
    )
    levels: int = Field(3, ge=1, description="quantized SID levels")
    codebook_size: int = Field(256, ge=2, description="codes per level")
    niter: int = Field(20, ge=1, description="k-means iterations per level")
    max_points_per_centroid: int = Field(256, ge=1, description="faiss k-means training subsample: at most this many points per centroid")
    balanced_iters: int = Field(10, ge=1, description="balanced: assignment/update rounds after k-means init")
    collisions: Literal["extra_level", "reassign"] = Field(
        "extra_level", description="extra_level = TIGER-style disambiguating final token; reassign = move to the nearest free code at the last level"
    )
    stream: Literal["auto", "always", "never"] = Field(
        "auto", description="streaming RQ-KMeans on the memory-mapped embeddings (rqkmeans + extra_level): always | never | auto (when the matrix reaches stream_min_mb)")
    stream_min_mb: int = Field(2048, ge=0, description="stream auto: stream when n_items x dim x 4 bytes reach this many MiB")
    stream_sample: int = Field(0, ge=0, description="stream: rows k-means trains each level on; 0 = max_points_per_centroid x codebook_size")
    stream_chunk: int = Field(65536, ge=1, description="stream: rows per assignment chunk")
    rqvae: RQVAEParams = Field(default_factory=RQVAEParams, description="RQ-VAE network and training (method: rqvae)")
    flexcode: FlexCodeParams = Field(default_factory=FlexCodeParams, description="FlexCode CF view, shared latent, MoE gate and losses (method: flexcode)")

    @model_validator(mode="after")
    def _need_path(self) -> "TokenizerParams":
        if self.encoder in ("sentence-transformers", "hf-mean") and not self.model_path:
            raise ValueError(f"tokenizer.model_path is required for encoder {self.encoder!r}")
        return self
