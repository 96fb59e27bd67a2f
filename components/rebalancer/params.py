"""``rebalance:`` parameters (CRAB codebook rebalancing, Sec. 4.1, the alignment weight of Eq. 10 is ``generator.finetune.beta``)."""

from __future__ import annotations

from pydantic import Field, model_validator

from components.params import Section


class RebalanceParams(Section):
    """``rebalance:`` split over-popular codebook tokens under the hierarchy constraint."""

    enabled: bool = Field(True, description="false = no-op: the input codebook is re-saved unchanged as the output name (meta passthrough=input ref)")
    codebook: str = Field("industrial-rqkmeans", description="input codebook: a name under artifacts/codebook/ (its @latest) or a full ref kind/name@version")
    embeddings: str | None = Field("auto", description="item-embeddings artifact ref for the residuals (must come from the same dataset); auto = item-embeddings/<dataset>@latest when it exists and was embedded from the dataset, else as null; null = codewords, else TF-IDF+SVD of item text")
    name: str | None = Field(None, description="output codebook name; null = <data.dataset>-crab")
    split_ratio: float = Field(0.1, gt=0.0, le=1.0, description="share of each level's used tokens (most popular first) that may split")
    max_splits: int = Field(4, ge=2, description="upper bound on the new tokens one token splits into")
    levels: list[int] | None = Field(None, description="levels to split (0 = first); null = every semantic level; the paper finds the middle level ([1]) best alone")
    lam: float = Field(1.0, ge=0.0, description="weight of the popularity-balance loss (Eq. 5, scaled to [0,1]) against the normalized K-means distance")
    n_init: int = Field(4, ge=1, description="restarts of the local-search split solver (best objective wins)")
    exact_max: int = Field(20000, ge=1, description="solve a split exactly by enumeration when n^m assignments <= this")
    semantic_levels: int | None = Field(None, ge=1, description="leading semantic levels (the rest: collision disambiguation, never split); null = detect")
    text_dim: int = Field(64, ge=2, description="dimension of the TF-IDF+SVD fallback item embedding")

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data):
        if isinstance(data, dict) and "beta" in data:
            raise ValueError("rebalance.beta moved to generator.finetune.beta: the alignment weight (Eq. 10) is read where "
                             "the fine-tune builds the loss")
        return data
