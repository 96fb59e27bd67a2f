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


def read_inter_tsv(path: Path, item_index: dict[str, int], user_index: dict[str, int], with_lines: bool = False):
    """``(users, histories, targets)`` (plus line numbers with ``with_lines``); errors name file:line."""
    users, histories, targets, lines = [], [], [], []
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
            lines.append(lineno)
    if with_lines:
        return users, histories, targets, lines
    return users, histories, targets


def rebuild_sequences(raw_splits: dict, n_users: int, paths: dict[str, Path]) -> list[list[int]]:
    """Each user's full sequence from the sliding-window samples, read train → valid → test in
    file order: the first sample gives ``history + [target]``, every later one must continue it
    (its history is the sequence's suffix) and appends its target."""
    seqs: list[list[int] | None] = [None] * n_users
    for s in SPLITS:
        users, hist, targets, lines = raw_splits[s]
        for u, h, t, lineno in zip(users, hist, targets, lines):
            seq = seqs[u]
            if seq is None:
                seqs[u] = [*h, t]
                continue
            if h and seq[-len(h):] != h:
                raise DataError(
                    f"{paths[s]}:{lineno}: history does not continue this user's earlier samples "
                    f"(expected it to end the sequence so far); cannot rebuild the user sequence"
                )
            seq.append(t)
    return [s or [] for s in seqs]


def read_inter_json(inter_path: Path, item_index: dict[str, int]) -> dict[str, list[int]]:
    raw_seq = read_json(inter_path)
    if not isinstance(raw_seq, dict):
        raise DataError(f"{inter_path}: expected an object user -> item list")
    out = {}
    for uid, seq in raw_seq.items():
        if not isinstance(seq, list):
            raise DataError(f"{inter_path}: user {uid!r}: expected a list of item ids")
        unknown = [str(i) for i in seq if str(i) not in item_index]
        if unknown:
            raise DataError(f"{inter_path}: user {uid!r}: item ids with no item record: {unknown[:5]}")
        out[uid] = [item_index[str(i)] for i in seq]
    return out


def check_sequences(inter_path: Path, given: dict[str, list[int]], user_index: dict[str, int], rebuilt: list[list[int]], item_ids: list[str]) -> None:
    """``*.inter.json`` must agree with the sequences rebuilt from the split files; a user with
    no sample (at most one interaction) may appear in ``*.inter.json`` only."""
    for uid, u in user_index.items():
        want = rebuilt[u]
        if uid not in given:
            raise DataError(f"{inter_path}: user {uid!r} has samples in the split files but no sequence")
        got = given[uid]
        if not want and len(got) <= 1:
            continue
        if got != want:
            k = next((n for n, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            raise DataError(
                f"{inter_path}: user {uid!r} disagrees with the split files at position {k}: "
                f"inter.json has {len(got)} items {[item_ids[x] for x in got[k:k + 3]]}..., the split files give "
                f"{len(want)} items {[item_ids[x] for x in want[k:k + 3]]}..."
            )


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

    # users keep the order of *.inter.json when it is there, else their first appearance in the splits
    inter_path = d / f"{prefix}.inter.json"
    given = read_inter_json(inter_path, item_index) if inter_path.is_file() else None
    user_index: dict[str, int] = {uid: u for u, uid in enumerate(given or {})}
    splits = {}
    raw_splits = {}
    for s in SPLITS:
        raw_splits[s] = read_inter_tsv(d / f"{prefix}.{s}.inter", item_index, user_index, with_lines=True)
        users, hist, targets, _ = raw_splits[s]
        splits[s] = Split.from_lists(users, hist, targets, max_history)
    if len(splits["train"]) == 0:
        raise DataError(f"dataset {name or prefix!r} has no training samples ({prefix}.train.inter is empty)")
    sequences = rebuild_sequences(raw_splits, len(user_index), {s: d / f"{prefix}.{s}.inter" for s in SPLITS})
    if given is not None:
        check_sequences(inter_path, given, user_index, sequences, item_ids)
        sequences = [given.get(uid, sequences[u]) for uid, u in user_index.items()]
        seq_source = inter_path.name
    else:
        seq_source = "rebuilt from split files"
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
        source={"format": "minionerec", "path": str(d), "prefix": prefix, "sequences": seq_source},
    )
