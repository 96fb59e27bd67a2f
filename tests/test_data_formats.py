"""Data in the formats users already have (issue #18): MiniOneRec with or without ``*.inter.json``,
plain CSV/JSONL tables, ``genrec data validate`` and ``prepare``'s check. Tiny written fixtures only."""

from __future__ import annotations

import json
import warnings

import pytest

from components.data import DataError, DataWarning, load_dataset, load_minionerec, load_table
from components.data.validate import detect_format, validate
from components.params import DataParams

HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
SEQS = {"u1": ["i1", "i2", "i3", "i4", "i5"], "u2": ["i2", "i3", "i4"], "u3": ["i6", "i1", "i2"]}


def _mini(d, inter_json=True, seqs=SEQS, H=3):
    """MiniOneRec directory: sliding windows of ``seqs``; each user's last sample is test, the one
    before valid (when there are ≥ 3 samples), the rest train."""
    d.mkdir(parents=True, exist_ok=True)
    items = {f"i{k}": {"title": f"Item {k}", "brand": "B", "categories": ["C"]} for k in range(1, 7)}
    (d / "Toy.item.json").write_text(json.dumps(items))
    rows = {"train": [], "valid": [], "test": []}
    for u, seq in seqs.items():
        n = len(seq) - 1
        for k, pos in enumerate(range(1, len(seq))):
            split = "test" if k == n - 1 else "valid" if (k == n - 2 and n >= 3) else "train"
            rows[split].append(f"{u}\t{' '.join(seq[max(0, pos - H):pos])}\t{seq[pos]}\n")
    for s, r in rows.items():
        (d / f"Toy.{s}.inter").write_text(HEADER + "".join(r))
    if inter_json:
        (d / "Toy.inter.json").write_text(json.dumps(seqs))
    return d


# ---- 1. MiniOneRec with or without *.inter.json ------------------------------------------------
def test_minionerec_without_inter_json_rebuilds_sequences(tmp_path):
    ds = load_minionerec(_mini(tmp_path / "m", inter_json=False), max_history=3)
    assert ds.source["sequences"] == "rebuilt from split files"
    got = {ds.user_ids[u]: [ds.item_ids[i] for i in s] for u, s in enumerate(ds.sequences)}
    assert got == SEQS
    assert [len(ds.splits[s]) for s in ("train", "valid", "test")] == [2 + 1 + 1, 1, 3]


def test_minionerec_with_inter_json_agrees(tmp_path):
    with_json = load_minionerec(_mini(tmp_path / "a"), max_history=3)
    without = load_minionerec(_mini(tmp_path / "b", inter_json=False), max_history=3)
    assert with_json.source["sequences"] == "Toy.inter.json"
    assert with_json.user_ids == list(SEQS)  # inter.json's user order
    assert {with_json.user_ids[u]: s for u, s in enumerate(with_json.sequences)} == {without.user_ids[u]: s for u, s in enumerate(without.sequences)}


def test_minionerec_inter_json_disagreement_is_an_error(tmp_path):
    d = _mini(tmp_path / "m")
    bad = dict(SEQS, u2=["i2", "i4", "i3"])
    (d / "Toy.inter.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"Toy\.inter\.json: user 'u2' disagrees with the split files at position 1"):
        load_minionerec(d, max_history=3)
    (d / "Toy.inter.json").write_text(json.dumps({"u1": SEQS["u1"], "u2": SEQS["u2"]}))
    with pytest.raises(DataError, match=r"user 'u3' has samples in the split files but no sequence"):
        load_minionerec(d, max_history=3)
    # a one-interaction user without samples may appear in inter.json only
    (d / "Toy.inter.json").write_text(json.dumps(dict(SEQS, u9=["i1"])))
    assert load_minionerec(d, max_history=3).n_users == 4


def test_minionerec_broken_history_names_file_and_line(tmp_path):
    d = _mini(tmp_path / "m", inter_json=False)
    p = d / "Toy.test.inter"
    lines = p.read_text().splitlines()
    lines[1] = "u1\ti9 i9\ti5".replace("i9", "i6")  # history that does not continue u1's sequence
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"Toy\.test\.inter:2: history does not continue"):
        load_minionerec(d, max_history=3)


