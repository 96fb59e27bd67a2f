"""The columnar (polars) path of the raw Amazon loaders gives exactly the reference Python datasets.

A small synthetic raw category with the edge cases the preprocessing has rules for (duplicate
reviews, reviews on the time bounds, users and items that fail the k-core only in a later
iteration, ties in time, titles over / at the length limit, missing meta fields, reviews of items
without metadata, odd-but-valid JSON that the fast block reader must hand to the reference parser),
loaded by both engines and compared field by field; plus a k-core small enough to check by hand.
"""

from __future__ import annotations

import gzip
import json
import random

import numpy as np
import pytest

pytest.importorskip("polars")

from components.data import DataError, Dataset, columnar, load_amazon2018, load_amazon2023
from components.data.amazon import parse_date

DAY = 86_400
T0 = parse_date("2017-01")  # start_time used below
T1 = parse_date("2017-03")  # end_time used below


def assert_same(a: Dataset, b: Dataset) -> None:
    assert a.name == b.name and a.max_history == b.max_history and a.text_fields == b.text_fields and a.source == b.source
    assert a.item_ids == b.item_ids
    assert a.item_text == b.item_text
    assert a.user_ids == b.user_ids
    assert a.sequences == b.sequences
    for s in ("train", "valid", "test"):
        x, y = a.splits[s], b.splits[s]
        for f in ("user", "history", "target"):
            assert getattr(x, f).dtype == getattr(y, f).dtype and getattr(x, f).shape == getattr(y, f).shape, (s, f)
            np.testing.assert_array_equal(getattr(x, f), getattr(y, f), err_msg=f"{s}.{f}")


def _write(path, lines: list[str], newline: str = "\n") -> None:
    data = "".join(line + newline for line in lines)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8", newline="") as f:
            f.write(data)
    else:
        path.write_text(data, encoding="utf-8", newline="")


