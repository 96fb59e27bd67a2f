"""``evaluation:`` params: metrics, the rankings evaluated, and the classical baselines."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.params import Section

METHOD_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class SASRecParams(Section):
    """``evaluation.baselines.sasrec:`` the SASRec baseline (small enough for a 2-core CPU)."""

    d_model: int = Field(64, ge=8, description="embedding / hidden size")
    n_layers: int = Field(2, ge=1, description="Transformer encoder layers")
    n_heads: int = Field(2, ge=1, description="attention heads (must divide d_model)")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="dropout on embeddings and inside the layers")
    max_len: int = Field(0, ge=0, description="history window in items; 0 = the dataset's max_history")
    epochs: int = Field(40, ge=1, description="maximum training epochs")
    batch_size: int = Field(256, ge=1, description="training chunks per batch")
    lr: float = Field(2e-3, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    patience: int = Field(3, ge=1, description="early stopping: epochs without a better valid NDCG@10")
    max_minutes: float = Field(3.0, gt=0, description="stop after the epoch that passes this wall-clock budget")
    num_threads: int = Field(1, ge=1, description="torch CPU threads (1 is fastest on a shared 2-core box)")


class BaselinesParams(Section):
    """``evaluation.baselines:`` which classical baselines `genrec baselines` trains and ranks with."""

    methods: list[str] = Field(
        ["popular", "sasrec", "sasrec-rr", "sasrec-rw"],
        description="subset of popular, sasrec, sasrec-rr (SASRec + re-ranking), sasrec-rw (SASRec trained with popularity weights)",
    )
    rr_gamma: float | Literal["auto"] = Field(
        "auto", description="RR strength: score - gamma * log(1 + train count); auto = chosen on valid from rr_grid (lowest valid DGU@10 within rr_max_ndcg_drop)"
    )
    rr_grid: list[float] = Field([0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0], min_length=1, description="RR: gammas tried when rr_gamma is auto")
    rr_max_ndcg_drop: float = Field(0.05, ge=0, le=1, description="RR auto: allowed relative valid NDCG@10 loss vs gamma = 0")
    rw_power: float = Field(0.5, ge=0, description="RW exponent: loss weight ∝ (1 + train count)^-power, mean 1 over training samples")
    sasrec: SASRecParams = Field(default_factory=SASRecParams, description="SASRec size and training budget")

    @field_validator("rr_gamma")
    @classmethod
    def _gamma(cls, v):
        if v != "auto" and v < 0:
            raise ValueError("rr_gamma must be >= 0 or 'auto'")
        return v

    @field_validator("methods")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        known = {"popular", "sasrec", "sasrec-rr", "sasrec-rw"}
        bad = [m for m in v if m not in known]
        if bad:
            raise ValueError(f"unknown baseline(s) {bad}; known: {sorted(known)}")
        return v


class EvaluationParams(Section):
    """``evaluation:`` metrics and the rankings `genrec evaluate` reports on."""

    rankings: list[str] = Field(
        ["popular", "sasrec", "sasrec-rr", "sasrec-rw"],
        description="methods to evaluate: artifacts rankings/<data.dataset>-<method>@latest (report columns, in order)",
    )
    split: str = Field("test", pattern="^(valid|test)$", description="split the report is computed on")
    ks: list[int] = Field([1, 5, 10, 20], min_length=1, description="cutoffs K of every metric")
    report_k: int = Field(10, ge=1, description="cutoff of the main table and the plots")
    topk: int = Field(20, ge=1, description="ranked-list length recommenders write (>= max ks)")
    n_groups: int = Field(5, ge=1, description="item popularity groups (equal item count) for MGU/DGU")
    head_fraction: float = Field(0.2, gt=0, lt=1, description="top share of items by training count that is 'head'")
    orr_top: int = Field(5, ge=1, description="ORR@K: share of slots taken by this many most-recommended items")
    token_groups: int = Field(8, ge=1, description="token popularity groups per SID level (CARE Fig. 1 uses 8)")
    token_k: int = Field(1, ge=1, description="token bias: SIDs of the top-k recommended items count as generated tokens")
    bootstrap: int = Field(2000, ge=0, description="experiment report: paired per-user bootstrap resamples of each variant vs the reference (0 = skip the test)")
    codebook: str | None = Field(None, description="codebook ref for the token-level bias plot, e.g. codebook/industrial-rqkmeans@latest; null = skip")
    baselines: BaselinesParams = Field(default_factory=BaselinesParams, description="classical baselines trained and evaluated on the same split")

    @field_validator("ks")
    @classmethod
    def _ks(cls, v: list[int]) -> list[int]:
        if any(k < 1 for k in v):
            raise ValueError("every K must be >= 1")
        return sorted(set(v))

    @model_validator(mode="after")
    def _consistent(self) -> "EvaluationParams":
        if self.report_k not in self.ks:
            raise ValueError(f"report_k {self.report_k} must be one of ks {self.ks}")
        if self.topk < max(self.ks):
            raise ValueError(f"topk {self.topk} is shorter than the largest K {max(self.ks)}")
        return self