# ---- 2. plain tables -------------------------------------------------------------------------------
ITEMS_CSV = "item_id,title,brand\n" + "".join(f"i{k},\"Widget {k}, large\",B{k}\n" for k in range(1, 7))


def _table(d, inter: str, items: str = ITEMS_CSV, items_name="items.csv", inter_name="interactions.csv"):
    d.mkdir(parents=True, exist_ok=True)
    (d / inter_name).write_text(inter)
    (d / items_name).write_text(items)
    return d


def _inter(rows):
    return "user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows)


ROWS = [("a", f"i{k}", 100 - k) for k in range(1, 6)] + [("b", "i2", "2020-01-02"), ("b", "i1", "2020-01-01"), ("b", "i3", "2020-01-03T10:00:00"), ("c", "i6", 5)]


def test_table_csv_leave_one_out(tmp_path):
    d = _table(tmp_path / "t", _inter(ROWS + [ROWS[0]]))  # last row: an exact duplicate
    with pytest.warns(DataWarning) as rec:
        ds = load_table(d, k=1, max_history=2)
    assert any("dropped 1 exact duplicate" in str(w.message) for w in rec)
    seqs = {ds.user_ids[u]: [ds.item_ids[i] for i in s] for u, s in enumerate(ds.sequences)}
    assert seqs == {"a": ["i5", "i4", "i3", "i2", "i1"], "b": ["i1", "i2", "i3"], "c": ["i6"]}  # sorted by time
    assert ds.item_text[0] == {"title": "Widget 1, large", "brand": "B1"}  # quoted comma
    assert [len(ds.splits[s]) for s in ("train", "valid", "test")] == [2, 2, 2]
    te = ds.splits["test"]
    assert [ds.item_ids[i] for i in te.histories()[0]] == ["i3", "i2"] and ds.item_ids[te.target[0]] == "i1"
    assert ds.source["format"] == "table" and ds.n_items == 6  # k_core 1 keeps every item


def test_table_k_core_time_split_and_column_mapping(tmp_path):
    rows = [(f"U{u}", f"X{k}", 10 * u + k) for u in range(6) for k in range(5)] + [("U9", "X0", 1)]
    inter = "who;what;when\n".replace(";", ",") + "".join(f"{u},{i},{t}\n" for u, i, t in rows)
    items = "".join(json.dumps({"what": f"X{k}", "name": f"thing {k}", "tags": ["t", str(k)], "price": k}) + "\n" for k in range(6))
    d = _table(tmp_path / "t", inter, items, items_name="catalog.jsonl", inter_name="log.csv")
    with pytest.warns(DataWarning, match="5-core filter dropped 1 of 31"):
        ds = load_table(d, k=5, split="time", split_ratio=(0.6, 0.2, 0.2), user_col="who", item_col="what", time_col="when",
                        text_cols=["name", "tags"], interactions_file="log.csv", items_file="catalog.jsonl")
    assert ds.n_users == 6 and ds.n_items == 5  # U9 (1 interaction) and X5 (none) dropped
    assert ds.item_text[1] == {"name": "thing 1", "tags": "t 1"}
    assert [len(ds.splits[s]) for s in ("train", "valid", "test")] == [14, 5, 5]  # 24 samples, 0.6/0.2/0.2


