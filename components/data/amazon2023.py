"""Loader for raw Amazon Reviews 2023 files (``data.format: amazon2023``), preprocessed like amazon2018.

Input: a directory with one reviews file ``<Category>.jsonl[.gz]`` (``user_id``, ``parent_asin``
(``asin`` when absent), ``timestamp`` in milliseconds) and one metadata file
``meta_<Category>.jsonl[.gz]`` (``parent_asin``, ``title``, ``description`` (list), ``store``,
``categories`` (list; ``main_category`` when empty)). Items are ``parent_asin``s, as in the
dataset's own benchmark files.

Steps, as :func:`components.data.amazon.load_amazon2018`: titles cleaned, items with no title or
one longer than ``max_title_chars`` dropped (with their reviews); reviews inside
``[start_time, end_time)``; exact duplicate ``(user, item, time)`` rows dropped; iterative k-core;
one sample per position ≥ 1; chronological ``split_ratio`` split by target time. A record without
its id fields, or a line that is not a JSON object, is an error naming file and line.
``engine`` as amazon2018: ``polars`` (columnar, default when installed) or ``python`` (reference).
"""

from __future__ import annotations

from pathlib import Path

from components.data import columnar
from components.data.amazon import load_amazon
from components.data.amazon import read_meta as read_meta_2018
from components.data.dataset import DataError, Dataset


def find_files(d: Path) -> tuple[Path, Path]:
    files = [p for p in sorted(d.iterdir()) if p.is_file() and (p.name.endswith(".jsonl") or p.name.endswith(".jsonl.gz"))]
    meta = [p for p in files if p.name.startswith("meta_")]
    reviews = [p for p in files if not p.name.startswith("meta_")]
    if len(meta) != 1 or len(reviews) != 1:
        raise DataError(f"{d}: expected one reviews file and one meta_* file (*.jsonl or *.jsonl.gz), found {[p.name for p in files]}")
    return reviews[0], meta[0]


def review_key(obj: dict) -> tuple[str, str, int]:
    """``(user, item, unix seconds)``; ``KeyError`` / ``ValueError`` / ``TypeError`` when malformed."""
    item = obj.get("parent_asin") or obj["asin"]
    return str(obj["user_id"]), str(item), int(obj["timestamp"]) // 1000


REVIEW_FIELDS = "needs user_id, parent_asin (or asin) and an integer timestamp (ms)"
AMAZON2023 = columnar.ReviewFormat(
    user="user_id", items=("parent_asin", "asin"), time="timestamp", time_div=1000, key=review_key, need=REVIEW_FIELDS
)


def read_meta(meta_path: Path, max_title_chars: int) -> dict[str, dict[str, str]]:
    """The 2018 reader with the 2023 keys: items are ``parent_asin``, the brand is ``store``."""
    return read_meta_2018(meta_path, max_title_chars, id_key="parent_asin", brand_key="store", category_keys=("categories", "main_category"))


def load_amazon2023(
    directory: str | Path,
    name: str | None = None,
    max_history: int = 10,
    k: int = 5,
    start_time: str | None = None,
    end_time: str | None = None,
    max_title_chars: int = 300,
    split_ratio: tuple[float, float, float] = (0.8, 0.1, 0.1),
    engine: str = "auto",
) -> Dataset:
    return load_amazon(directory, "amazon2023", AMAZON2023, find_files, read_meta, name, max_history, k, start_time, end_time,
                       max_title_chars, split_ratio, engine)
