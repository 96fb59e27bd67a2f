"""The ``rebalance`` stage through the CLI: artifacts in, rebalanced codebook + metrics + plots out;
the disabled pass-through; a codebook whose stored tree disagrees with its SIDs."""

import json

import numpy as np
import pytest

from components.cli import main
from components.tokenizer.codebook import Codebook
from tests.conftest import SHARED_DATA
from tests.helpers_codebook import reference_codebook


@pytest.fixture(scope="module")
def stage_registry(tmp_path_factory, industrial):
    from components.registry import Registry

    root = tmp_path_factory.mktemp("stage") / "artifacts"
    reg = Registry(root)
    ds_art = industrial.save(reg)
    cb = reference_codebook(SHARED_DATA / "Industrial_and_Scientific/reference/minionerec.index.json", industrial.item_ids, ds_art.ref)
    cb_art = cb.save(reg, "industrial-ref", parents=[ds_art], params={"source": "minionerec"})
    return reg, cb_art


def _params(tmp_path, **rebalance):
    lines = ["data:", "  dataset: industrial", "rebalance:", "  codebook: industrial-ref"]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in rebalance.items()]
    p = tmp_path / "params.yaml"
    p.write_text("\n".join(lines) + "\n")
    return str(p)


def test_cli_rebalance_writes_codebook_metrics_and_plots(stage_registry, tmp_path, capsys):
    reg, cb_art = stage_registry
    m, png, csv = tmp_path / "m.json", tmp_path / "p.png", tmp_path / "p.csv"
    rc = main(["--params", _params(tmp_path, levels=[1]), "--registry", str(reg.root), "rebalance",
               "--metrics-out", str(m), "--plot-out", str(png), "--csv-out", str(csv)])
    assert rc == 0, capsys.readouterr().err
    art = reg.load("codebook/industrial-crab@latest")
    assert cb_art.ref in art.manifest.parents and art.params["rebalance"]["levels"] == [1]
    new = Codebook.from_artifact(art)
    old = Codebook.from_artifact(cb_art)
    assert new.sizes[0] == old.sizes[0] and new.sizes[2] == old.sizes[2] and new.sizes[1] > old.sizes[1]  # middle level only
    assert new.n_collisions() == 0
    metrics = json.loads(m.read_text())
    lv1 = metrics["levels"]["level_1"]
    assert lv1["top_share_after"] < lv1["top_share_before"] and lv1["gini_after"] < lv1["gini_before"]
    assert metrics["levels"]["level_0"]["top_share_after"] == metrics["levels"]["level_0"]["top_share_before"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert csv.read_text().splitlines()[0] == "level,rank,before,after"
    stats = art.load_json("stats.json")
    assert stats["split_levels"] == [1] and stats["semantic_levels"] == 3


def test_cli_rebalance_disabled_passes_input_through(stage_registry, tmp_path):
    reg, cb_art = stage_registry
    m = tmp_path / "m.json"
    assert main(["--params", _params(tmp_path, enabled=False, name="passthru"), "--registry", str(reg.root),
                 "rebalance", "--metrics-out", str(m)]) == 0
    art = reg.load("codebook/passthru@latest")
    assert art.params["rebalance"]["enabled"] is False and cb_art.ref in art.manifest.parents
    np.testing.assert_array_equal(art.load_numpy("sids.npy"), cb_art.load_numpy("sids.npy"))
    assert json.loads(m.read_text())["enabled"] is False


def test_cli_rejects_tree_inconsistent_codebook_and_bad_params(stage_registry, tmp_path, capsys):
    reg, cb_art = stage_registry
    sids = cb_art.load_numpy("sids.npy")
    with reg.create("codebook", "broken", params={}) as w:
        w.write_numpy("sids.npy", sids)
        w.write_json("codebook.json", cb_art.load_json("codebook.json"))
        tree = cb_art.load_numpy("tree.npz")
        tree["edges_1"] = tree["edges_1"][1:]  # drop one parent-child edge
        w.write_npz("tree.npz", **tree)
    assert main(["--params", _params(tmp_path, codebook="broken"), "--registry", str(reg.root), "rebalance"]) == 2
    assert "stored tree at level 1 is inconsistent with the SIDs" in capsys.readouterr().err
    assert main(["--params", _params(tmp_path, split_ratio=1.5), "--registry", str(reg.root), "rebalance"]) == 2
    assert "rebalance.split_ratio" in capsys.readouterr().err
    assert main(["--params", _params(tmp_path, max_splits=1), "--registry", str(reg.root), "rebalance"]) == 2
    assert "rebalance.max_splits" in capsys.readouterr().err


# ---- rebalance.embeddings: auto ----------------------------------------------------------------
def _tiny_dataset(seed: int):
    """``synth``: 24 items, 16 users with 6 interactions each (items drawn ~ 1 / (rank + 1), so a
    few tokens are over-popular), leave-one-out valid / test."""
    from components.data.dataset import Dataset, Split

    rng = np.random.default_rng(seed)
    prob = 1.0 / np.arange(1, 25)
    seqs = [rng.choice(24, size=6, p=prob / prob.sum()).tolist() for _ in range(16)]
    rows = {"train": ([], [], []), "valid": ([], [], []), "test": ([], [], [])}
    for u, seq in enumerate(seqs):
        for t in range(1, 4):
            rows["train"][0].append(u), rows["train"][1].append(seq[:t]), rows["train"][2].append(seq[t])
        for name, t in (("valid", 4), ("test", 5)):
            rows[name][0].append(u), rows[name][1].append(seq[:t]), rows[name][2].append(seq[t])
    splits = {k: Split.from_lists(*v, max_history=5) for k, v in rows.items()}
    return Dataset(name="synth", item_ids=[f"i{i}" for i in range(24)], item_text=[{"title": f"item {i}"} for i in range(24)],
                   user_ids=[f"u{u}" for u in range(16)], sequences=seqs, splits=splits, max_history=5)


def _tiny_stage(root, embed_from: str | None):
    """:func:`_tiny_dataset` (``dataset/synth``) and a 2-level codebook with codewords over it
    (level 0 = item % 3); ``embed_from``: ``None`` = no item-embeddings artifact, ``"same"`` = one
    embedded from the dataset, ``"stale"`` = one embedded from an older version of the dataset."""
    from components.registry import Registry
    from components.tokenizer.encoders import save_embeddings

    reg = Registry(root)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(24, 4)).astype(np.float32)
    if embed_from == "stale":
        old = _tiny_dataset(seed=1).save(reg)
        save_embeddings(reg, emb, old.ref, "synth", "test", {})
    ds_art = _tiny_dataset(seed=0).save(reg)
    e_art = save_embeddings(reg, emb, ds_art.ref, "synth", "test", {}) if embed_from == "same" else None
    i = np.arange(24)
    cw = {0: rng.normal(size=(3, 4)).astype(np.float32), 1: rng.normal(size=(8, 4)).astype(np.float32)}
    cb = Codebook(sids=np.stack([i % 3, i // 3], 1), sizes=[3, 8], item_ids=[f"i{k}" for k in range(24)], method="hand",
                  codewords=cw, dataset_ref=ds_art.ref)
    cb_art = cb.save(reg, "synth-hand", parents=[ds_art], params={})
    return reg, ds_art, cb_art, e_art


def test_default_embeddings_auto_uses_the_datasets_item_embeddings(tmp_path):
    """``rebalance.embeddings`` defaults to ``auto``: with ``item-embeddings/<dataset>`` in the
    registry the residuals come from it, and it is a parent of the output codebook; ``null`` keeps
    the old meaning (codewords) even then."""
    from components.rebalancer.params import RebalanceParams
    from components.rebalancer.pipeline import run_rebalance

    reg, ds_art, cb_art, e_art = _tiny_stage(tmp_path / "artifacts", "same")
    params = RebalanceParams(codebook="synth-hand", split_ratio=1.0, n_init=1)
    assert params.embeddings == "auto"
    out = run_rebalance(reg, params, "synth")
    assert out.artifact.manifest.parents == [cb_art.ref, ds_art.ref, e_art.ref]
    assert out.result.feature_source == "embeddings" and out.metrics["embeddings"] == e_art.ref
    assert out.result.splits  # the skewed toy popularity does split tokens, on these embeddings' residuals
    off = run_rebalance(reg, params.model_copy(update={"embeddings": None, "name": "synth-null"}), "synth")
    assert off.result.feature_source == "codewords" and off.artifact.manifest.parents == [cb_art.ref, ds_art.ref]


@pytest.mark.parametrize("embed_from", [None, "stale"])
def test_default_embeddings_auto_falls_back_without_usable_item_embeddings(tmp_path, embed_from):
    """``auto`` without ``item-embeddings/<dataset>`` (or with one embedded from another dataset
    version: a warning) behaves like ``null``: codeword features, no embeddings parent."""
    from components.rebalancer.params import RebalanceParams
    from components.rebalancer.pipeline import run_rebalance

    reg, ds_art, cb_art, _ = _tiny_stage(tmp_path / "artifacts", embed_from)
    params = RebalanceParams(codebook="synth-hand", split_ratio=1.0, n_init=1)
    if embed_from == "stale":
        with pytest.warns(UserWarning, match=r"not using item-embeddings/synth@\w+ .*was embedded from dataset/synth@"):
            out = run_rebalance(reg, params, "synth")
    else:
        out = run_rebalance(reg, params, "synth")
    assert out.result.feature_source == "codewords" and out.metrics["embeddings"] is None
    assert out.artifact.manifest.parents == [cb_art.ref, ds_art.ref]
