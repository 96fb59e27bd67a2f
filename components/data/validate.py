"""``genrec data validate PATH``: detect a raw data directory's format and list every problem.

Checks (each problem names its file and, where it has one, its line):

- errors: unreadable or malformed rows, ids in interactions but not in items, MiniOneRec split
  samples that do not continue the user's sequence or disagree with ``*.inter.json``;
- warnings: duplicate interactions, items without text, users below the k-core threshold,
  timestamps out of order within a user (loaders sort them; file order breaks ties).

``genrec prepare`` runs the same check on ``data/raw/<dataset>``: errors stop it, warnings are printed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.data.dataset import SPLITS, DataError
from components.data.table import INTERACTION_NAMES, ITEM_NAMES, find_table, iter_table, parse_time, text_value


@dataclass
class Problem:
    level: str  # "error" | "warning"
    kind: str  # malformed | unknown-item | duplicate | no-text | below-k-core | time-order | sequence
    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.level}: {self.message}"


@dataclass
class Report:
    path: str
    format: str
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "warning"]

    def add(self, level: str, kind: str, file, line: int | None, message: str) -> None:
        self.problems.append(Problem(level, kind, str(file), line, message))

    def summary(self) -> str:
        kinds = Counter(f"{p.level} {p.kind}" for p in self.problems)
        return ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "no problems"

    def text(self, limit: int | None = None) -> str:
        lines = [f"{self.path}: format {self.format}", "  " + ", ".join(f"{k} {v:,}" for k, v in self.counts.items())]
        shown = self.problems if limit is None else self.errors[:limit] + self.warnings[:limit]
        lines += [str(p) for p in shown]
        if len(shown) < len(self.problems):
            lines.append(f"... {len(self.problems) - len(shown)} more (run `genrec data validate` for all)")
        lines.append(f"{len(self.errors)} errors, {len(self.warnings)} warnings: {self.summary()}")
        return "\n".join(lines)


def detect_format(d: Path) -> str:
    names = [p.name for p in d.iterdir() if p.is_file()]
    if any(d.rglob("*.item.json")) and not any(n.endswith(".train.inter") for n in names):
        from components.data.minionerec_csv import find_split

        try:
            find_split(d, "train")
            return "minionerec-csv"
        except DataError:
            pass
    if any(n.endswith(".item.json") for n in names):
        return "minionerec"
    if any(n.startswith("meta_") and n.endswith((".json", ".json.gz")) for n in names):
        return "amazon2018"
    if any(n.startswith("meta_") and n.endswith((".jsonl", ".jsonl.gz")) for n in names):
        return "amazon2023"
    if any(n.endswith(".inter") and n.count(".") == 1 for n in names) and any(n.endswith(".item") for n in names):
        return "recbole"
    if any(n in INTERACTION_NAMES for n in names):
        return "table"
    raise DataError(f"{d}: cannot detect the data format (no *.item.json, meta_*.json[.gz], *.inter + *.item, or interactions.csv); set data.format")


def validate(path: str | Path, data_params: Any = None) -> Report:
    """Check the raw data at ``path`` (a directory); ``data_params`` (``data:`` params) gives the
    format when not ``auto``, the k-core threshold and the table column names."""
    d = Path(path)
    if not d.is_dir():
        raise DataError(f"{d}: not a directory")
    fmt = getattr(data_params, "format", "auto") or "auto"
    if fmt == "auto":
        fmt = detect_format(d)
    k = getattr(data_params, "k_core", 5)
    report = Report(str(d), fmt)
    if fmt == "minionerec":
        _minionerec(d, k, report)
    elif fmt == "table":
        _table(d, k, data_params, report)
    elif fmt == "recbole":
        _recbole(d, k, report)
    elif fmt == "minionerec-csv":
        _minionerec_csv(d, k, report)
    elif fmt in ("amazon2018", "amazon2023"):
        _amazon(d, k, report, fmt)
    else:
        raise DataError(f"unknown data.format {fmt!r}")
    return report


# ---- shared interaction checks ----------------------------------------------------------------
def check_interactions(report: Report, file, rows: list[tuple[int, str, str, float | None]], items: set[str] | None, k: int, item_file: str = "items") -> None:
    """``rows``: ``(line, user, item, timestamp or None)`` in file order."""
    seen: dict[tuple, int] = {}
    last: dict[str, tuple[float, int]] = {}
    first_line: dict[str, int] = {}
    per_user: Counter = Counter()
    late: dict[str, list] = {}  # user -> [count, first line, earlier line, its time, the later time]
    for line, user, item, ts in rows:
        if items is not None and item not in items:
            report.add("error", "unknown-item", file, line, f"item id {item!r} is not in {item_file}")
        key = (user, item, ts)
        if key in seen:
            report.add("warning", "duplicate", file, line, f"duplicate interaction (user {user!r}, item {item!r}, time {ts}), first on line {seen[key]}")
        else:
            seen[key] = line
        if ts is not None:
            if user in last and ts < last[user][0]:
                if user not in late:
                    late[user] = [0, line, last[user][1], ts, last[user][0]]
                late[user][0] += 1
            else:
                last[user] = (ts, line)
        per_user[user] += 1
        first_line.setdefault(user, line)
    for user, (n, line, prev, ts, prev_ts) in late.items():
        report.add("warning", "time-order", file, line, f"user {user!r}: {n} interactions out of time order, first here ({ts:.0f} < {prev_ts:.0f} on line {prev})")
    for user, n in per_user.items():
        if n < k:
            report.add("warning", "below-k-core", file, first_line[user], f"user {user!r} has {n} interactions, below k_core {k}")
    report.counts.update({"users": len(per_user), "interactions": len(rows)})


def _items(report: Report, path: Path, item_col: str, text_cols: list[str] | None, kind: str | None = None) -> set[str] | None:
    ids: dict[str, int] = {}
    try:
        for line, row in iter_table(path, kind):
            iid = text_value(row.get(item_col))
            if not iid:
                report.add("error", "malformed", path, line, f"no item id (column {item_col!r})")
                continue
            if iid in ids:
                report.add("error", "duplicate", path, line, f"duplicate item id {iid!r}, first on line {ids[iid]}")
                continue
            ids[iid] = line
            cols = text_cols or [c for c in row if c != item_col]
            if not any(text_value(row.get(c)) for c in cols):
                report.add("warning", "no-text", path, line, f"item {iid!r} has no text in {cols}")
    except DataError as e:
        report.add("error", "malformed", path, None, str(e))
        return None
    report.counts["items"] = len(ids)
    return set(ids)


# ---- formats -----------------------------------------------------------------------------------
def _table(d: Path, k: int, p: Any, report: Report) -> None:
    user_col = getattr(p, "user_col", "user_id")
    item_col = getattr(p, "item_col", "item_id")
    time_col = getattr(p, "time_col", "timestamp")
    try:
        inter_path = find_table(d, getattr(p, "interactions_file", None), INTERACTION_NAMES, "interactions")
        item_path = find_table(d, getattr(p, "items_file", None), ITEM_NAMES, "items")
    except DataError as e:
        report.add("error", "malformed", d, None, str(e))
        return
    items = _items(report, item_path, item_col, list(getattr(p, "text_cols", []) or []))
    rows = []
    try:
        for line, row in iter_table(inter_path):
            user, item = text_value(row.get(user_col)), text_value(row.get(item_col))
            if not user or not item:
                report.add("error", "malformed", inter_path, line, f"empty or missing {user_col if not user else item_col}")
                continue
            ts = None
            if time_col:
                try:
                    ts = parse_time(row.get(time_col))
                except (ValueError, TypeError, OverflowError):
                    report.add("error", "malformed", inter_path, line, f"column {time_col} is not a number or ISO date: {row.get(time_col)!r}")
                    continue
            rows.append((line, user, item, ts))
    except DataError as e:
        report.add("error", "malformed", inter_path, None, str(e))
    check_interactions(report, inter_path, rows, items, k, item_path.name)


def _recbole(d: Path, k: int, report: Report) -> None:
    inters = [p for p in sorted(d.glob("*.inter")) if p.name.count(".") == 1]
    inter_path = inters[0]
    item_path = d / f"{inter_path.stem}.item"

    def typed(path: Path):  # atomic files: TSV whose header is name:type
        for line, row in iter_table(path, "tsv"):
            yield line, {c.partition(":")[0]: v for c, v in row.items()}

    items: set[str] | None = None
    ids: dict[str, int] = {}
    try:
        for line, row in typed(item_path):
            iid = row.get("item_id", "")
            if iid in ids:
                report.add("error", "duplicate", item_path, line, f"duplicate item id {iid!r}, first on line {ids[iid]}")
                continue
            ids[iid] = line
            if not any(v.strip() for c, v in row.items() if c != "item_id"):
                report.add("warning", "no-text", item_path, line, f"item {iid!r} has no text")
        items = set(ids)
        report.counts["items"] = len(ids)
    except DataError as e:
        report.add("error", "malformed", item_path, None, str(e))
    rows = []
    try:
        for line, row in typed(inter_path):
            ts = None
            if "timestamp" in row:
                try:
                    ts = float(row["timestamp"])
                except ValueError:
                    report.add("error", "malformed", inter_path, line, f"timestamp is not a number: {row['timestamp']!r}")
                    continue
            rows.append((line, row.get("user_id", ""), row.get("item_id", ""), ts))
    except DataError as e:
        report.add("error", "malformed", inter_path, None, str(e))
    check_interactions(report, inter_path, rows, items, k, item_path.name)


def _amazon(d: Path, k: int, report: Report, fmt: str = "amazon2018") -> None:
    from components.data.amazon import _find_files, clean_text, iter_json_lines
    from components.data.amazon2023 import find_files, review_key

    id_key = "asin" if fmt == "amazon2018" else "parent_asin"
    need = "reviewerID, asin and an integer unixReviewTime" if fmt == "amazon2018" else "user_id, parent_asin (or asin) and an integer timestamp (ms)"

    def key(obj):
        if fmt == "amazon2018":
            return str(obj["reviewerID"]), str(obj["asin"]), int(obj["unixReviewTime"])
        return review_key(obj)

    try:
        reviews, meta = _find_files(d) if fmt == "amazon2018" else find_files(d)
    except DataError as e:
        report.add("error", "malformed", d, None, str(e))
        return
    items: set[str] | None = set()
    try:
        for line, obj in iter_json_lines(meta):
            if not obj.get(id_key):
                report.add("error", "malformed", meta, line, f"record without '{id_key}'")
                continue
            items.add(str(obj[id_key]))
            if not clean_text(obj.get("title")):
                report.add("warning", "no-text", meta, line, f"item {obj[id_key]!r} has no title (dropped by the loader)")
        report.counts["items"] = len(items)
    except DataError as e:
        report.add("error", "malformed", meta, None, str(e))
        items = None
    rows = []
    try:
        for line, obj in iter_json_lines(reviews):
            try:
                u, i, ts = key(obj)
                rows.append((line, u, i, float(ts)))
            except (KeyError, TypeError, ValueError):
                report.add("error", "malformed", reviews, line, f"needs {need}")
    except DataError as e:
        report.add("error", "malformed", reviews, None, str(e))
    # reviews of items without metadata are dropped by the loader (documented): a warning here
    n_before = len(report.problems)
    check_interactions(report, reviews, rows, items, k, meta.name)
    for p in report.problems[n_before:]:
        if p.kind == "unknown-item":
            p.level = "warning"
            p.message += " (review dropped by the loader)"


def _minionerec(d: Path, k: int, report: Report) -> None:
    from components.data.minionerec import _find, read_json

    try:
        item_path = _find(d, ".item.json")
        raw_items = read_json(item_path)
    except DataError as e:
        report.add("error", "malformed", d, None, str(e))
        return
    if not isinstance(raw_items, dict):
        report.add("error", "malformed", item_path, None, "expected an object of item records")
        return
    prefix = item_path.name[: -len(".item.json")]
    for iid, rec in raw_items.items():
        if not isinstance(rec, dict):
            report.add("error", "malformed", item_path, None, f"item {iid!r} is not an object")
        elif not any(text_value(v) for v in rec.values()):
            report.add("warning", "no-text", item_path, None, f"item {iid!r} has no text")
    report.counts["items"] = len(raw_items)
    seqs: dict[str, list[str]] = {}
    first_line: dict[str, tuple[Path, int]] = {}
    n_samples = {}
    for s in SPLITS:
        path = d / f"{prefix}.{s}.inter"
        if not path.is_file():
            report.add("error", "malformed", path, None, "file not found")
            continue
        seen: dict[tuple, int] = {}
        n = 0
        with open(path, encoding="utf-8") as f:
            header = f.readline().rstrip("\n").split("\t")
            if header != ["user_id:token", "item_id_list:token_seq", "item_id:token"]:
                report.add("error", "malformed", path, 1, f"header {header} is not user_id:token, item_id_list:token_seq, item_id:token")
                continue
            for line, text in enumerate(f, start=2):
                text = text.rstrip("\n")
                if not text.strip():
                    continue
                cols = text.split("\t")
                if len(cols) != 3:
                    report.add("error", "malformed", path, line, f"expected 3 tab-separated columns, got {len(cols)}")
                    continue
                user, hist, target = cols[0], cols[1].split(), cols[2]
                n += 1
                bad = [i for i in [*hist, target] if i not in raw_items]
                if bad:
                    report.add("error", "unknown-item", path, line, f"item ids not in {item_path.name}: {bad[:5]}")
                key = (user, tuple(hist), target)
                if key in seen:
                    report.add("warning", "duplicate", path, line, f"duplicate sample, first on line {seen[key]}")
                seen.setdefault(key, line)
                seq = seqs.get(user)
                if seq is None:
                    seqs[user] = [*hist, target]
                    first_line[user] = (path, line)
                    continue
                if hist and seq[-len(hist):] != hist:
                    report.add("error", "sequence", path, line, f"user {user!r}: history does not continue the user's earlier samples")
                seq.append(target)
        n_samples[s] = n
    for user, seq in seqs.items():
        if len(seq) < k:
            report.add("warning", "below-k-core", first_line[user][0], first_line[user][1], f"user {user!r} has {len(seq)} interactions, below k_core {k}")
    inter_path = d / f"{prefix}.inter.json"
    if inter_path.is_file():
        try:
            given = read_json(inter_path)
        except DataError as e:
            report.add("error", "malformed", inter_path, None, str(e))
            given = None
        if isinstance(given, dict):
            for user, seq in seqs.items():
                got = [str(i) for i in given.get(user, [])] if isinstance(given.get(user), list) else None
                if got != seq:
                    report.add("error", "sequence", inter_path, None, f"user {user!r}: sequence disagrees with the split files ({first_line[user][0].name}:{first_line[user][1]} onwards)")
    else:
        report.add("warning", "sequence", d, None, f"no {prefix}.inter.json: user sequences are rebuilt from the split files")
    report.counts.update({"users": len(seqs), "interactions": sum(len(s) for s in seqs.values()), **{f"{s} samples": n for s, n in n_samples.items()}})


def _minionerec_csv(d: Path, k: int, report: Report) -> None:
    """The loader's checks (its first error, with file and line), then k-core and text warnings."""
    from components.data.minionerec_csv import load_minionerec_csv

    try:
        ds = load_minionerec_csv(d)
    except DataError as e:
        msg = str(e)
        report.add("error", "sequence" if "does not continue" in msg else "malformed", d, None, msg)
        return
    for iid, text in zip(ds.item_ids, ds.item_text):
        if not any(text.values()):
            report.add("warning", "no-text", ds.source["items"], None, f"item {iid!r} has no text")
    for uid, seq in zip(ds.user_ids, ds.sequences):
        if len(seq) < k:
            report.add("warning", "below-k-core", d, None, f"user {uid!r} has {len(seq)} interactions, below k_core {k}")
    report.counts.update({"items": ds.n_items, "users": ds.n_users, "interactions": ds.n_interactions,
                          **{f"{s} samples": len(ds.splits[s]) for s in SPLITS}})
