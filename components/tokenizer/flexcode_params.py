"""``tokenizer.flexcode:`` params of the FlexCode dual (CF + semantic) codebook (``tokenizer.method: flexcode``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from components.params import Section


class FlexCodeParams(Section):
    """``tokenizer.flexcode:`` CF view source, shared latent, the MoE allocation gate and its losses."""

    cf_source: Literal["auto", "sasrec", "mf"] = Field(
        "auto", description="CF item vectors: sasrec = model/<dataset>-sasrec@latest item embeddings; mf = TruncatedSVD of the training item-user matrix; auto = sasrec when that artifact exists, else mf"
    )
    sasrec_model: str | None = Field(None, description="SASRec model ref for cf_source sasrec/auto; null = model/<data.dataset>-sasrec@latest")
    mf_dim: int = Field(64, ge=2, description="mf: SVD rank of the log-scaled item-user matrix")
    latent_dim: int = Field(64, ge=2, description="dimension of the shared latent space both views are encoded into")
    hidden: int = Field(256, ge=1, description="hidden width of each view's encoder/decoder MLP")
    max_cf_tokens: int | None = Field(None, ge=0, description="most SID tokens an item may take from the CF codebook; null = levels - 1 (level 0 stays semantic)")
    min_cf_tokens: int = Field(0, ge=0, description="fewest CF tokens per item")
    experts: int = Field(4, ge=1, description="experts of the MoE allocation gate (inputs: both views' item vectors, popularity features, CF reliability)")
    shrinkage: float | None = Field(
        None, gt=0, description="lambda: the text prior is worth lambda interactions, CF reliability w_c = n/(n + lambda); a fixed number, not a statistic of the data (null = 5, the usual 5-core threshold)"
    )
    min_cf_reliability: float = Field(
        0.5, ge=0, le=1, description="tail rule: an item with w_c = n/(n + lambda) below this (default: n < lambda) or no interaction keeps all semantic tokens (min_cf_tokens CF tokens); 0 = only cold items"
    )
    cf_share: float | None = Field(None, ge=0, le=1, description="optional global budget: mean CF tokens / levels pushed toward this share (null = free)")
    epochs: int = Field(60, ge=1, description="training epochs of the shared latent (encoders, codebooks, alignment); the allocation does not depend on it")
    batch_size: int = Field(1024, ge=2, description="items per optimisation step (InfoNCE negatives come from the batch)")
    lr: float = Field(3e-3, gt=0, description="Adam learning rate")
    beta: float = Field(0.25, ge=0, description="commitment weight beta * ||r - sg(e)||^2 of both codebooks")
    align_weight: float = Field(1.0, ge=0, description="weight of the symmetric InfoNCE alignment between the CF and semantic latents")
    temperature: float = Field(0.1, gt=0, description="InfoNCE temperature")
    gate_steps: int = Field(300, ge=0, description="training steps (full batch) of the allocation gate on the input-space distortions")
    gate_lr: float = Field(1e-2, gt=0, description="Adam learning rate of the allocation gate")
    gate_weight: float = Field(1.0, ge=0, description="weight of the gate's expected allocation distortion")
    smooth_weight: float = Field(1.0, ge=0, description="weight of the smoothness loss between the mean allocations of adjacent popularity values")
    budget_weight: float = Field(1.0, ge=0, description="weight of (mean CF share - cf_share)^2 when cf_share is set")
    device: str = Field("cpu", description="torch device: auto (cuda when present) | cpu | cuda[:i]")
