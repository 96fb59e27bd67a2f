"""Loader for raw Amazon Reviews 2018 files, with the MiniOneRec preprocessing.

Input: a directory with one reviews file (``*.json.gz`` or ``*.json``, one JSON object per line
with ``reviewerID``, ``asin``, ``unixReviewTime``) and one metadata file whose name starts with
``meta_`` (``asin``, ``title``, ``description``, ``brand``, ``category``).

Steps, in order:
1. metadata: titles are cleaned (HTML tags and entities removed, whitespace collapsed); items with
   no title or a title longer than ``max_title_chars`` are dropped;
2. reviews: keep those of kept items inside ``[start_time, end_time)``; exact duplicate
   ``(user, item, time)`` rows are dropped;
3. iterative k-core on users and items (``k_core``, 5 by default) until stable;
4. each user's interactions sorted by time (ties keep file order);
5. one sample per position ≥ 1 (history = up to ``max_history`` previous items);
6. all samples sorted by their target's time and split chronologically ``split_ratio`` (8:1:1).

Two engines give identical datasets: ``polars`` (default when installed) streams the reviews in
blocks into columns and runs steps 2-6 on them (:mod:`components.data.columnar`; memory ~ a few
columns per review, for full category files), ``python`` is the reference (Python tuples per review).
"""

from __future__ import annotations

import gzip
import html
import json
import re
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from components.data import columnar
from components.data.dataset import DataError, Dataset, build_samples

TAG_RE = re.compile(r"<[^>]+>")


def parse_date(value: str | None) -> int | None:
    """``YYYY-MM`` or ``YYYY-MM-DD`` → unix seconds (UTC)."""
    if value is None:
        return None
    for fmt in ("%Y-%m-%d", "%Y-%m"):
        try:
            return int(datetime.strptime(value, fmt).replace(tzinfo=timezone.utc).timestamp())
        except ValueError:
            continue
    raise DataError(f"date {value!r} is not YYYY-MM or YYYY-MM-DD")


