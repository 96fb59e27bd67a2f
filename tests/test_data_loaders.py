"""Data loaders on the real datasets and on broken inputs; the dataset artifact round trip."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest

from components.data import PAD, DataError, Dataset, load_amazon2018, load_minionerec, load_recbole
from components.data.stats import dataset_stats, gini


# ---- real data ---------------------------------------------------------------------------
def test_industrial_counts_match_published(industrial):
    ds = industrial
    assert (ds.n_items, ds.n_users, ds.n_interactions) == (3686, 7694, 53018)
    assert [len(ds.splits[s]) for s in ("train", "valid", "test")] == [36259, 4532, 4533]
    assert ds.max_history == 10 and ds.splits["train"].lengths.max() == 10
    s = dataset_stats(ds)
    assert round(s["head_interaction_share"], 2) == 0.54  # data README: top 20% hold 54%
    assert s["test_targets_unseen_in_train"] == 156  # data README: 156 unseen test targets


def test_industrial_split_is_used_exactly(industrial, industrial_dir):
    # first test line of the shipped file, as written there
    line = (industrial_dir / "Industrial_and_Scientific.test.inter").read_text().splitlines()[1].split("\t")
    ds = industrial
    sp = ds.splits["test"]
    assert ds.user_ids[sp.user[0]] == line[0]
    assert [ds.item_ids[i] for i in sp.histories()[0]] == line[1].split()
    assert ds.item_ids[sp.target[0]] == line[2]
    # every sample is a sliding window of the user's full sequence (MiniOneRec preprocessing)
    pos = np.zeros(ds.n_users, dtype=int)
    for split in ("train", "valid", "test"):
        sp = ds.splits[split]
        for u, h, t in zip(sp.user, sp.histories(), sp.target):
            pos[u] += 1
            seq = ds.sequences[u]
            assert seq[pos[u]] == t and seq[max(0, pos[u] - 10) : pos[u]] == h


def test_ml100k_leave_one_out(ml100k):
    ds = ml100k
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (943, 1682, 100000)
    assert len(ds.splits["test"]) == len(ds.splits["valid"]) == 943
    assert len(ds.splits["train"]) == 100000 - 3 * 943
    te, va = ds.splits["test"], ds.splits["valid"]
    for k in range(0, 943, 97):
        seq = ds.sequences[te.user[k]]
        assert te.target[k] == seq[-1] and va.target[k] == seq[-2]
        assert te.histories()[k] == seq[-21:-1]  # cap of 20 past items
    assert ds.item_text[0]["title"] == "Toy Story"
    assert "Animation" in ds.item_text[0]["categories"]


def test_ml100k_sequences_sorted_by_timestamp(ml100k_dir, ml100k):
    rows = [r.split("\t") for r in (ml100k_dir / "ml-100k.inter").read_text().splitlines()[1:]]
    user = ml100k.user_ids[0]
    events = sorted((float(r[3]), n, r[1]) for n, r in enumerate(rows) if r[0] == user)
    assert [ml100k.item_ids[i] for i in ml100k.sequences[0]] == [e[2] for e in events]


def test_artifact_roundtrip(industrial, registry):
    art = industrial.save(registry, params={"k": 1})
    back = Dataset.from_artifact(registry.load(art.ref))
    assert back.item_ids == industrial.item_ids and back.user_ids == industrial.user_ids
    assert back.item_text[5] == industrial.item_text[5]
    for s in ("train", "valid", "test"):
        np.testing.assert_array_equal(back.splits[s].history, industrial.splits[s].history)
        np.testing.assert_array_equal(back.splits[s].target, industrial.splits[s].target)
    assert back.sequences[:50] == industrial.sequences[:50]
    assert art.meta["n_test"] == 4533


def test_gini():
    assert gini(np.array([1, 1, 1, 1])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 10])) == pytest.approx(0.75)  # (n-1)/n for one holder
    assert gini(np.array([])) == 0.0


# ---- broken MiniOneRec inputs --------------------------------------------------------------
@pytest.fixture
def mini_copy(industrial_dir, tmp_path):
    d = tmp_path / "mini"
    d.mkdir()
    for f in industrial_dir.glob("Industrial_and_Scientific.*"):
        shutil.copy(f, d / f.name)
    return d


def test_malformed_tsv_line(mini_copy):
    p = mini_copy / "Industrial_and_Scientific.valid.inter"
    lines = p.read_text().splitlines()
    lines[3] = "12\tonly-two-columns"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"valid\.inter:4: expected 3 tab-separated columns"):
        load_minionerec(mini_copy)


def test_unknown_item_in_interactions(mini_copy):
    p = mini_copy / "Industrial_and_Scientific.test.inter"
    lines = p.read_text().splitlines()
    cols = lines[2].split("\t")
    lines[2] = "\t".join([cols[0], cols[1], "999999"])
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"test\.inter:3: item ids with no item record: \['999999'\]"):
        load_minionerec(mini_copy)


def test_malformed_json(mini_copy):
    p = mini_copy / "Industrial_and_Scientific.item.json"
    p.write_text(p.read_text()[:5000])
    with pytest.raises(DataError, match=r"item\.json:\d+: malformed JSON"):
        load_minionerec(mini_copy)


def test_missing_files(mini_copy, tmp_path):
    (mini_copy / "Industrial_and_Scientific.train.inter").unlink()
    with pytest.raises(DataError, match="train.inter: file not found"):
        load_minionerec(mini_copy)
    with pytest.raises(DataError, match="not a directory"):
        load_minionerec(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no '\*\.item\.json' file"):
        load_minionerec(tmp_path / "empty")


def test_empty_dataset(mini_copy):
    for s in ("train", "valid", "test"):
        p = mini_copy / f"Industrial_and_Scientific.{s}.inter"
        p.write_text(p.read_text().splitlines()[0] + "\n")
    with pytest.raises(DataError, match="no training samples"):
        load_minionerec(mini_copy)


# ---- broken RecBole inputs -----------------------------------------------------------------
def _recbole(tmp_path, inter: str, item: str | None):
    d = tmp_path / "rb"
    d.mkdir(exist_ok=True)
    (d / "toy.inter").write_text(inter)
    if item is not None:
        (d / "toy.item").write_text(item)
    return d


def test_recbole_small_and_ties(tmp_path):
    inter = "user_id:token\titem_id:token\ttimestamp:float\n" + "".join(
        f"u1\ti{k}\t{t}\n" for k, t in [(3, 30), (1, 10), (2, 10), (4, 40)]
    ) + "u2\ti1\t5\nu2\ti2\t6\n"
    item = "item_id:token\ttitle:token_seq\n" + "".join(f"i{k}\tItem {k}\n" for k in range(1, 5))
    ds = load_recbole(_recbole(tmp_path, inter, item), max_history=2)
    assert [ds.item_ids[i] for i in ds.sequences[0]] == ["i1", "i2", "i3", "i4"]  # tie keeps file order
    assert len(ds.splits["test"]) == 2 and len(ds.splits["valid"]) == 1 and len(ds.splits["train"]) == 1
    assert ds.splits["test"].history[0].tolist() == [ds.item_ids.index("i2"), ds.item_ids.index("i3")]
    assert ds.splits["train"].history[0].tolist() == [ds.item_ids.index("i1"), PAD]


def test_recbole_bad_inputs(tmp_path):
    item = "item_id:token\ttitle:token_seq\ni1\tA\n"
    with pytest.raises(DataError, match="no record in toy.item: \\['i9'\\]"):
        load_recbole(_recbole(tmp_path, "user_id:token\titem_id:token\nu\ti1\nu\ti9\n", item))
    with pytest.raises(DataError, match=r"toy\.inter:1: column 'user_id' is not 'name:type'"):
        load_recbole(_recbole(tmp_path, "user_id\titem_id:token\nu\ti1\n", item))
    with pytest.raises(DataError, match=r"toy\.inter:3: expected 3 tab-separated columns"):
        load_recbole(_recbole(tmp_path, "user_id:token\titem_id:token\ttimestamp:float\nu\ti1\t1\nu\ti1\n", item))
    with pytest.raises(DataError, match=r"toy\.inter:2: column timestamp is not a float"):
        load_recbole(_recbole(tmp_path, "user_id:token\titem_id:token\ttimestamp:float\nu\ti1\tyesterday\n", item))
    with pytest.raises(DataError, match="no interactions"):
        load_recbole(_recbole(tmp_path, "user_id:token\titem_id:token\n", item))


# ---- Amazon'18 raw ---------------------------------------------------------------------------
def _amazon_fixture(d, n_users=12, n_items=8, extra=None):
    """Every user reviews every item once, one day apart; item 7 has no title and is dropped,
    user 11 reviews only 3 kept items (dropped by 5-core)."""
    d.mkdir(parents=True, exist_ok=True)
    reviews = []
    for u in range(n_users):
        items = range(n_items) if u != 11 else range(3)
        for k, i in enumerate(items):
            reviews.append({"reviewerID": f"U{u}", "asin": f"A{i}", "unixReviewTime": 1_500_000_000 + 86400 * (k + u), "overall": 5.0})
    reviews.append(dict(reviews[0]))  # exact duplicate row
    meta = [{"asin": f"A{i}", "title": f"<b>Widget</b> {i} &amp; co" if i != 7 else "", "description": ["d"], "brand": "B", "category": ["C", "D"]} for i in range(n_items)]
    with gzip.open(d / "Toy.json.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in reviews + (extra or [])) + "\n")
    with gzip.open(d / "meta_Toy.json.gz", "wt") as f:
        f.write("\n".join(json.dumps(m) for m in meta) + "\n")
    return d


def test_amazon_preprocessing(tmp_path):
    ds = load_amazon2018(_amazon_fixture(tmp_path / "amz"), max_history=3)
    assert ds.n_items == 7 and ds.n_users == 11  # item A7 (no title) and user U11 (3 < 5) filtered
    assert ds.item_text[0]["title"] == "Widget 0 & co"  # HTML stripped and unescaped
    assert ds.item_text[0]["categories"] == "C D"
    n = 11 * 6  # 7 items per user → 6 samples each; the duplicate row is dropped
    sizes = [len(ds.splits[s]) for s in ("train", "valid", "test")]
    assert sum(sizes) == n and sizes[0] == round(0.8 * n) and sizes[1] == round(0.1 * n)
    assert ds.splits["train"].history.shape[1] == 3
    # chronological by target time: user U<u> reviews item A<k> on day u + k
    def times(split):
        sp = ds.splits[split]
        return [int(ds.user_ids[u][1:]) + int(ds.item_ids[t][1:]) for u, t in zip(sp.user, sp.target)]

    assert max(times("train")) <= min(times("valid")) and max(times("valid")) <= min(times("test"))


def test_amazon_time_window_and_errors(tmp_path):
    d = _amazon_fixture(tmp_path / "amz")
    with pytest.raises(DataError, match="no interactions left"):
        load_amazon2018(d, start_time="2030-01")
    with pytest.raises(DataError, match="not YYYY-MM"):
        load_amazon2018(d, start_time="01/2017")
    bad = _amazon_fixture(tmp_path / "bad", extra=[])
    with gzip.open(bad / "Toy.json.gz", "at") as f:
        f.write("{broken\n")
    with pytest.raises(DataError, match=r"Toy\.json\.gz:\d+: malformed JSON"):
        load_amazon2018(bad)
    with pytest.raises(DataError, match="needs reviewerID"):
        load_amazon2018(_amazon_fixture(tmp_path / "bad2", extra=[{"asin": "A1"}]))
