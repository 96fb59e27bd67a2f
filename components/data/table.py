"""Loader for plain tables: an interactions table and an items table (``data.format: table``).

Files, inside the raw directory (``data.path`` is copied there by ``genrec data fetch``):

- interactions: CSV (``.csv``), TSV (``.tsv``) or Parquet (``.parquet``, needs ``pyarrow``), optionally
  ``.gz`` for CSV/TSV; one row per interaction with user, item and (optional) timestamp columns
  whose names are ``data.user_col`` / ``data.item_col`` / ``data.time_col``. Timestamps are numbers
  (unix time) or ISO dates (``2018-03-01`` or ``2018-03-01T12:00:00``).
- items: CSV / TSV / JSONL (one JSON object a line) / Parquet with the ``data.item_col`` column and
  text columns (``data.text_cols``; ``[]`` = every other column). List values are joined by spaces.

Steps: rows with an empty user or item, an unparseable timestamp, a duplicate item record or an item
id absent from the items table are errors naming file and line; exact duplicate interactions
``(user, item, timestamp)`` are dropped with a warning giving their count; iterative k-core on users
and items (``data.k_core``; 1 = none), after which only items with interactions are kept (all items
when ``k_core`` is 1); each user's interactions are sorted by time (stable: file order breaks ties);
samples as the other loaders: ``split: leave-one-out`` (as recbole) or ``split: time`` (one sample per
position ≥ 1, split chronologically by target time with ``split_ratio``, as amazon2018).
"""

from __future__ import annotations

import csv
import gzip
import warnings
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from components.data.amazon import k_core, parse_json_lines, user_sequences
from components.data.dataset import DataError, Dataset, build_samples

INTERACTION_NAMES = ("interactions.csv", "interactions.csv.gz", "interactions.tsv", "interactions.tsv.gz", "interactions.parquet")
ITEM_NAMES = ("items.csv", "items.csv.gz", "items.tsv", "items.tsv.gz", "items.jsonl", "items.jsonl.gz", "items.parquet")


class DataWarning(UserWarning):
    """Rows dropped or data kept with a documented fallback; the message gives counts."""


def _kind(path: Path) -> str:
    name = path.name.lower()
    name = name.removesuffix(".gz")
    for ext in ("csv", "tsv", "jsonl", "parquet"):
        if name.endswith("." + ext):
            return ext
    if name.endswith(".json"):
        return "jsonl"
    raise DataError(f"{path}: unknown table type (expected .csv, .tsv, .jsonl or .parquet, optionally .gz)")


def _open_text(path: Path):
    try:
        if path.name.endswith(".gz"):
            return gzip.open(path, "rt", encoding="utf-8", newline="")
        return open(path, encoding="utf-8", newline="")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None


def iter_table(path: str | Path, kind: str | None = None) -> Iterator[tuple[int, dict]]:
    """``(line number, row)`` of a CSV / TSV / JSONL / Parquet table (Parquet: row number + 1, as if
    it had a header line). Malformed rows are errors naming file and line."""
    path = Path(path)
    kind = kind or _kind(path)
    if kind == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{path}: reading Parquet needs pyarrow (`pip install pyarrow`), or convert the table to CSV") from None
        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types
            raise DataError(f"{path}: cannot read Parquet ({e})") from None
        for n, row in enumerate(table.to_pylist(), start=2):
            yield n, {k: ("" if v is None else v) for k, v in row.items()}
        return
    f = _open_text(path)
    with f:
        try:
            if kind == "jsonl":
                yield from parse_json_lines(f, path)
                return
            reader = csv.reader(f, delimiter="\t" if kind == "tsv" else ",")
            try:
                header = next(reader)
            except StopIteration:
                raise DataError(f"{path}:1: empty file (expected a header line)") from None
            header = [h.strip() for h in header]
            if len(set(header)) != len(header):
                raise DataError(f"{path}:1: duplicate column names in header {header}")
            start = reader.line_num + 1
            for cols in reader:
                lineno, start = start, reader.line_num + 1
                if not cols or (len(cols) == 1 and not cols[0].strip()):
                    continue
                if len(cols) != len(header):
                    raise DataError(f"{path}:{lineno}: expected {len(header)} columns, got {len(cols)}")
                yield lineno, dict(zip(header, cols))
        except csv.Error as e:
            raise DataError(f"{path}:{getattr(reader, 'line_num', '?')}: malformed CSV ({e})") from None
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: cannot read ({e})") from None


