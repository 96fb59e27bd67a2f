"""Loader for a MiniOneRec data directory (the given split is used exactly).

Files (``<P>`` is the common prefix, e.g. ``Industrial_and_Scientific``):

- ``<P>.item.json``   ``{"<item id>": {"title", "description", "brand", "categories"}}``
- ``<P>.inter.json``  ``{"<user id>": [item ids in time order]}``
- ``<P>.{train,valid,test}.inter``  TSV, header ``user_id:token item_id_list:token_seq item_id:token``;
  the history is up to 10 space-separated item ids.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components.data.dataset import SPLITS, DataError, Dataset, Split


def _find(directory: Path, suffix: str) -> Path:
    hits = sorted(directory.glob(f"*{suffix}"))
    if not hits:
        raise DataError(f"{directory}: no '*{suffix}' file (expected a MiniOneRec data directory)")
    if len(hits) > 1:
        raise DataError(f"{directory}: several '*{suffix}' files: {[h.name for h in hits]}")
    return hits[0]


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg}, column {e.colno})") from None


def _clean(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        value = " ".join(_clean(v) for v in value)
    return " ".join(str(value).split())


def read_inter_tsv(path: Path, item_index: dict[str, int], user_index: dict[str, int]) -> tuple[list[int], list[list[int]], list[int]]:
    users, histories, targets = [], [], []
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    with f:
        header = f.readline().rstrip("\n").split("\t")
        want = ["user_id:token", "item_id_list:token_seq", "item_id:token"]
        if header != want:
            raise DataError(f"{path}:1: header {header} != {want}")
        for lineno, line in enumerate(f, start=2):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) != 3:
                raise DataError(f"{path}:{lineno}: expected 3 tab-separated columns, got {len(cols)}")
            user, hist, target = cols
            unknown = [i for i in [*hist.split(), target] if i not in item_index]
            if unknown:
                raise DataError(f"{path}:{lineno}: item ids with no item record: {unknown[:5]}")
            if user not in user_index:
                user_index[user] = len(user_index)
            users.append(user_index[user])
            histories.append([item_index[i] for i in hist.split()])
            targets.append(item_index[target])
    return users, histories, targets


def load_minionerec(directory: str | Path, name: str | None = None, max_history: int = 10) -> Dataset:
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"{d}: not a directory")
    item_path = _find(d, ".item.json")
    prefix = item_path.name[: -len(".item.json")]
    raw_items = read_json(item_path)
    if not isinstance(raw_items, dict) or not raw_items:
        raise DataError(f"{item_path}: expected a non-empty object of item records")
    item_ids = list(raw_items)
    fields: list[str] = []
    texts = []
    for iid in item_ids:
        rec = raw_items[iid]
        if not isinstance(rec, dict):
            raise DataError(f"{item_path}: item {iid!r} is not an object")
        for k in rec:
            if k not in fields:
                fields.append(k)
        texts.append({k: _clean(v) for k, v in rec.items()})
    item_index = {iid: i for i, iid in enumerate(item_ids)}

    inter_path = d / f"{prefix}.inter.json"
    raw_seq = read_json(inter_path)
    if not isinstance(raw_seq, dict):
        raise DataError(f"{inter_path}: expected an object user -> item list")
    user_index: dict[str, int] = {}
    sequences: list[list[int]] = []
    for uid, seq in raw_seq.items():
        if not isinstance(seq, list):
            raise DataError(f"{inter_path}: user {uid!r}: expected a list of item ids")
        unknown = [str(i) for i in seq if str(i) not in item_index]
        if unknown:
            raise DataError(f"{inter_path}: user {uid!r}: item ids with no item record: {unknown[:5]}")
        user_index[uid] = len(user_index)
        sequences.append([item_index[str(i)] for i in seq])

    splits = {}
    for s in SPLITS:
        users, hist, targets = read_inter_tsv(d / f"{prefix}.{s}.inter", item_index, user_index)
        splits[s] = Split.from_lists(users, hist, targets, max_history)
    # users that appear only in the split files get an empty full sequence
    sequences.extend([] for _ in range(len(user_index) - len(sequences)))
    user_ids = [None] * len(user_index)
    for uid, u in user_index.items():
        user_ids[u] = uid
    return Dataset(
        name=name or prefix,
        item_ids=item_ids,
        item_text=texts,
        user_ids=user_ids,
        sequences=sequences,
        splits=splits,
        max_history=max_history,
        text_fields=fields,
        source={"format": "minionerec", "path": str(d), "prefix": prefix},
    )
