"""Columnar path of the raw Amazon loaders (amazon2018, amazon2023): reviews go from the
``json.gz`` file into polars columns in blocks, and dedup, k-core, ordering and windowing run on
columns, so memory grows with 3 columns per review instead of Python objects per review.

Contract: the datasets are identical to the reference Python path of
:func:`components.data.amazon.load_amazon2018` / :func:`components.data.amazon2023.load_amazon2023`
(same items, users, order, sequences, splits, text; same errors naming file and line). How:

- the file is decompressed in blocks of whole lines (``CHUNK_BYTES``) and each block is parsed by
  ``polars.read_ndjson`` with only the id and time columns in the schema;
- a block is taken on this fast path only when it is provably read as Python's ``json`` reads it:
  every id key occurs once per line with a JSON-string value (counted in the raw bytes, which
  also rules out duplicate keys), the time is a JSON integer, no ``\\r`` (Python's universal
  newlines), no BOM, no NUL in an id (polars' rendering of a lone surrogate). Any other block
  (malformed lines, missing fields, numbers as ids, ...) is parsed by the reference code, line by
  line, so it yields the same rows or raises the same ``DataError`` with the same line number;
- rows keep a file-order number: duplicates keep the first, ties in time keep file order, and
  users are numbered by their first surviving row, exactly as the Python lists do.

Item metadata is read by the reference code in both paths (one record per item, not per review).
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.data.dataset import PAD, DataError, Split

CHUNK_BYTES = 32 << 20  # decompressed bytes per block (whole lines)
ENGINES = ("auto", "polars", "python")
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class ReviewFormat:
    """Where a review's user, item and time are, and the reference row function."""

    user: str  # key of the user id (a JSON string)
    items: tuple[str, ...]  # keys of the item id, the first non-empty one wins (amazon2023: parent_asin, asin)
    time: str  # key of the integer timestamp
    time_div: int  # timestamp units per second (floor division)
    key: Callable[[dict], tuple[str, str, int]]  # reference: object -> (user, item, seconds), raises on bad rows
    need: str  # error text for a row ``key`` rejects


def available() -> bool:
    try:
        import polars  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_engine(engine: str | None = "auto") -> str:
    """``"polars"`` or ``"python"``: ``"auto"`` is ``$GENREC_DATA_ENGINE`` when set, else polars when
    it is installed."""
    engine = engine or "auto"
    if engine == "auto":
        engine = os.environ.get("GENREC_DATA_ENGINE", "").strip().lower() or "auto"
    if engine not in ENGINES:
        raise DataError(f"data engine {engine!r} is not one of {list(ENGINES)}")
    if engine == "auto":
        return "polars" if available() else "python"
    if engine == "polars" and not available():
        raise DataError("data engine 'polars' needs the polars package (`pip install polars`); or use engine 'python'")
    return engine


def iter_blocks(path: Path, chunk_bytes: int | None = None) -> Iterator[bytes]:
    """Decompressed blocks of whole lines (each but maybe the last ends with ``\\n``)."""
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    with ExitStack() as stack:
        try:
            f = stack.enter_context(gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb"))  # noqa: SIM115
        except FileNotFoundError:
            raise DataError(f"{path}: file not found") from None
        carry = b""
        while True:
            try:
                block = f.read(chunk_bytes)
            except (OSError, EOFError) as e:  # truncated or corrupt gzip
                raise DataError(f"{path}: cannot read ({e})") from None
            if not block:
                if carry:
                    yield carry
                return
            buf = carry + block if carry else block
            cut = buf.rfind(b"\n")
            if cut < 0:
                carry = buf
                continue
            carry = buf[cut + 1 :]
            yield buf[: cut + 1] if carry else buf


def _count_keys(block: bytes, key: str) -> tuple[int, int]:
    """(occurrences of ``"key":``, of those with a string value right after ``:`` or ``: ``)."""
    k = f'"{key}":'.encode()
    total = block.count(k)
    as_string = block.count(k + b' "')
    if as_string < total:  # compact separators (or not all strings)
        as_string += block.count(k + b'"')
    return total, as_string


def _fast_block(block: bytes, fmt: ReviewFormat):
    """The block as a ``(user, item, ts)`` frame when polars reads it exactly as the reference
    does, else ``None``."""
    import polars as pl

    if b"\r" in block or block.startswith(BOM):
        return None
    strings = (fmt.user, *fmt.items)
    schema = {c: pl.String for c in strings}
    schema[fmt.time] = pl.Int64
    try:
        df = pl.read_ndjson(io.BytesIO(block), schema=schema)
    except Exception:  # noqa: BLE001  (polars raises ComputeError and others on any bad line)
        return None
    counts = df.select(pl.all().count()).row(0, named=True)
    for c in strings:
        total, as_string = _count_keys(block, c)
        if not (total == as_string == counts[c]):
            return None
    if _count_keys(block, fmt.time)[0] != counts[fmt.time] or counts[fmt.user] != df.height or counts[fmt.time] != df.height:
        return None
    item = pl.col(fmt.items[0])
    for alt in fmt.items[1:]:
        item = pl.when(item.is_null() | (item == "")).then(pl.col(alt)).otherwise(item)
    ts = pl.col(fmt.time) if fmt.time_div == 1 else pl.col(fmt.time) // fmt.time_div
    df = df.select(pl.col(fmt.user).alias("user"), item.alias("item"), ts.alias("ts"))
    bad = df.select(
        pl.col("item").is_null().any() | pl.col("user").str.contains("\x00", literal=True).any() | pl.col("item").str.contains("\x00", literal=True).any()
    ).item()
    return None if bad else df


def _python_block(block: bytes, path: Path, first_line: int, fmt: ReviewFormat):
    """The reference parser on one block: ``(frame, lines read)``; raises its ``DataError``s."""
    import polars as pl

    from components.data.amazon import parse_json_lines

    lines = list(io.TextIOWrapper(io.BytesIO(block), encoding="utf-8"))  # universal newlines, as the reference reads
    users, items, times = [], [], []
    for lineno, obj in parse_json_lines(lines, path, start=first_line):
        try:
            u, i, t = fmt.key(obj)
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}:{lineno}: {fmt.need}") from None
        users.append(u)
        items.append(i)
        times.append(t)
    df = pl.DataFrame({"user": users, "item": items, "ts": times}, schema={"user": pl.String, "item": pl.String, "ts": pl.Int64})
    return df, len(lines)