def parse_time(value) -> float:
    """A unix timestamp (number) or an ISO date/time string → seconds; ``ValueError`` otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, datetime):
        return value.replace(tzinfo=value.tzinfo or timezone.utc).timestamp()
    s = str(value).strip()
    try:
        return float(s)
    except ValueError:
        pass
    dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def text_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(text_value(v) for v in value)
    if isinstance(value, dict):
        return " ".join(text_value(v) for v in value.values())
    return " ".join(str(value).split())


def find_table(d: Path, given: str | None, names: tuple[str, ...], what: str) -> Path:
    if given:
        p = d / given
        if not p.is_file():
            raise DataError(f"{p}: {what} file not found")
        return p
    hits = [d / n for n in names if (d / n).is_file()]
    if len(hits) != 1:
        raise DataError(f"{d}: expected one {what} file named one of {list(names)} (or set data.{what}_file), found {[h.name for h in hits]}")
    return hits[0]


def read_items(path: Path, item_col: str, text_cols: list[str]) -> tuple[list[str], list[str], dict[str, dict[str, str]], list[tuple[int, str]]]:
    """``(item ids, text fields, {id: text}, [(line, id) of items without any text]``."""
    fields: list[str] = list(text_cols)
    texts: dict[str, dict[str, str]] = {}
    lines: dict[str, int] = {}
    empty: list[tuple[int, str]] = []
    for lineno, row in iter_table(path):
        if item_col not in row:
            raise DataError(f"{path}:{lineno}: no '{item_col}' column (have {sorted(row)}); set data.item_col")
        iid = text_value(row[item_col])
        if not iid:
            raise DataError(f"{path}:{lineno}: empty item id")
        if iid in texts:
            raise DataError(f"{path}:{lineno}: duplicate item id {iid!r} (first on line {lines[iid]})")
        if text_cols:
            missing = [c for c in text_cols if c not in row]
            if missing:
                raise DataError(f"{path}:{lineno}: no text column(s) {missing} (have {sorted(row)}); set data.text_cols")
            rec = {c: text_value(row[c]) for c in text_cols}
        else:
            rec = {c: text_value(v) for c, v in row.items() if c != item_col}
            for c in rec:
                if c not in fields:
                    fields.append(c)
        if not any(rec.values()):
            empty.append((lineno, iid))
        texts[iid] = rec
        lines[iid] = lineno
    if not texts:
        raise DataError(f"{path}: no item records")
    return list(texts), fields, texts, empty


def read_interactions(path: Path, user_col: str, item_col: str, time_col: str | None) -> tuple[list[tuple[str, str, float, int]], int]:
    """``([(user, item, time, line)], n exact duplicates dropped)``."""
    rows: list[tuple[str, str, float, int]] = []
    seen: set[tuple[str, str, float]] = set()
    dups = 0
    for lineno, row in iter_table(path):
        for c in (user_col, item_col) + ((time_col,) if time_col else ()):
            if c not in row:
                raise DataError(f"{path}:{lineno}: no '{c}' column (have {sorted(row)}); set data.user_col / item_col / time_col")
        user, item = text_value(row[user_col]), text_value(row[item_col])
        if not user or not item:
            raise DataError(f"{path}:{lineno}: empty {'user' if not user else 'item'} id")
        ts = 0.0
        if time_col:
            try:
                ts = parse_time(row[time_col])
            except (ValueError, TypeError, OverflowError):
                raise DataError(f"{path}:{lineno}: column {time_col} is not a number or ISO date: {row[time_col]!r}") from None
        key = (user, item, ts)
        if key in seen:
            dups += 1
            continue
        seen.add(key)
        rows.append((user, item, ts, lineno))
    if not rows:
        raise DataError(f"{path}: no interactions")
    return rows, dups


def load_table(
    directory: str | Path,
    name: str | None = None,
    max_history: int = 20,
    k: int = 5,
    split: str = "leave-one-out",
    split_ratio: tuple[float, float, float] = (0.8, 0.1, 0.1),
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str | None = "timestamp",
    text_cols: list[str] | None = None,
    interactions_file: str | None = None,
    items_file: str | None = None,
) -> Dataset:
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"{d}: not a directory")
    inter_path = find_table(d, interactions_file, INTERACTION_NAMES, "interactions")
    item_path = find_table(d, items_file, ITEM_NAMES, "items")
    all_ids, fields, texts, empty = read_items(item_path, item_col, list(text_cols or []))
    rows, dups = read_interactions(inter_path, user_col, item_col, time_col)
    unknown = [(ln, i) for _, i, _, ln in rows if i not in texts]
    if unknown:
        where = ", ".join(f"line {ln} ({i!r})" for ln, i in unknown[:5])
        raise DataError(f"{inter_path}: {len(unknown)} interactions with an item id not in {item_path.name}: {where}")
    if dups:
        warnings.warn(f"{inter_path}: dropped {dups} exact duplicate interactions (user, item, timestamp)", DataWarning, stacklevel=2)
    if empty:
        warnings.warn(f"{item_path}: {len(empty)} items without any text (kept), e.g. line {empty[0][0]} ({empty[0][1]!r})", DataWarning, stacklevel=2)

    kept = k_core([(u, i, n) for n, (u, i, _, _) in enumerate(rows)], k) if k > 1 else [(u, i, n) for n, (u, i, _, _) in enumerate(rows)]
    if not kept:
        raise DataError(f"{inter_path}: no interactions left after the {k}-core filter")
    if len(kept) < len(rows):
        warnings.warn(f"{inter_path}: {k}-core filter dropped {len(rows) - len(kept)} of {len(rows)} interactions", DataWarning, stacklevel=2)
    used = {i for _, i, _ in kept}
    item_ids = [i for i in all_ids if i in used] if k > 1 else all_ids
    item_index = {iid: n for n, iid in enumerate(item_ids)}
    per_user: dict[str, list[tuple[float, int, int]]] = {}
    for u, i, n in kept:
        per_user.setdefault(u, []).append((rows[n][2], n, item_index[i]))
    user_ids, sequences, times = user_sequences(per_user)
    splits = build_samples(sequences, times, max_history, split, split_ratio)
    return Dataset(
        name=name or d.name,
        item_ids=item_ids,
        item_text=[texts[i] for i in item_ids],
        user_ids=user_ids,
        sequences=sequences,
        splits=splits,
        max_history=max_history,
        text_fields=fields,
        source={
            "format": "table",
            "path": str(d),
            "interactions": inter_path.name,
            "items": item_path.name,
            "k_core": k,
            "split": split,
            "duplicates_dropped": dups,
            "items_without_text": len(empty),
        },
    )
