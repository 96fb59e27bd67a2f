"""Typed params: defaults, the repository's params.yaml, unknown / ill-typed keys, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.params import Params, ParamsError, load_params

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_yaml_is_valid_and_commented():
    p = load_params(REPO / "params.yaml")
    assert isinstance(p, Params)
    assert p.data.dataset == "industrial"
    # every key line in params.yaml carries a comment (RecBole style)
    for n, line in enumerate((REPO / "params.yaml").read_text().splitlines(), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and ":" in stripped and not stripped.endswith(":"):
            assert "#" in line, f"params.yaml:{n}: key without a comment: {line!r}"


def test_every_model_field_has_a_description():
    def walk(model, path=""):
        for name, field in model.model_fields.items():
            assert field.description, f"{path}{name} has no description"
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, Params.__mro__[1]):
                walk(ann, f"{path}{name}.")

    walk(Params)


def test_unknown_key_names_its_path(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({"data": {"max_histroy": 5}}))
    with pytest.raises(ParamsError, match=r"data\.max_histroy: Extra inputs"):
        load_params(f)


def test_ill_typed_key_names_its_path(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({"data": {"max_history": "ten"}, "seed": [1]}))
    with pytest.raises(ParamsError) as e:
        load_params(f)
    assert "data.max_history" in str(e.value) and "seed" in str(e.value)


def test_overrides(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({"data": {"dataset": "industrial"}}))
    p = load_params(f, ["data.dataset=ml-100k", "data.max_history=30", "seed=7"])
    assert (p.data.dataset, p.data.max_history, p.seed) == ("ml-100k", 30, 7)
    with pytest.raises(ParamsError, match="expected key.path=value"):
        load_params(f, ["data.dataset"])
    with pytest.raises(ParamsError, match="data.format"):
        load_params(f, ["data.format=parquet"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ParamsError, match="mapping"):
        load_params(lst)