def _read(path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def synthetic_2018(d, seed: int = 0, n_users: int = 60, n_items: int = 25, gz: bool = True, odd: bool = True, newline: str = "\n"):
    """A raw amazon2018 category; returns the directory."""
    rng = random.Random(seed)
    d.mkdir(parents=True, exist_ok=True)
    meta = []
    for i in range(n_items):
        m = {"asin": f"B{i:03d}", "title": f"<i>Thing</i> {i} &amp; more", "description": ["<p>desc</p>", f"n{i}"], "brand": f"Br{i % 3}",
             "category": ["Tools", f"C{i % 4}"], "also_buy": ["B000"], "price": "$1.00"}
        if i % 7 == 1:
            del m["description"], m["brand"]  # missing fields -> ""
        if i % 7 == 2:
            m["categories"] = m.pop("category")  # the other spelling
        if i == 3:
            m["title"] = "x" * 301  # over max_title_chars: dropped with its reviews
        if i == 4:
            m["title"] = "y" * 300  # at the limit: kept
        if i == 5:
            m["title"] = "  <b> </b> "  # empty after cleaning: dropped
        meta.append(m)
    meta.append({"asin": "B006", "title": "Thing 6, second record"})  # a later record replaces the first
    meta.append({"asin": "B007", "title": ""})  # a later record without title does not
    meta.append({"asin": "B999", "title": "never reviewed"})
    reviews = []
    for u in range(n_users):
        n = rng.choice([1, 2, 3, 3, 4, 5, 6, 8, 12])
        for _ in range(n):
            item = min(int(rng.paretovariate(1.2)) - 1, n_items + 2)  # B025..B027 have no metadata
            ts = T0 - 3 * DAY + DAY * rng.randrange(0, 65)  # some before T0, some at or after T1; many ties
            reviews.append({"reviewerID": f"U{u:03d}", "asin": f"B{item:03d}", "unixReviewTime": ts, "overall": 4.0, "reviewText": "good"})
    # exact duplicates (kept once) and a same-pair review at another time (kept)
    reviews += [dict(reviews[3]), dict(reviews[10]), dict(reviews[10], unixReviewTime=reviews[10]["unixReviewTime"] + DAY)]
    # exactly on the bounds: T0 kept, T1 dropped
    reviews += [{"reviewerID": f"U{u:03d}", "asin": "B000", "unixReviewTime": t} for u in (1, 2) for t in (T0, T1)]
    # a chain that the k-core removes only in later iterations (k = 3): item B020 has 3 reviewers,
    # one of them (X2) has only 2 reviews -> X2 goes in iteration 1, B020 in 2, X0/X1 (3 -> 2) in 3
    for x in range(3):
        reviews.append({"reviewerID": f"X{x}", "asin": "B020", "unixReviewTime": T0 + DAY})
    for x in range(2):
        reviews += [{"reviewerID": f"X{x}", "asin": f"B00{j}", "unixReviewTime": T0 + 2 * DAY} for j in (0, 1)]
    reviews.append({"reviewerID": "X2", "asin": "B000", "unixReviewTime": T0 + 2 * DAY})
    rng.shuffle(reviews)
    lines = [json.dumps(r) for r in reviews]
    if odd:  # valid JSON that only the reference parser reads exactly: those blocks go to it
        lines.insert(5, "")  # blank line
        lines.insert(9, json.dumps({"reviewerID": 12345, "asin": "B000", "unixReviewTime": T0 + 5 * DAY}))  # number id -> "12345"
        lines.insert(15, json.dumps({"reviewerID": None, "asin": "B001", "unixReviewTime": T0 + 5 * DAY}))  # null id -> "None"
        lines.insert(20, f'{{"reviewerID": "U001", "reviewerID": "U002", "asin": "B002", "unixReviewTime": {T0 + 6 * DAY}}}')  # last key wins
        lines.insert(25, json.dumps({"reviewerID": "U003", "asin": "B002", "unixReviewTime": float(T0 + 7 * DAY)}))  # float time
        lines.insert(30, json.dumps({"reviewerID": "U004", "asin": "B002", "unixReviewTime": T0 + 7 * DAY}, separators=(",", ":")))  # compact
        lines.insert(35, json.dumps({"reviewerID": "U\u00e9\u4e2d", "asin": "B002", "unixReviewTime": T0 + 8 * DAY}, ensure_ascii=False))
    _write(d / ("Toy.json.gz" if gz else "Toy.json"), lines, newline)
    _write(d / "meta_Toy.json.gz", [json.dumps(m) for m in meta])
    return d


def both(d, monkeypatch, chunk: int = 700, **kw):
    monkeypatch.setattr(columnar, "CHUNK_BYTES", chunk)  # many blocks, fast and reference ones mixed
    return load_amazon2018(d, engine="python", **kw), load_amazon2018(d, engine="polars", **kw)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"k": 3, "max_history": 3},
        {"k": 3, "start_time": "2017-01", "end_time": "2017-03", "max_history": 2},
        {"k": 1, "max_history": 0, "split_ratio": (0.5, 0.25, 0.25)},
        {"k": 2, "max_title_chars": 20, "split_ratio": (0.7, 0.2, 0.1)},
    ],
)
def test_amazon2018_engines_identical(tmp_path, monkeypatch, kw):
    d = synthetic_2018(tmp_path / "raw")
    kw.setdefault("k", 2)
    ref, col = both(d, monkeypatch, **kw)
    assert ref.n_interactions > 20 and len(ref.splits["test"]) > 0
    assert_same(ref, col)


