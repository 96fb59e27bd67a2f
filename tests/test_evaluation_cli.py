"""`genrec baselines` + `genrec evaluate` end to end on a toy dataset written to a temp registry:
rankings artifacts, metrics JSON, plots CSV, PNGs that render, the markdown table; bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from components.cli import main
from components.data.dataset import Dataset, Split
from components.evaluation.rankings import load_rankings, save_rankings
from components.evaluation.metrics import RankingError
from components.registry import ArtifactIncompatible, ArtifactNotFound
from components.tokenizer.codebook import Codebook

N_ITEMS = 12


def _toy_dataset() -> Dataset:
    rng = np.random.default_rng(1)
    seqs = [[int((s + j) % N_ITEMS) for j in range(int(rng.integers(5, 9)))] for s in rng.integers(0, N_ITEMS, 40)]
    tr, va, te = ([], [], []), ([], [], []), ([], [], [])
    for u, s in enumerate(seqs):
        for t in range(1, len(s) - 2):
            for lst, v in zip(tr, (u, s[:t], s[t])):
                lst.append(v)
        for split, t in ((va, len(s) - 2), (te, len(s) - 1)):
            for lst, v in zip(split, (u, s[:t], s[t])):
                lst.append(v)
    splits = {name: Split.from_lists(*parts, max_history=5) for name, parts in (("train", tr), ("valid", va), ("test", te))}
    return Dataset(
        name="toy", item_ids=[f"i{i}" for i in range(N_ITEMS)], item_text=[{"title": f"item {i}"} for i in range(N_ITEMS)],
        user_ids=[f"u{u}" for u in range(len(seqs))], sequences=seqs, splits=splits, max_history=5,
    )


@pytest.fixture
def toy(registry, tmp_path):
    ds = _toy_dataset()
    art = ds.save(registry)
    cb = Codebook(sids=np.array([[i // 4, i % 4] for i in range(N_ITEMS)]), sizes=[3, 4], item_ids=ds.item_ids, method="test", dataset_ref=art.ref)
    cb.save(registry, "toy-test", parents=[art.ref], params={})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "data": {"dataset": "toy"},
        "evaluation": {"ks": [1, 5, 10], "topk": 10, "n_groups": 3, "token_groups": 2, "codebook": "codebook/toy-test@latest",
                       "baselines": {"sasrec": {"d_model": 16, "n_layers": 1, "epochs": 2, "patience": 5}}},
    }))
    return ds, art, ["--registry", str(registry.root), "--params", str(params)]


def test_baselines_and_evaluate_end_to_end(toy, registry, tmp_path):
    ds, ds_art, base = toy
    assert main(base + ["baselines", "--summary-out", str(tmp_path / "baselines.json")]) == 0
    for m in ("popular", "sasrec", "sasrec-rr", "sasrec-rw"):
        art = registry.load(f"rankings/toy-{m}@latest")
        assert art.meta["method"] == m and ds_art.ref in art.manifest.parents
        topk = load_rankings(art, "test", n_samples=len(ds.splits["test"]), n_items=N_ITEMS)
        assert topk.shape == (len(ds.splits["test"]), 10)
    assert registry.load("model/toy-sasrec@latest").load_json("config.json")["arch"] == "sasrec"
    summary = json.loads((tmp_path / "baselines.json").read_text())
    assert set(summary["methods"]) == {"popular", "sasrec", "sasrec-rr", "sasrec-rw"}

    out = tmp_path / "out"
    rc = main(base + ["evaluate", "--metrics-out", str(out / "metrics.json"), "--plots-dir", str(out / "plots"), "--report", str(out / "report.md")])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["methods"]) == ["popular", "sasrec", "sasrec-rr", "sasrec-rw"]
    pop = metrics["methods"]["popular"]
    counts = ds.train_item_counts()
    top10 = set(np.argsort(-counts, kind="stable")[:10].tolist())
    assert pop["HR@10"] == pytest.approx(np.mean([t in top10 for t in ds.splits["test"].target]))
    assert "level1" in metrics["token_bias"]["sasrec"]
    csv = (out / "plots" / "exposure.csv").read_text().splitlines()
    assert csv[0] == "method,group,exposure,history_share,gu" and len(csv) == 1 + 4 * 3
    assert (out / "plots" / "token_bias.csv").exists()
    import matplotlib.image as mpimg

    for png in ("exposure.png", "head_tail.png", "token_bias.png"):
        img = mpimg.imread(out / "plots" / png)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    md = (out / "report.md").read_text()
    assert "| Metric | popular | sasrec | sasrec-rr | sasrec-rw |" in md
    assert "| DGU@10 ↓ |" in md and "history items NOT excluded" in md


def test_evaluate_bad_input(toy, registry, tmp_path, capsys):
    ds, ds_art, base = toy
    outs = ["--metrics-out", str(tmp_path / "m.json"), "--plots-dir", str(tmp_path / "p"), "--report", str(tmp_path / "r.md")]
    # no rankings written yet: one clear error, exit 2
    assert main(base + ["evaluate", "--rankings", "nothing"] + outs) == 2
    assert "rankings/toy-nothing" in capsys.readouterr().err
    # rankings with the wrong number of rows for the split
    n = len(ds.splits["test"])
    save_rankings(registry, "toy", "short", {"test": np.tile(np.arange(10), (n - 1, 1))}, N_ITEMS, parents=[ds_art.ref])
    assert main(base + ["evaluate", "--rankings", "short"] + outs) == 2
    assert "rankings for" in capsys.readouterr().err
    with pytest.raises(ArtifactIncompatible):
        load_rankings(registry.load("rankings/toy-short@latest"), "valid")
    # duplicates / ids outside the catalog are refused when written
    with pytest.raises(RankingError, match="repeats"):
        save_rankings(registry, "toy", "dup", {"test": np.zeros((n, 10), dtype=int)}, N_ITEMS, parents=[ds_art.ref])
    with pytest.raises(RankingError, match="outside the catalog"):
        save_rankings(registry, "toy", "big", {"test": np.tile(np.arange(3, 13), (n, 1))}, N_ITEMS, parents=[ds_art.ref])
    with pytest.raises(ArtifactNotFound):
        registry.load("rankings/toy-dup@latest")
    # params: report_k must be one of ks
    assert main(base + ["--set", "evaluation.report_k=7", "evaluate"] + outs) == 2
    assert "report_k" in capsys.readouterr().err


def test_evaluate_reads_generator_rankings_layout(toy, registry, tmp_path, capsys):
    """The generator writes rankings.npz with <split>_topk / <split>_targets, possibly for the first n samples."""
    ds, ds_art, base = toy
    te = ds.splits["test"]
    counts = ds.train_item_counts()
    save_rankings(registry, "toy", "popular", {"test": np.tile(np.argsort(-counts, kind="stable")[:10], (len(te), 1))}, N_ITEMS, parents=[ds_art.ref])
    topk = np.stack([np.roll(np.arange(N_ITEMS), -int(t))[:10] for t in te.target[:5]])  # target first: every hit at rank 0
    with registry.create("rankings", "toy-gen", parents=[ds_art.ref]) as w:
        w.write_npz("rankings.npz", test_topk=topk.astype(np.int32), test_targets=te.target[:5])
    out = tmp_path / "o"
    assert main(base + ["--set", "evaluation.codebook=null", "evaluate", "--rankings", "popular", "gen", "--metrics-out", str(out / "m.json"),
                        "--plots-dir", str(out / "p"), "--report", str(out / "r.md")]) == 0
    m = json.loads((out / "m.json").read_text())["methods"]
    assert m["gen"]["n"] == 5 and m["gen"]["HR@1"] == 1.0 and m["gen"]["NDCG@10"] == 1.0
    assert m["popular"]["n"] == len(te)
    assert "gen ranked only the first 5" in (out / "r.md").read_text()
    with registry.create("rankings", "toy-bad", parents=[ds_art.ref]) as w:
        w.write_npz("rankings.npz", test_topk=topk.astype(np.int32), test_targets=(te.target[:5] + 1) % N_ITEMS)
    assert main(base + ["evaluate", "--rankings", "bad", "--metrics-out", str(out / "m.json"), "--plots-dir", str(out / "p"), "--report", str(out / "r.md")]) == 2
    assert "targets differ" in capsys.readouterr().err
