"""``experiment:`` params: the variants (one params block per method), seeds, and what `dvc repro` runs.

A variant is data, not code. Generator variants override ``generator:`` keys (deep-merged on top
of the preset; ``--set generator.*`` flags still win), choose the codebook they train on, and may
warm-start from another variant's checkpoint of the same seed (CRAB's post-hoc fine-tune).
Baseline variants name a classical baseline (popular, sasrec, sasrec-rr, sasrec-rw).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from components.params import Section

NAME_RE = r"^[a-z0-9][a-z0-9._-]*$"
BASELINE_METHODS = ("popular", "sasrec", "sasrec-rr", "sasrec-rw")
DVC_FIXED = {"tiger": "train", "tiger-crab": "finetune"}  # variants dvc.yaml runs in stages of their own


class VariantParams(Section):
    """One method of the comparison."""

    kind: Literal["generator", "baseline"] = Field("generator", description="generator (a generative model trained here) | baseline (a classical baseline)")
    label: str | None = Field(None, description="column label in the report; null = the variant name")
    method: str | None = Field(None, description="baseline variants: popular | sasrec | sasrec-rr | sasrec-rw")
    codebook: str = Field("base", description="generator variants: base (the tokenize stage's codebook) | crab (the rebalance stage's) | a tokenizer method (rqkmeans, balanced, rqvae, flexcode: built on first use) | a full ref kind/name@version")
    init_from: str | None = Field(None, description="generator variants: warm-start from this variant's checkpoint of the same seed (CRAB §4.3 post-hoc fine-tune)")
    generator: dict[str, Any] = Field(default_factory=dict, description="generator: keys this variant overrides (nested mapping, e.g. {train: {reweight_power: 0.5}})")
    rebalance: dict[str, Any] = Field(default_factory=dict, description="codebook crab only: rebalance: keys this variant's codebook overrides (e.g. {levels: [1]}); it is built as codebook/<dataset>-crab-<overrides>")

    @model_validator(mode="after")
    def _consistent(self) -> "VariantParams":
        if self.kind == "baseline":
            if self.method not in BASELINE_METHODS:
                raise ValueError(f"method: a baseline variant needs method in {list(BASELINE_METHODS)}, got {self.method!r}")
            if self.generator or self.init_from or self.codebook != "base":
                raise ValueError("a baseline variant takes only method (and label); generator / codebook / init_from are for generator variants")
        elif self.method is not None:
            raise ValueError("method: only baseline variants name a method")
        if self.rebalance:
            from components.rebalancer.params import RebalanceParams

            if self.codebook != "crab":
                raise ValueError("rebalance: overrides apply to codebook: crab only")
            bad = sorted(set(self.rebalance) - (set(RebalanceParams.model_fields) - {"enabled", "codebook", "name"}))
            if bad:
                raise ValueError(f"rebalance: unknown or fixed key(s) {bad} (the input codebook and output name are the variant's)")
            RebalanceParams.model_validate(self.rebalance)  # values checked now, not after the parent trained
        return self


class ExperimentParams(Section):
    """``experiment:`` the comparison `genrec experiment run` and `dvc repro` produce."""

    variants: dict[str, VariantParams] = Field(default_factory=dict, description="variant name -> params block")
    pipeline: list[str] = Field(default_factory=list, description="generator variants `dvc repro` trains (in this order); the rest run with `genrec experiment run`")
    report: list[str] = Field(default_factory=list, description="report columns (variant names, in order); empty = every variant that has rankings")
    reference: str = Field("tiger", description="variant the 'change vs' table compares every other variant with")
    seeds: int = Field(1, ge=1, description="runs per variant in `genrec experiment run` (seeds seed, seed+1, ...); `dvc repro` runs one")

    @field_validator("variants")
    @classmethod
    def _names(cls, v: dict[str, VariantParams]) -> dict[str, VariantParams]:
        import re

        bad = [n for n in v if not re.match(NAME_RE, n)]
        if bad:
            raise ValueError(f"variant names must match {NAME_RE}: {bad}")
        for name, var in v.items():
            if var.init_from is not None:
                if var.init_from not in v:
                    raise ValueError(f"{name}.init_from: unknown variant {var.init_from!r}; known: {sorted(v)}")
                if v[var.init_from].kind != "generator":
                    raise ValueError(f"{name}.init_from: {var.init_from!r} is not a generator variant")
        # no warm-start cycles
        for name in v:
            seen, cur = set(), name
            while cur is not None:
                if cur in seen:
                    raise ValueError(f"{name}.init_from: warm-start cycle through {sorted(seen)}")
                seen.add(cur)
                cur = v[cur].init_from
        return v

    @model_validator(mode="after")
    def _known(self) -> "ExperimentParams":
        for key in ("pipeline", "report"):
            unknown = [n for n in getattr(self, key) if n not in self.variants]
            if unknown:
                raise ValueError(f"{key}: unknown variant(s) {unknown}; known: {sorted(self.variants)}")
        if self.variants and self.reference not in self.variants:
            raise ValueError(f"reference: unknown variant {self.reference!r}; known: {sorted(self.variants)}")
        for n in self.pipeline:
            if self.variants[n].kind != "generator":
                raise ValueError(f"pipeline: {n!r} is a baseline (the baselines stage runs those)")
            if n in DVC_FIXED:
                raise ValueError(f"pipeline: {n!r} always runs (dvc stage {DVC_FIXED[n]!r}); list only further variants")
            if self.variants[n].init_from not in (None, "tiger"):
                raise ValueError(f"pipeline: {n!r} warm-starts from {self.variants[n].init_from!r}; in dvc repro a variant may "
                                 f"warm-start only from tiger (run it with `genrec experiment run` instead)")
        # registry names must not collide: <dataset>-<variant>[-s<seed>] for generators, <dataset>-<method>[-s<seed>] for baselines
        import re

        for n, v in self.variants.items():
            if re.search(r"-s\d+$", n):
                raise ValueError(f"variants.{n}: a name ending in -s<digits> collides with another variant's seed run")
            if v.kind == "generator" and n in BASELINE_METHODS:
                raise ValueError(f"variants.{n}: a generator variant cannot take a baseline's name (its runs would overwrite the baseline's)")
        methods = [v.method for v in self.variants.values() if v.kind == "baseline"]
        twice = sorted({m for m in methods if methods.count(m) > 1})
        if twice:
            raise ValueError(f"variants: baseline method(s) {twice} named by several variants; each writes rankings/<dataset>-<method>")
        labels = [v.label or n for n, v in self.variants.items()]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"variants: duplicate report labels {dup}")
        return self