def test_fixture_exercises_the_edge_cases(tmp_path, monkeypatch):
    """The synthetic file really contains what the parity test relies on."""
    d = synthetic_2018(tmp_path / "raw")
    calls = []
    real = columnar._python_block
    monkeypatch.setattr(columnar, "_python_block", lambda *a: calls.append(1) or real(*a))
    ref, col = both(d, monkeypatch, k=3, start_time="2017-01", end_time="2017-03")
    assert_same(ref, col)
    n_blocks = sum(1 for _ in columnar.iter_blocks(d / "Toy.json.gz", 700))
    assert 0 < len(calls) < n_blocks  # both block readers used
    assert "B003" not in ref.item_ids and "B005" not in ref.item_ids and "B020" not in ref.item_ids
    assert not {"X0", "X1", "X2"} & set(ref.user_ids)
    wide = load_amazon2018(d, engine="python", k=1)
    assert {"12345", "None", "U002", "U\u00e9\u4e2d"} <= set(wide.user_ids) and "B004" in wide.item_ids
    assert wide.item_text[wide.item_ids.index("B006")]["title"] == "Thing 6, second record"
    assert wide.item_text[wide.item_ids.index("B001")] == {"title": "Thing 1 & more", "description": "", "brand": "", "categories": "Tools C1"}
    assert_same(wide, load_amazon2018(d, engine="polars", k=1))
    # ties in time within a user exist, so file order matters
    times = {}
    for line in _read(d / "Toy.json.gz"):
        if line.strip():
            r = json.loads(line)
            times.setdefault((str(r["reviewerID"]), r["unixReviewTime"]), set()).add(r["asin"])
    assert any(len(v) > 1 for v in times.values())


@pytest.mark.parametrize("variant", ["plain-json", "crlf", "no-odd-lines"])
def test_amazon2018_engines_identical_variants(tmp_path, monkeypatch, variant):
    d = synthetic_2018(tmp_path / "raw", seed=3, gz=variant != "plain-json", odd=variant != "no-odd-lines", newline="\r\n" if variant == "crlf" else "\n")
    for chunk in (300, 1 << 20):
        assert_same(*both(d, monkeypatch, chunk=chunk, k=2, max_history=4))


def test_many_seeds_default_block_size(tmp_path):
    for seed in range(4):
        d = synthetic_2018(tmp_path / f"s{seed}", seed=seed, n_users=200, n_items=40)
        assert_same(load_amazon2018(d, engine="python", k=3), load_amazon2018(d, engine="polars", k=3))


def _hand(d):
    """k = 2, by hand:
    iteration 1: U4 (1 review) fails -> (U4, C) dropped; every item still has >= 2 reviews;
    iteration 2: C now has 1 review (U3) -> (U3, C) dropped;
    iteration 3: U3 now has 1 review -> (U3, A) dropped; A has 2 (U1, U2): stable.
    Left: U1, U2 x A, B. U1 reviews B and A at the same time, B first in the file -> [B, A].
    (U2, A) is in the file twice (one kept); (U2, B) at end_time is outside [start, end)."""
    d.mkdir(parents=True, exist_ok=True)
    t = parse_date("2018-01-10")
    rows = [("U1", "B", t), ("U1", "A", t), ("U2", "A", t + DAY), ("U3", "A", t + 2 * DAY), ("U2", "B", t - DAY),
            ("U3", "C", t + 3 * DAY), ("U2", "A", t + DAY), ("U4", "C", t + 4 * DAY), ("U2", "B", parse_date("2018-02")),
            ("U1", "A", parse_date("2018-01") - 1)]
    _write(d / "H.json.gz", [json.dumps({"reviewerID": u, "asin": i, "unixReviewTime": ts}) for u, i, ts in rows])
    _write(d / "meta_H.json.gz", [json.dumps({"asin": a, "title": f"item {a}"}) for a in "ABC"])
    return d


@pytest.mark.parametrize("engine", ["python", "polars"])
def test_k_core_by_hand(tmp_path, monkeypatch, engine):
    monkeypatch.setattr(columnar, "CHUNK_BYTES", 150)
    ds = load_amazon2018(_hand(tmp_path / "h"), engine=engine, k=2, start_time="2018-01", end_time="2018-02", max_history=2,
                         split_ratio=(0.5, 0.5, 0.0))
    assert ds.item_ids == ["A", "B"]
    assert ds.user_ids == ["U1", "U2"]  # first surviving review in file order
    assert ds.sequences == [[1, 0], [1, 0]]  # U1: B, A (tie: file order); U2: B (t-1d), A (t+1d)
    # samples by target time: U1's A at t, U2's A at t+1d -> one train, one valid
    assert ds.splits["train"].user.tolist() == [0] and ds.splits["train"].history.tolist() == [[1, -1]]
    assert ds.splits["valid"].user.tolist() == [1] and ds.splits["valid"].target.tolist() == [0]
    assert len(ds.splits["test"]) == 0