def test_table_through_params(tmp_path):
    raw = tmp_path / "raw"
    _table(raw / "mine", _inter(ROWS))
    p = DataParams(dataset="mine", format="table", k_core=1, max_history=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        ds = load_dataset(p, raw_root=raw)
    assert ds.name == "mine" and ds.max_history == 4 and ds.n_users == 3


@pytest.mark.parametrize(
    "inter, match",
    [
        (_inter([("a", "i1", 1), ("", "i2", 2)]), r"interactions\.csv:3: empty user id"),
        (_inter([("a", "i1", 1), ("a", "i2", "yesterday")]), r"interactions\.csv:3: column timestamp is not a number or ISO date: 'yesterday'"),
        (_inter([("a", "i1", 1), ("a", "i99", 2), ("a", "i98", 3)]), r"interactions\.csv: 2 interactions with an item id not in items\.csv: line 3 \('i99'\), line 4"),
        ("user_id,item_id,timestamp\na,i1,1\na,i2\n", r"interactions\.csv:3: expected 3 columns, got 2"),
        ("user,item_id,timestamp\na,i1,1\n", r"interactions\.csv:2: no 'user_id' column"),
        ("", r"interactions\.csv:1: empty file"),
        ("user_id,item_id,timestamp\n", r"interactions\.csv: no interactions"),
    ],
)
def test_table_bad_interactions(tmp_path, inter, match):
    with pytest.raises(DataError, match=match):
        load_table(_table(tmp_path / "t", inter), k=1)


def test_table_bad_items(tmp_path):
    inter = _inter([("a", "i1", 1), ("a", "i2", 2)])
    with pytest.raises(DataError, match=r"items\.csv:3: duplicate item id 'i1' \(first on line 2\)"):
        load_table(_table(tmp_path / "a", inter, "item_id,title\ni1,A\ni1,B\n"), k=1)
    with pytest.raises(DataError, match=r"items\.jsonl:2: malformed JSON"):
        load_table(_table(tmp_path / "b", inter, '{"item_id": "i1"}\n{oops\n', items_name="items.jsonl"), k=1)
    with pytest.raises(DataError, match=r"no text column\(s\) \['desc'\]"):
        load_table(_table(tmp_path / "c", inter, "item_id,title\ni1,A\ni2,B\n"), k=1, text_cols=["desc"])
    with pytest.warns(DataWarning, match=r"1 items without any text \(kept\), e\.g\. line 3"):
        load_table(_table(tmp_path / "d", _inter(ROWS), ITEMS_CSV.replace("i2,\"Widget 2, large\",B2", "i2,,")), k=1)


def test_table_parquet_error_without_pyarrow(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    d = _table(tmp_path / "t", "", inter_name="interactions.parquet")
    with pytest.raises(DataError, match=r"interactions\.parquet: reading Parquet needs pyarrow"):
        load_table(d, k=1)


def test_table_parquet_loads_like_csv(tmp_path):
    """Parquet interactions and items (pyarrow, a dev dependency) give the same dataset as the CSV."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [r for r in ROWS if isinstance(r[2], int)]  # parquet columns are typed: unix times only
    csv_dir = _table(tmp_path / "csv", _inter(rows))
    pq_dir = tmp_path / "pq"
    pq_dir.mkdir()
    pq.write_table(pa.table({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows], "timestamp": [r[2] for r in rows]}),
                   pq_dir / "interactions.parquet")
    import csv as _csv
    import io

    items = list(_csv.DictReader(io.StringIO(ITEMS_CSV)))
    pq.write_table(pa.table({k: [it[k] for it in items] for k in items[0]}), pq_dir / "items.parquet")
    a, b = load_table(csv_dir, k=1, max_history=2), load_table(pq_dir, k=1, max_history=2)
    assert a.item_ids == b.item_ids and a.user_ids == b.user_ids and a.item_text == b.item_text
    assert [list(s) for s in a.sequences] == [list(s) for s in b.sequences]


# ---- 3. validate ---------------------------------------------------------------------------------
def test_validate_table_lists_every_problem(tmp_path):
    inter = _inter([("a", "i1", 5), ("a", "i2", 3), ("a", "i1", 5), ("b", "i9", 1), ("b", "i2", "never")])
    d = _table(tmp_path / "t", inter, "item_id,title\ni1,A\ni2,\n")
    assert detect_format(d) == "table"
    r = validate(d, DataParams(k_core=3))
    got = {(p.level, p.kind, p.file.split("/")[-1], p.line) for p in r.problems}
    assert got == {
        ("warning", "no-text", "items.csv", 3),
        ("warning", "time-order", "interactions.csv", 3),
        ("warning", "duplicate", "interactions.csv", 4),
        ("error", "unknown-item", "interactions.csv", 5),
        ("error", "malformed", "interactions.csv", 6),
        ("warning", "below-k-core", "interactions.csv", 5),  # b: 1 readable interaction < 3
    }
    assert r.counts == {"items": 2, "users": 2, "interactions": 4}
    assert "interactions.csv:4: warning: duplicate interaction" in r.text()


def test_validate_minionerec(tmp_path):
    d = _mini(tmp_path / "m")
    r = validate(d, DataParams(k_core=4))
    assert r.format == "minionerec" and not r.errors
    assert r.counts["users"] == 3 and r.counts["interactions"] == 11
    assert {(p.kind, p.line) for p in r.warnings} == {("below-k-core", 4), ("below-k-core", 5)}  # u2, u3 (3 < 4)
    (d / "Toy.inter.json").write_text(json.dumps(dict(SEQS, u2=["i2"])))
    p = d / "Toy.valid.inter"
    p.write_text(p.read_text() + "u1\ti2\tnope\nbroken\n")
    kinds = {(p.kind, p.file.split("/")[-1], p.line) for p in validate(d).errors}
    assert kinds == {("unknown-item", "Toy.valid.inter", 3), ("malformed", "Toy.valid.inter", 4),
                     ("sequence", "Toy.valid.inter", 3), ("sequence", "Toy.inter.json", None),
                     ("sequence", "Toy.test.inter", 2)}  # u1's test sample no longer continues its sequence


def test_validate_recbole_and_amazon_detected(tmp_path):
    rb = tmp_path / "rb"
    rb.mkdir()
    (rb / "toy.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\nu\ti1\t2\nu\ti2\t1\nu\ti3\tx\n")
    (rb / "toy.item").write_text("item_id:token\ttitle:token_seq\ni1\tA\ni2\tB\n")
    r = validate(rb, DataParams(k_core=1))
    assert r.format == "recbole"
    assert {(p.level, p.kind, p.line) for p in r.problems} == {("warning", "time-order", 3), ("error", "malformed", 4)}
    amz = tmp_path / "amz"
    amz.mkdir()
    (amz / "Toy.json").write_text('{"reviewerID": "U", "asin": "A1", "unixReviewTime": 1}\n{"reviewerID": "U", "asin": "A2", "unixReviewTime": 2}\n')
    (amz / "meta_Toy.json").write_text('{"asin": "A1", "title": "t"}\n')
    r = validate(amz, DataParams(k_core=1))
    assert r.format == "amazon2018" and not r.errors
    assert [(p.kind, p.line) for p in r.warnings] == [("unknown-item", 2)]


def _ctx(tmp_path, **data):
    from types import SimpleNamespace

    from components.params import Params
    from components.registry import Registry

    return SimpleNamespace(params=Params(data=DataParams(**data)), registry=Registry(tmp_path / "artifacts"))


def test_cli_validate_and_prepare_refuses_bad_data(tmp_path, capsys):
    # the command handlers directly (main() would import every component: seconds)
    from types import SimpleNamespace

    from components.data.commands import cmd_prepare, cmd_validate

    raw = tmp_path / "raw"
    good = _table(raw / "mine", _inter(ROWS))
    ctx = _ctx(tmp_path, dataset="mine", format="table", k_core=1)
    assert cmd_validate(SimpleNamespace(path=str(good), format=None), ctx) == 0
    out = capsys.readouterr().out
    assert "format table" in out and "0 errors" in out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        assert cmd_prepare(SimpleNamespace(raw=str(raw), stats_out=None), ctx) == 0
    assert "wrote dataset/mine@" in capsys.readouterr().out
    arts = tmp_path / "artifacts"
    before = sorted(p.relative_to(arts).as_posix() for p in arts.rglob("*"))
    (good / "interactions.csv").write_text(_inter(ROWS + [("z", "i77", 1)]))
    assert cmd_validate(SimpleNamespace(path=None, format="auto"), _ctx(tmp_path, path=str(good))) == 1
    with pytest.raises(DataError, match=r"1 data errors in .*mine, first .*interactions\.csv:11: error: item id 'i77' is not in items\.csv"):
        cmd_prepare(SimpleNamespace(raw=str(raw), stats_out=None), ctx)
    assert "interactions.csv:11: error: item id 'i77'" in capsys.readouterr().err
    assert sorted(p.relative_to(arts).as_posix() for p in arts.rglob("*")) == before  # nothing half-written


# ---- 4. MiniOneRec CSV splits ----------------------------------------------------------------------
CSV_HEADER = ["user_id", "history_item_title", "item_title", "history_item_id", "item_id", "history_item_sid", "item_sid"]


def _mini_csv(d, layout="folders", seqs=None, H=3):
    """MiniOneRec CSV splits of the same sliding windows as :func:`_mini` (item ids 1..6 as ints)."""
    import csv

    seqs = seqs or {u: [int(i[1:]) for i in s] for u, s in SEQS.items()}
    d.mkdir(parents=True, exist_ok=True)
    (d / "index").mkdir(exist_ok=True)
    (d / "index" / "Toy.item.json").write_text(json.dumps({str(k): {"title": f"Item {k}"} for k in range(1, 7)}))
    rows = {"train": [], "valid": [], "test": []}
    for u, seq in seqs.items():
        n = len(seq) - 1
        for k, pos in enumerate(range(1, len(seq))):
            split = "test" if k == n - 1 else "valid" if (k == n - 2 and n >= 3) else "train"
            hist = seq[max(0, pos - H):pos]
            rows[split].append([u, str([f"Item {i}" for i in hist]), f"Item {seq[pos]}", str(hist), seq[pos],
                                str([f"<a_{i}>" for i in hist]), f"<a_{seq[pos]}>"])
    for s, r in rows.items():
        path = d / s / "Toy_5_2016-10-2018-11.csv" if layout == "folders" else d / f"{s}.csv"
        path.parent.mkdir(exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_HEADER)
            w.writerows(r)
    return d


def test_minionerec_csv_loads_like_the_inter_files(tmp_path):
    from components.data import load_minionerec_csv

    ref = load_minionerec(_mini(tmp_path / "m", inter_json=False), max_history=3)
    for layout in ("folders", "flat"):
        d = _mini_csv(tmp_path / layout, layout=layout)
        assert detect_format(d) == "minionerec-csv"
        ds = load_minionerec_csv(d, max_history=3)
        assert ds.user_ids == ref.user_ids and [len(ds.splits[s]) for s in ("train", "valid", "test")] == [4, 1, 3]
        assert [[ds.item_ids[i] for i in s] for s in ds.sequences] == [[x[1:] for x in SEQS[u]] for u in ds.user_ids]
        assert ds.item_text[0] == {"title": "Item 1"} and ds.source["format"] == "minionerec-csv"
    r = validate(tmp_path / "flat", DataParams(k_core=1))
    assert r.format == "minionerec-csv" and not r.problems and r.counts["interactions"] == 11
    p = DataParams(dataset="flat", format="minionerec-csv", max_history=3)
    assert load_dataset(p, raw_root=tmp_path).n_users == 3


def test_minionerec_csv_bad_rows(tmp_path):
    from components.data import load_minionerec_csv

    d = _mini_csv(tmp_path / "m", layout="flat")
    p = d / "valid.csv"
    good = p.read_text()
    p.write_text(good + 'u9,"[]",x,"[1, 2",3,"[]",<a>\n')
    with pytest.raises(DataError, match=r"valid\.csv:3: history_item_id is not a list literal: '\[1, 2'"):
        load_minionerec_csv(d)
    p.write_text(good + 'u9,"[]",x,"[1, 99]",3,"[]",<a>\n')
    with pytest.raises(DataError, match=r"valid\.csv:3: item ids with no item record: \['99'\]"):
        load_minionerec_csv(d)
    p.write_text("user_id,item_id\nu1,3\n")
    with pytest.raises(DataError, match=r"valid\.csv:2: no column\(s\) \['history_item_id'\]"):
        load_minionerec_csv(d)
    p.write_text(good + 'u1,"[]",x,"[6, 6]",3,"[]",<a>\n')
    with pytest.raises(DataError, match=r"valid\.csv:3: history does not continue"):
        load_minionerec_csv(d)
    assert validate(d).errors[0].kind == "sequence"
    p.unlink()
    with pytest.raises(DataError, match=r"no valid CSV"):
        load_minionerec_csv(d)


# ---- 5. Amazon Reviews 2023 ------------------------------------------------------------------------
def _amazon23(d, extra_reviews=(), extra_meta=()):
    """6 users x 6 items, each review one day apart (ms timestamps); item P5 has no title (dropped,
    so every user keeps 5 items = 5-core); one exact duplicate review."""
    import gzip

    d.mkdir(parents=True, exist_ok=True)
    day = 86_400_000
    reviews = [{"rating": 5.0, "title": "ok", "text": "t", "asin": f"C{i}", "parent_asin": f"P{i}", "user_id": f"U{u}",
                "timestamp": 1_600_000_000_000 + day * (u + i), "verified_purchase": True} for u in range(6) for i in range(6)]
    reviews.append(dict(reviews[0]))
    meta = [{"main_category": "Tools", "title": f"Drill <i>{i}</i>" if i != 5 else "", "store": "ACME", "categories": [],
             "description": ["fast", "light"], "parent_asin": f"P{i}"} for i in range(6)]
    with gzip.open(d / "Tools.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in [*reviews, *extra_reviews]))
    (d / "meta_Tools.jsonl").write_text("".join(json.dumps(m) + "\n" for m in [*meta, *extra_meta]))
    return d


def test_amazon2023_preprocessing(tmp_path):
    from components.data import load_amazon2023

    d = _amazon23(tmp_path / "a")
    assert detect_format(d) == "amazon2023"
    ds = load_amazon2023(d, max_history=3)
    assert ds.n_items == 5 and ds.n_users == 6 and ds.n_interactions == 30  # P5 dropped, duplicate dropped
    assert ds.item_text[0] == {"title": "Drill 0", "description": "fast light", "brand": "ACME", "categories": "Tools"}
    sizes = [len(ds.splits[s]) for s in ("train", "valid", "test")]
    assert sizes == [19, 2, 3]  # 24 samples, 8:1:1 rounded
    assert [ds.item_ids[i] for i in ds.sequences[0]] == [f"P{i}" for i in range(5)]
    assert load_amazon2023(d, k=1, end_time="2020-09-16").n_interactions == 1 + 2 + 3  # [t0, 09-16): ms → s
    p = DataParams(dataset="a", format="amazon2023", k_core=5)
    assert load_dataset(p, raw_root=tmp_path).n_items == 5
    r = validate(d, DataParams(k_core=5))
    assert r.format == "amazon2023" and not r.errors
    assert {(p.kind, p.line) for p in r.warnings} == {("no-text", 6), ("duplicate", 37), ("time-order", 37)}


def test_amazon2023_bad_rows(tmp_path):
    from components.data import load_amazon2023

    with pytest.raises(DataError, match=r"Tools\.jsonl\.gz:38: needs user_id, parent_asin"):
        load_amazon2023(_amazon23(tmp_path / "a", extra_reviews=[{"user_id": "U1", "parent_asin": "P1"}]))
    with pytest.raises(DataError, match=r"meta_Tools\.jsonl:7: record without 'parent_asin'"):
        load_amazon2023(_amazon23(tmp_path / "b", extra_meta=[{"title": "x"}]))
    d = _amazon23(tmp_path / "c")
    with open(d / "meta_Tools.jsonl", "a") as f:
        f.write("[1, 2]\n")
    with pytest.raises(DataError, match=r"meta_Tools\.jsonl:7: expected a JSON object"):
        load_amazon2023(d)
    assert [(e.kind, e.line) for e in validate(_amazon23(tmp_path / "e", extra_reviews=[{"user_id": "U1"}])).errors] == [("malformed", 38)]


@pytest.mark.parametrize("engine", ["python", "polars"])
def test_amazon2023_bad_split_ratio(tmp_path, engine):
    """As amazon2018: a split_ratio that does not sum to 1 is refused, naming the key, before any file is read."""
    from components.data import load_amazon2023

    with pytest.raises(DataError, match=r"split_ratio \(0\.5, 0\.5, 0\.5\) must be non-negative and sum to 1"):
        load_amazon2023(_amazon23(tmp_path / "a"), split_ratio=(0.5, 0.5, 0.5), engine=engine)
    with pytest.raises(DataError, match="split_ratio"):
        load_amazon2023(tmp_path / "a", split_ratio=(1.2, -0.1, -0.1), engine=engine)