def _open(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")



def user_sequences(per_user: dict) -> tuple[list, list[list[int]], list[list]]:
    """``(user_ids, sequences, times)`` from ``{user: [(time, order, item index), ...]}``: each
    user's events sorted by time, ties by order (users keep their first-seen order)."""
    user_ids = list(per_user)
    sequences, times = [], []
    for u in user_ids:
        events = sorted(per_user[u])
        sequences.append([e[2] for e in events])
        times.append([e[0] for e in events])
    return user_ids, sequences, times


def parse_json_lines(lines, path: Path, start: int = 1) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` of the non-blank lines of an open text stream; line numbers count
    from ``start``. Malformed JSON or a line that is not an object is a :class:`DataError`."""
    for lineno, line in enumerate(lines, start=start):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object")
        yield lineno, obj


def iter_json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    try:
        f = _open(path)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    with f:
        try:
            yield from parse_json_lines(f, path)
        except (OSError, EOFError) as e:  # truncated or corrupt gzip
            raise DataError(f"{path}: cannot read ({e})") from None


def clean_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        value = " ".join(clean_text(v) for v in value)
    text = html.unescape(TAG_RE.sub(" ", str(value)))
    return " ".join(text.split())


def _find_files(d: Path) -> tuple[Path, Path]:
    files = [p for p in sorted(d.iterdir()) if p.is_file() and (p.name.endswith(".json.gz") or p.name.endswith(".json"))]
    meta = [p for p in files if p.name.startswith("meta_")]
    reviews = [p for p in files if not p.name.startswith("meta_")]
    if len(meta) != 1 or len(reviews) != 1:
        raise DataError(f"{d}: expected one reviews file and one meta_* file (*.json or *.json.gz), found {[p.name for p in files]}")
    return reviews[0], meta[0]


def k_core(rows: list[tuple[str, str, int]], k: int) -> list[tuple[str, str, int]]:
    while True:
        uc = Counter(u for u, _, _ in rows)
        ic = Counter(i for _, i, _ in rows)
        kept = [r for r in rows if uc[r[0]] >= k and ic[r[1]] >= k]
        if len(kept) == len(rows):
            return kept
        rows = kept


def read_meta(meta_path: Path, max_title_chars: int, id_key: str = "asin", brand_key: str = "brand",
              category_keys: tuple[str, ...] = ("category", "categories")) -> dict[str, dict[str, str]]:
    """``{item id: {title, description, brand, categories}}`` of the items with a cleaned title of
    1..``max_title_chars`` characters (a later record of the same id replaces an earlier one).
    The keys default to the 2018 dump's; Amazon 2023 passes its own (``parent_asin``, ``store``)."""
    meta: dict[str, dict[str, str]] = {}
    for lineno, obj in iter_json_lines(meta_path):
        asin = obj.get(id_key)
        if not asin:
            raise DataError(f"{meta_path}:{lineno}: record without '{id_key}'")
        title = clean_text(obj.get("title"))
        if not title or len(title) > max_title_chars:
            continue
        meta[str(asin)] = {
            "title": title,
            "description": clean_text(obj.get("description")),
            "brand": clean_text(obj.get(brand_key)),
            "categories": clean_text(next((obj[c] for c in category_keys if obj.get(c)), None)),
        }
    return meta


REVIEW_FIELDS_2018 = "needs reviewerID, asin and an integer unixReviewTime"


def review_key_2018(obj: dict) -> tuple[str, str, int]:
    """``(user, item, unix seconds)``; ``KeyError`` / ``ValueError`` / ``TypeError`` when malformed."""
    return str(obj["reviewerID"]), str(obj["asin"]), int(obj["unixReviewTime"])


AMAZON2018 = columnar.ReviewFormat(
    user="reviewerID", items=("asin",), time="unixReviewTime", time_div=1, key=review_key_2018, need=REVIEW_FIELDS_2018
)


def load_amazon2018(
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
    """``engine``: ``"polars"`` streams the reviews in blocks into columns (no Python object per
    review; see :mod:`components.data.columnar`), ``"python"`` is the reference implementation
    (:func:`reference_sequences`); ``"auto"`` (default) = polars when installed (``GENREC_DATA_ENGINE``
    overrides). Both give identical datasets."""
    return load_amazon(directory, "amazon2018", AMAZON2018, _find_files, read_meta, name, max_history, k, start_time, end_time,
                       max_title_chars, split_ratio, engine)


def load_amazon(directory, fmt: str, review_format: columnar.ReviewFormat, find_files, read_meta_fn, name, max_history: int, k: int,
                start_time, end_time, max_title_chars: int, split_ratio, engine: str) -> Dataset:
    """Steps 1-6 of the module docstring, shared by the 2018 and 2023 loaders, which differ only in
    ``find_files`` (directory -> reviews, meta paths), ``read_meta_fn`` and the review keys."""
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"{d}: not a directory")
    if abs(sum(split_ratio) - 1.0) > 1e-6 or min(split_ratio) < 0:
        raise DataError(f"split_ratio {split_ratio} must be non-negative and sum to 1")
    engine = columnar.resolve_engine(engine)
    reviews_path, meta_path = find_files(d)
    t0, t1 = parse_date(start_time), parse_date(end_time)
    meta = read_meta_fn(meta_path, max_title_chars)
    source = {"format": fmt, "path": str(d), "k_core": k, "start_time": start_time, "end_time": end_time}
    if engine == "polars":
        built = columnar.build(columnar.read_reviews(reviews_path, review_format, set(meta), t0, t1), k, max_history, split_ratio, d)
    else:
        item_ids, user_ids, sequences, times = reference_sequences(reviews_path, review_format.key, review_format.need, meta, t0, t1, k, d)
        built = (item_ids, user_ids, sequences, build_samples(sequences, times, max_history, "time", split_ratio))
    return amazon_dataset(name or reviews_path.name.split(".")[0], meta, built, max_history, source)


def reference_sequences(reviews_path: Path, key_fn, need: str, meta: dict, t0, t1, k: int, d: Path):
    """The reference reader (one Python tuple per review) shared by the 2018 and 2023 loaders:
    reviews of items with metadata inside [t0, t1), exact duplicates dropped, iterative k-core;
    returns ``(item_ids, user_ids, sequences, times)``."""
    rows: list[tuple[str, str, int]] = []
    seen: set[tuple[str, str, int]] = set()
    for lineno, obj in iter_json_lines(reviews_path):
        try:
            key = key_fn(obj)
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{reviews_path}:{lineno}: {need}") from None
        _, item, ts = key
        if item not in meta or (t0 is not None and ts < t0) or (t1 is not None and ts >= t1) or key in seen:
            continue
        seen.add(key)
        rows.append(key)
    rows = k_core(rows, k)
    if not rows:
        raise DataError(f"{d}: no interactions left after title filtering, time window and {k}-core")
    item_ids = sorted({i for _, i, _ in rows})
    item_index = {iid: n for n, iid in enumerate(item_ids)}
    per_user: dict[str, list[tuple[int, int, int]]] = {}
    for order, (u, i, ts) in enumerate(rows):
        per_user.setdefault(u, []).append((ts, order, item_index[i]))
    user_ids, sequences, times = user_sequences(per_user)
    return item_ids, user_ids, sequences, times


def amazon_dataset(name: str, meta: dict, built: tuple, max_history: int, source: dict) -> Dataset:
    """The ``Dataset`` of an Amazon loader from ``(item_ids, user_ids, sequences, splits)``."""
    item_ids, user_ids, sequences, splits = built
    return Dataset(name=name, item_ids=item_ids, item_text=[meta[i] for i in item_ids], user_ids=user_ids, sequences=sequences,
                   splits=splits, max_history=max_history, text_fields=["title", "description", "brand", "categories"], source=source)
