"""Shared fixtures: the real datasets from ../shared/data and a throw-away registry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GENREC_DATA_MIRROR", REPO.parent / "shared" / "data"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"shared data missing: {path} (set GENREC_DATA_MIRROR to the shared data directory)")
    return path


@pytest.fixture(scope="session")
def industrial_dir() -> Path:
    return _need(SHARED_DATA / "Industrial_and_Scientific")


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    return _need(SHARED_DATA / "ml-100k")


@pytest.fixture(scope="session")
def industrial(industrial_dir):
    from components.data import load_minionerec

    return load_minionerec(industrial_dir, name="industrial", max_history=10)


@pytest.fixture(scope="session")
def ml100k(ml100k_dir):
    from components.data import load_recbole

    return load_recbole(ml100k_dir, name="ml-100k", max_history=20)


@pytest.fixture
def registry(tmp_path):
    from components.registry import Registry

    return Registry(tmp_path / "artifacts")
