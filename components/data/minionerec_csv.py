"""Loader for MiniOneRec's CSV splits (``data.format: minionerec-csv``); the given split is used exactly.

Files in the directory (found in this order for each split; ``valid`` may also be named ``eval`` or ``val``):
``<split>.csv``, ``*.<split>.csv``, or the one ``*.csv`` inside a ``<split>/`` folder (MiniOneRec's
``data/Amazon/{train,valid,test}/<Category>_….csv`` layout); plus one ``*.item.json`` anywhere below
(``{"<item id>": {"title", "description", ...}}``).

CSV columns: ``user_id, history_item_title, item_title, history_item_id, item_id, history_item_sid,
item_sid``. Only ``user_id``, ``history_item_id`` (a Python/JSON list literal such as ``[117, 118]``
or ``['I1', 'I2']``) and ``item_id`` are read; titles come from ``*.item.json`` and the semantic IDs
are recomputed by ``genrec tokenize`` (MiniOneRec's are not reused). User sequences are rebuilt from
the sliding-window samples, read train → valid → test in file order, as for the ``.inter`` files.
"""

from __future__ import annotations

import ast
from pathlib import Path

from components.data.dataset import SPLITS, DataError, Dataset, Split
from components.data.minionerec import _clean, read_json, rebuild_sequences
from components.data.table import iter_table, text_value

SPLIT_NAMES = {"train": ("train",), "valid": ("valid", "eval", "val"), "test": ("test",)}
NEEDED = ("user_id", "history_item_id", "item_id")


def find_split(d: Path, split: str) -> Path:
    for name in SPLIT_NAMES[split]:
        for hits in ([d / f"{name}.csv"], sorted(d.glob(f"*.{name}.csv")), sorted((d / name).glob("*.csv")) if (d / name).is_dir() else []):
            hits = [h for h in hits if h.is_file()]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise DataError(f"{d}: several {split} CSV files: {[h.name for h in hits]}")
    raise DataError(f"{d}: no {split} CSV ({split}.csv, *.{split}.csv or {split}/*.csv)")


def find_item_json(d: Path) -> Path:
    hits = sorted(d.rglob("*.item.json"))
    if len(hits) != 1:
        raise DataError(f"{d}: expected one '*.item.json' file below it, found {[str(h.relative_to(d)) for h in hits]}")
    return hits[0]


def parse_id_list(value) -> list[str]:
    if isinstance(value, list):
        return [text_value(v) for v in value]
    s = str(value).strip()
    if not s:
        return []
    v = ast.literal_eval(s)  # ValueError / SyntaxError on malformed input
    if not isinstance(v, (list, tuple)):
        raise ValueError("not a list")
    return [text_value(x) for x in v]


def read_split_csv(path: Path, item_index: dict[str, int], user_index: dict[str, int]):
    users, histories, targets, lines = [], [], [], []
    for lineno, row in iter_table(path, "csv"):
        missing = [c for c in NEEDED if c not in row]
        if missing:
            raise DataError(f"{path}:{lineno}: no column(s) {missing} (need {list(NEEDED)})")
        user, target = text_value(row["user_id"]), text_value(row["item_id"])
        if not user or not target:
            raise DataError(f"{path}:{lineno}: empty {'user_id' if not user else 'item_id'}")
        try:
            hist = parse_id_list(row["history_item_id"])
        except (ValueError, SyntaxError):
            raise DataError(f"{path}:{lineno}: history_item_id is not a list literal: {row['history_item_id']!r}") from None
        unknown = [i for i in [*hist, target] if i not in item_index]
        if unknown:
            raise DataError(f"{path}:{lineno}: item ids with no item record: {unknown[:5]}")
        if user not in user_index:
            user_index[user] = len(user_index)
        users.append(user_index[user])
        histories.append([item_index[i] for i in hist])
        targets.append(item_index[target])
        lines.append(lineno)
    return users, histories, targets, lines


def load_minionerec_csv(directory: str | Path, name: str | None = None, max_history: int = 10) -> Dataset:
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"{d}: not a directory")
    item_path = find_item_json(d)
    raw_items = read_json(item_path)
    if not isinstance(raw_items, dict) or not raw_items:
        raise DataError(f"{item_path}: expected a non-empty object of item records")
    item_ids = [str(i) for i in raw_items]
    fields: list[str] = []
    texts = []
    for iid, rec in raw_items.items():
        if not isinstance(rec, dict):
            raise DataError(f"{item_path}: item {iid!r} is not an object")
        fields += [k for k in rec if k not in fields]
        texts.append({k: _clean(v) for k, v in rec.items()})
    item_index = {iid: i for i, iid in enumerate(item_ids)}
    paths = {s: find_split(d, s) for s in SPLITS}
    user_index: dict[str, int] = {}
    raw_splits = {s: read_split_csv(paths[s], item_index, user_index) for s in SPLITS}
    splits = {s: Split.from_lists(*raw_splits[s][:3], max_history=max_history) for s in SPLITS}
    if len(splits["train"]) == 0:
        raise DataError(f"{paths['train']}: no training samples")
    sequences = rebuild_sequences(raw_splits, len(user_index), paths)
    return Dataset(
        name=name or item_path.name[: -len(".item.json")],
        item_ids=item_ids,
        item_text=texts,
        user_ids=list(user_index),
        sequences=sequences,
        splits=splits,
        max_history=max_history,
        text_fields=fields,
        source={"format": "minionerec-csv", "path": str(d), **{s: str(p.relative_to(d)) for s, p in paths.items()}, "items": str(item_path.relative_to(d))},
    )
