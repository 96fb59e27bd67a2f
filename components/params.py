"""Typed parameters: ``params.yaml`` is the one source of truth, parsed into pydantic models.

Every model forbids unknown keys, so a typo fails with the key's dotted path, e.g.
``params.yaml: data.max_histroy: Extra inputs are not permitted``. Each component owns the model
of its own section (``components/<component>/params.py``) and registers it in :class:`Params`.
CLI flags override with ``--set section.key=value`` (the value parsed as YAML).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError



class Section(BaseModel):
    """Base of every params section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class DataParams(Section):
    """``data:`` which dataset the pipeline runs on and how it is prepared."""

    dataset: str = Field("industrial", description="catalog name (industrial, ml-100k) or any name with `format` and `path` set")
    format: Literal["auto", "minionerec", "minionerec-csv", "recbole", "amazon2018", "amazon2023", "table"] = Field(
        "auto", description="loader; auto = the catalog's format for known names"
    )
    path: str | None = Field(None, description="your own dataset: directory `genrec data fetch` copies raw files from (prepare reads data/raw/<dataset>)")
    max_history: int = Field(0, ge=0, description="history length cap; 0 = the dataset's default (industrial 10, ml-100k 20)")
    # Amazon Reviews 2018 raw preprocessing (format amazon2018)
    k_core: int = Field(5, ge=1, description="amazon2018: iterative k-core filter on users and items")
    start_time: str | None = Field(None, description="amazon2018: keep reviews at or after this date (YYYY-MM or YYYY-MM-DD)")
    end_time: str | None = Field(None, description="amazon2018: keep reviews before this date (YYYY-MM or YYYY-MM-DD)")
    max_title_chars: int = Field(300, ge=1, description="amazon2018: drop items whose cleaned title is longer")
    split_ratio: tuple[float, float, float] = Field((0.8, 0.1, 0.1), description="amazon2018 / table split time: chronological train/valid/test ratio")
    # Plain tables (format table): interactions CSV (Parquet with pyarrow) + items CSV/JSONL
    interactions_file: str | None = Field(None, description="table: interactions file inside the raw directory; null = interactions.{csv,tsv,parquet}")
    items_file: str | None = Field(None, description="table: items file inside the raw directory; null = items.{csv,tsv,jsonl,parquet}")
    user_col: str = Field("user_id", description="table: user id column of the interactions")
    item_col: str = Field("item_id", description="table: item id column of the interactions and the items")
    time_col: str | None = Field("timestamp", description="table: timestamp column (number or ISO date); null = file order")
    text_cols: list[str] = Field(default_factory=list, description="table: item text columns; [] = every items column except the id")
    split: Literal["leave-one-out", "time"] = Field("leave-one-out", description="table: leave-one-out per user (as recbole) or chronological by split_ratio (as amazon2018)")
    engine: Literal["auto", "polars", "python"] = Field(
        "auto", description="amazon2018/2023 raw loader: polars (columnar, streamed; no Python object per review) | python (reference) | auto (polars when installed; env GENREC_DATA_ENGINE wins)")


class RegistryParams(Section):
    """``registry:`` where artifacts live."""

    root: str = Field("artifacts", description="registry root directory (env GENREC_ARTIFACTS overrides)")


# Component sections (imported here, after Section exists, so each component may subclass it).
from components.evaluation.params import EvaluationParams  # noqa: E402
from components.experiment.params import ExperimentParams  # noqa: E402
from components.generator.params import GeneratorParams  # noqa: E402
from components.rebalancer.params import RebalanceParams  # noqa: E402
from components.retrieval.params import RetrievalParams  # noqa: E402
from components.serving.params import ServingParams  # noqa: E402
from components.tokenizer.params import TokenizerParams  # noqa: E402


class Params(Section):
    """All of ``params.yaml``."""

    seed: int = Field(2024, description="global random seed")
    data: DataParams = Field(default_factory=DataParams, description="dataset and its preparation")
    registry: RegistryParams = Field(default_factory=RegistryParams, description="artifacts registry")
    retrieval: RetrievalParams = Field(default_factory=RetrievalParams, description="similar-user retrieval (BM25 + faiss)")
    tokenizer: TokenizerParams = Field(default_factory=TokenizerParams, description="item text → embeddings → semantic IDs")
    evaluation: EvaluationParams = Field(default_factory=EvaluationParams, description="accuracy and popularity-bias metrics, baselines, report")
    rebalance: RebalanceParams = Field(default_factory=RebalanceParams, description="CRAB codebook rebalancing")
    generator: GeneratorParams = Field(default_factory=GeneratorParams, description="generator backbone, heads, training and decoding")
    serving: ServingParams = Field(default_factory=ServingParams, description="gRPC services and BentoML bundle: bounds, addresses, timeouts")
    experiment: ExperimentParams = Field(default_factory=ExperimentParams, description="every method as a variant, seeds, what dvc repro runs, the report")


class ParamsError(ValueError):
    """A params file is missing, not YAML, or has unknown / ill-typed keys."""


def _format_errors(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        lines.append(f"{source}: {path}: {e['msg']}")
    return "\n".join(lines)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ParamsError(f"--set {dotted}: {k} is not a section")
        node = nxt
    node[keys[-1]] = value


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, Any]]:
    out = []
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ParamsError(f"--set {item!r}: expected key.path=value")
        try:
            out.append((key.strip(), yaml.safe_load(raw)))
        except yaml.YAMLError as e:
            raise ParamsError(f"--set {item!r}: value is not YAML: {e}") from None
    return out


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read, override and validate; raises :class:`ParamsError` naming each bad key's path."""
    p = Path(path)
    if p.exists():
        try:
            tree = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ParamsError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(tree, dict):
            raise ParamsError(f"{p}: top level must be a mapping")
    elif str(path) == "params.yaml":
        tree = {}  # no params.yaml in the working directory: defaults
    else:
        raise ParamsError(f"{p}: params file not found")
    for key, value in parse_overrides(overrides):
        _set_path(tree, key, value)
    try:
        return Params.model_validate(tree)
    except ValidationError as e:
        raise ParamsError(_format_errors(str(p), e)) from None
