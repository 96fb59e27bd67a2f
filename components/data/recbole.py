"""Loader for RecBole atomic files (``<name>.inter`` + ``<name>.item``), leave-one-out split.

Headers are typed, ``field:type`` with type in ``token, token_seq, float, float_seq``
(e.g. ``user_id:token item_id:token rating:float timestamp:float``). Each user's interactions are
sorted by timestamp (stable: file order breaks ties; file order alone when there is no
timestamp column). Leave-one-out: the last interaction is the test target, the second to last the
valid target, every earlier position ≥ 1 a training target (sliding window of ``max_history``).
Users with fewer than 3 interactions give only the samples they can (test first, then valid).
Item text comes from the ``.item`` file's token/token_seq columns; common RecBole column names are
mapped to the canonical fields ``title`` and ``categories``.
"""

from __future__ import annotations

from pathlib import Path

from components.data.dataset import DataError, Dataset, build_samples

FIELD_ALIASES = {
    "movie_title": "title",
    "title": "title",
    "item_name": "title",
    "class": "categories",
    "genre": "categories",
    "categories": "categories",
    "brand": "brand",
    "description": "description",
}
TYPES = {"token", "token_seq", "float", "float_seq"}


def read_atomic(path: Path) -> tuple[list[tuple[str, str]], list[list[str]]]:
    """Returns ``([(field, type), ...], rows)``; errors name the file and line."""
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    with f:
        first = f.readline().rstrip("\r\n")
        if not first:
            raise DataError(f"{path}:1: empty file (expected a typed header)")
        header = []
        for col in first.split("\t"):
            name, sep, typ = col.partition(":")
            if not sep or typ not in TYPES:
                raise DataError(f"{path}:1: column {col!r} is not 'name:type' with type in {sorted(TYPES)}")
            header.append((name, typ))
        rows = []
        for lineno, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) != len(header):
                raise DataError(f"{path}:{lineno}: expected {len(header)} tab-separated columns, got {len(cols)}")
            for (name, typ), v in zip(header, cols):
                if typ == "float" and v != "":
                    try:
                        float(v)
                    except ValueError:
                        raise DataError(f"{path}:{lineno}: column {name} is not a float: {v!r}") from None
            rows.append(cols)
    return header, rows


def load_recbole(directory: str | Path, name: str | None = None, max_history: int = 20) -> Dataset:
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"{d}: not a directory")
    inters = sorted(d.glob("*.inter"))
    if len(inters) != 1:
        raise DataError(f"{d}: expected exactly one '*.inter' atomic file, found {[p.name for p in inters]}")
    inter_path = inters[0]
    stem = inter_path.stem
    item_path = d / f"{stem}.item"

    header, rows = read_atomic(inter_path)
    cols = [h[0] for h in header]
    for need in ("user_id", "item_id"):
        if need not in cols:
            raise DataError(f"{inter_path}:1: no '{need}' column (have {cols})")
    if not rows:
        raise DataError(f"{inter_path}: no interactions")
    ui, ii = cols.index("user_id"), cols.index("item_id")
    ti = cols.index("timestamp") if "timestamp" in cols else None

    iheader, irows = read_atomic(item_path)
    icols = [h[0] for h in iheader]
    if "item_id" not in icols:
        raise DataError(f"{item_path}:1: no 'item_id' column (have {icols})")
    iid_col = icols.index("item_id")
    text_cols = [(k, name) for k, (name, typ) in enumerate(iheader) if typ in ("token", "token_seq") and name != "item_id"]
    fields = [FIELD_ALIASES.get(n, n) for _, n in text_cols]
    item_ids: list[str] = []
    texts: list[dict[str, str]] = []
    seen: set[str] = set()
    for lineno, r in enumerate(irows, start=2):
        iid = r[iid_col]
        if iid in seen:
            raise DataError(f"{item_path}:{lineno}: duplicate item id {iid!r}")
        seen.add(iid)
        item_ids.append(iid)
        texts.append({f: " ".join(r[k].split()) for (k, _), f in zip(text_cols, fields)})
    item_index = {iid: i for i, iid in enumerate(item_ids)}

    unknown = sorted({r[ii] for r in rows if r[ii] not in item_index})
    if unknown:
        raise DataError(f"{inter_path}: {len(unknown)} item ids with no record in {item_path.name}: {unknown[:10]}")

    per_user: dict[str, list[tuple[float, int, int]]] = {}
    for order, r in enumerate(rows):
        ts = float(r[ti]) if ti is not None and r[ti] != "" else 0.0
        per_user.setdefault(r[ui], []).append((ts, order, item_index[r[ii]]))
    user_ids = list(per_user)
    sequences = [[it for _, _, it in sorted(per_user[u])] for u in user_ids]

    splits = build_samples(sequences, [], max_history, "leave-one-out", None)
    return Dataset(
        name=name or stem,
        item_ids=item_ids,
        item_text=texts,
        user_ids=user_ids,
        sequences=sequences,
        splits=splits,
        max_history=max_history,
        text_fields=fields,
        source={"format": "recbole", "path": str(d), "split": "leave-one-out"},
    )