def test_errors_identical(tmp_path, monkeypatch):
    monkeypatch.setattr(columnar, "CHUNK_BYTES", 400)
    d = synthetic_2018(tmp_path / "raw", odd=False)
    lines = _read(d / "Toy.json.gz")
    for bad, pattern in [("{broken", r"Toy\.json\.gz:41: malformed JSON"), ("[1, 2]", r"Toy\.json\.gz:41: expected a JSON object"),
                         (json.dumps({"asin": "B000", "unixReviewTime": 1}), r"Toy\.json\.gz:41: needs reviewerID"),
                         (json.dumps({"reviewerID": "u", "asin": "B000", "unixReviewTime": "soon"}), r"Toy\.json\.gz:41: needs reviewerID")]:
        _write(d / "Toy.json.gz", lines[:40] + [bad] + lines[40:])
        msgs = []
        for engine in ("python", "polars"):
            with pytest.raises(DataError, match=pattern) as e:
                load_amazon2018(d, engine=engine)
            msgs.append(str(e.value))
        assert msgs[0] == msgs[1]
    _write(d / "Toy.json.gz", lines)
    with pytest.raises(DataError, match="no interactions left"):
        load_amazon2018(d, engine="polars", start_time="2030-01")
    with pytest.raises(DataError, match="not one of"):
        load_amazon2018(d, engine="spark")


def test_engine_selection(tmp_path, monkeypatch):
    monkeypatch.delenv("GENREC_DATA_ENGINE", raising=False)
    assert columnar.resolve_engine("auto") == "polars"
    monkeypatch.setenv("GENREC_DATA_ENGINE", "python")
    assert columnar.resolve_engine("auto") == "python" and columnar.resolve_engine("polars") == "polars"
    monkeypatch.setattr(columnar, "available", lambda: False)
    monkeypatch.delenv("GENREC_DATA_ENGINE")
    assert columnar.resolve_engine("auto") == "python"
    with pytest.raises(DataError, match="needs the polars package"):
        columnar.resolve_engine("polars")


def synthetic_2023(d, seed: int = 0):
    rng = random.Random(seed)
    d.mkdir(parents=True, exist_ok=True)
    meta = [{"parent_asin": f"P{i:02d}", "title": f"Drill <i>{i}</i>" if i != 2 else "", "store": "ACME", "categories": [] if i % 2 else ["T", "D"],
             "main_category": "Tools", "description": ["fast"]} for i in range(15)]
    reviews = []
    for u in range(50):
        for _ in range(rng.choice([1, 3, 4, 6, 9])):
            i = min(int(rng.paretovariate(1.1)) - 1, 16)
            r = {"user_id": f"U{u}", "parent_asin": f"P{i:02d}", "asin": f"C{i}", "timestamp": 1_600_000_000_000 + rng.randrange(0, 40) * 3_600_000 * 12 + rng.randrange(0, 999)}
            if u % 9 == 0:
                r["parent_asin"] = "" if u % 2 else None  # -> asin (not in meta unless ...)
                r["asin"] = f"P{i:02d}"
            reviews.append(r)
    reviews += [dict(reviews[1]), dict(reviews[7])]
    rng.shuffle(reviews)
    _write(d / "Tools.jsonl.gz", [json.dumps(r) for r in reviews])
    _write(d / "meta_Tools.jsonl", [json.dumps(m) for m in meta])
    return d


@pytest.mark.parametrize("kw", [{"k": 2}, {"k": 3, "max_history": 4, "end_time": "2020-09-25"}, {"k": 1, "start_time": "2020-09-20"}])
def test_amazon2023_engines_identical(tmp_path, monkeypatch, kw):
    d = synthetic_2023(tmp_path / "raw")
    monkeypatch.setattr(columnar, "CHUNK_BYTES", 900)
    ref = load_amazon2023(d, engine="python", **kw)
    assert ref.n_interactions > 20
    assert_same(ref, load_amazon2023(d, engine="polars", **kw))