def read_reviews(path: Path, fmt: ReviewFormat, items: set[str], t0: int | None, t1: int | None, chunk_bytes: int | None = None):
    """``(user, item, ts, row)`` frame of the reviews of ``items`` inside ``[t0, t1)``, ``row`` = file
    order (before dedup)."""
    import polars as pl

    keep = pl.Series("items", sorted(items), dtype=pl.String)
    frames = []
    line, row = 1, 0
    for block in iter_blocks(path, chunk_bytes):
        df = _fast_block(block, fmt)
        if df is None:
            df, n_lines = _python_block(block, path, line, fmt)
        else:
            n_lines = block.count(b"\n") + (not block.endswith(b"\n"))
        line += n_lines
        df = df.with_columns(row=pl.int_range(row, row + df.height, dtype=pl.Int64))
        row += df.height
        cond = pl.col("item").is_in(keep)
        if t0 is not None:
            cond &= pl.col("ts") >= t0
        if t1 is not None:
            cond &= pl.col("ts") < t1
        frames.append(df.filter(cond))
    if not frames:
        return pl.DataFrame(schema={"user": pl.String, "item": pl.String, "ts": pl.Int64, "row": pl.Int64})
    return pl.concat(frames, rechunk=True)


def k_core(df, k: int):
    """Iterative k-core of a ``(user, item, ...)`` frame: drop rows whose user or item (counted on
    the same rows) has fewer than ``k`` rows, until nothing changes."""
    import polars as pl

    if k <= 1:
        return df
    while True:
        n = df.height
        df = df.filter((pl.len().over("user") >= k) & (pl.len().over("item") >= k))
        if df.height == n:
            return df


def build(reviews, k: int, max_history: int, split_ratio, where: Path):
    """``(item_ids, user_ids, sequences, splits)`` from the frame of :func:`read_reviews`, as the
    reference loader builds them: exact duplicates dropped (first kept), iterative k-core, items
    sorted by id, users by first surviving review, sequences by (time, file order), one sample per
    position >= 1, chronological split by target time (ties: user order, then position)."""
    import polars as pl

    df = reviews.group_by(["user", "item", "ts"]).agg(pl.col("row").min())  # exact duplicates: the first stays
    del reviews
    # integer codes once, so that the k-core iterations hash integers: items numbered in sorted id
    # order (the final order), users arbitrarily (renumbered below by first surviving review)
    items = df.select(pl.col("item").unique().sort()).with_row_index("i")
    users = df.select(pl.col("user").unique()).with_row_index("u")
    df = df.join(items, on="item").join(users, on="user").select(pl.col("u").alias("user"), pl.col("i").alias("item"), "ts", "row")
    df = k_core(df, k)
    if df.height == 0:
        raise DataError(f"{where}: no interactions left after title filtering, time window and {k}-core")
    if abs(sum(split_ratio) - 1.0) > 1e-6 or min(split_ratio) < 0:
        raise DataError(f"split_ratio {split_ratio} must be non-negative and sum to 1")
    kept = np.sort(df["item"].unique().to_numpy())
    first = df.group_by("user").agg(pl.col("row").min()).sort("row")["user"].to_numpy()  # users by first surviving review
    item_ids = items["item"].gather(kept).to_list()
    user_ids = users["user"].gather(first).to_list()
    item_map = np.full(items.height, -1, dtype=np.int32)
    item_map[kept] = np.arange(len(kept), dtype=np.int32)
    user_map = np.full(users.height, -1, dtype=np.int64)
    user_map[first] = np.arange(len(first))
    del items, users
    u = user_map[df["user"].to_numpy()]
    seq = item_map[df["item"].to_numpy()]
    ts = df["ts"].to_numpy()
    order = np.lexsort((df["row"].to_numpy(), ts, u))  # each user's reviews by time, ties in file order
    del df
    u, seq, ts = u[order], seq[order], ts[order]
    del order
    n_users = len(user_ids)
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(np.bincount(u, minlength=n_users))
    pos = np.arange(len(u), dtype=np.int64) - offsets[u]
    g = np.flatnonzero(pos >= 1)  # sample = global index of its target
    g = g[np.lexsort((g, ts[g]))]  # by target time; ties by (user, position) = global index
    n = len(g)
    n_train = round(n * split_ratio[0])  # Python's round, as the reference
    n_valid = round(n * split_ratio[1])
    bounds = {"train": (0, n_train), "valid": (n_train, n_train + n_valid), "test": (n_train + n_valid, n)}
    width = max(max_history, 0)
    splits = {}
    for s, (a, b) in bounds.items():
        sel = g[a:b]
        h = np.minimum(pos[sel], width)
        hist = np.full((len(sel), width), PAD, dtype=np.int32)
        for j in range(width):
            ok = j < h
            hist[ok, j] = seq[(sel - h + j)[ok]]
        splits[s] = Split(u[sel].astype(np.int32), hist, seq[sel])
    flat, off = seq.tolist(), offsets.tolist()
    sequences = [flat[off[i] : off[i + 1]] for i in range(n_users)]
    return item_ids, user_ids, sequences, splits
