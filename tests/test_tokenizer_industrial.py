"""The three tokenizer methods on real Industrial data (TF-IDF embeddings, small codebooks)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from components.registry import ArtifactIncompatible
from components.tokenizer.codebook import Codebook
from components.tokenizer.encoders import TfidfEncoder, embed_dataset, load_embeddings, save_embeddings
from components.tokenizer.params import TokenizerParams
from components.tokenizer.rq_kmeans import quantize
from components.tokenizer.tokenize import assign_new_items, build_codebook, load_codebook

TFIDF = TokenizerParams(encoder="tfidf", tfidf_dim=48)


@pytest.fixture(scope="module")
def tfidf_emb(industrial):
    return embed_dataset(industrial, TFIDF, TfidfEncoder(48, seed=0))


def _params(method: str, collisions: str) -> TokenizerParams:
    p = TFIDF.model_copy(update={"method": method, "collisions": collisions, "codebook_size": 32, "niter": 10, "balanced_iters": 3})
    p.rqvae = p.rqvae.model_copy(update={"hidden": [64], "latent_dim": 16, "epochs": 15, "dead_code_every": 5, "device": "cpu"})
    return p


def _check_tree(cb: Codebook) -> None:
    # every SID decodes back to its own item
    lookup = cb.lookup()
    assert len(lookup) == cb.n_items
    assert all(lookup[tuple(int(t) for t in row)] == i for i, row in enumerate(cb.sids))
    # prefix tree: each node at level l has exactly one parent, and edges are exactly the SIDs' pairs
    for lvl in range(1, cb.n_levels):
        prefixes = np.unique(cb.sids[:, : lvl + 1], axis=0)
        parents = {tuple(r[:-1]) for r in prefixes.tolist()}
        assert parents == {tuple(r) for r in np.unique(cb.sids[:, :lvl], axis=0).tolist()}
        edges = {tuple(e) for e in cb.edges(lvl).tolist()}
        assert edges == {(r[-2], r[-1]) for r in prefixes.tolist()}


@pytest.mark.parametrize(
    "method,collisions",
    [("rqkmeans", "extra_level"), ("rqkmeans", "reassign"), ("balanced", "reassign"), ("rqvae", "extra_level")],
)
def test_methods_give_unique_decodable_sids(industrial, tfidf_emb, registry, method, collisions):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    counts = industrial.train_item_counts()
    dart = industrial.save(registry)
    p = _params(method, collisions)
    cb = build_codebook(tfidf_emb, industrial.item_ids, p, counts, seed=0, dataset_ref=dart.ref)
    s = cb.stats
    assert cb.n_collisions() == 0 and s["collisions"] == 0
    assert s["collisions_raw"] > 0 and s["collisions_resolved"] == s["collisions_raw"]
    assert cb.n_levels == (3 if collisions == "reassign" else 4)
    assert len(s["levels"]) == cb.n_levels
    for lv in s["levels"][:3]:
        assert 0 < lv["utilization"] <= 1 and 0 <= lv["gini"] < 1 and lv["quant_error"] >= 0
    # quantization error never grows with depth
    qe = [lv["quant_error"] for lv in s["levels"][:3]]
    assert qe[0] >= qe[1] >= qe[2] or collisions == "reassign"
    if method == "balanced":  # ceil(3686 / 32) = 116 items per code; reassign keeps it but for a few items
        mx = [lv["max_items_per_token"] for lv in s["levels"]]
        assert mx[0] <= 116 and mx[1] <= 116 and mx[2] <= 116 * 1.05, mx
    _check_tree(cb)
    # round trip through the registry (from_artifact re-checks the stored tree)
    art = cb.save(registry, f"industrial-{method}", parents=[dart.ref], params={"tokenizer": p.model_dump(mode="json")})
    cb2, _ = load_codebook(registry, art.ref, dataset_art=dart, item_ids=industrial.item_ids)
    np.testing.assert_array_equal(cb2.sids, cb.sids)
    # new items (here: perturbed copies of existing items) get fresh, non-colliding SIDs
    new = assign_new_items(cb2, tfidf_emb[:50] + 0.01)
    rows = {tuple(r) for r in new.tolist()}
    assert len(rows) == 50 and not rows & set(cb.lookup())
    if method == "rqvae":  # the stored encoder reproduces the training latents' codes
        from components.tokenizer.rq_vae import encode_latents

        z = encode_latents(tfidf_emb, cb2.encoder_weights, cb2.encoder_config)
        codes, _ = quantize(z, [cb2.codewords[lvl] for lvl in range(3)])
        assert (codes == cb.sids[:, :3]).all(axis=1).mean() > 0.99


def test_codebook_size_above_item_count(industrial, tfidf_emb):
    p = _params("rqkmeans", "extra_level").model_copy(update={"codebook_size": 5000})
    with pytest.raises(ValueError, match="larger than the item count 3686"):
        build_codebook(tfidf_emb, industrial.item_ids, p)


def test_artifacts_from_another_dataset_are_refused(industrial, ml100k, tfidf_emb, registry):
    dart = industrial.save(registry)
    other = ml100k.save(registry)
    eart = save_embeddings(registry, tfidf_emb, dart.ref, "industrial", "tfidf-48", {})
    with pytest.raises(ArtifactIncompatible, match="run `genrec embed` again"):
        load_embeddings(eart, dataset_ref=other.ref)
    cb = build_codebook(tfidf_emb, industrial.item_ids, _params("rqkmeans", "extra_level"))
    art = cb.save(registry, "industrial-rqkmeans", parents=[dart.ref, eart.ref], params={})
    with pytest.raises(ArtifactIncompatible, match="not dataset/ml-100k"):
        load_codebook(registry, art.ref, dataset_art=other)


def test_cli_embed_tokenize_and_new_items(industrial, registry, tmp_path):
    from components.cli import main

    industrial.save(registry)
    common = ["--registry", str(registry.root), "--set", "tokenizer.encoder=tfidf", "--set", "tokenizer.tfidf_dim=32", "--set", "tokenizer.codebook_size=16", "--set", "tokenizer.niter=5",
              "--set", "tokenizer.method=rqkmeans"]
    assert main([*common, "embed"]) == 0
    metrics, png = tmp_path / "m" / "tokenizer.json", tmp_path / "p.png"
    assert main([*common, "tokenize", "--metrics-out", str(metrics), "--plot-out", str(png)]) == 0
    m = json.loads(metrics.read_text())
    assert m["collisions"] == 0 and m["codebook"].startswith("codebook/industrial-rqkmeans@") and len(m["levels"]) >= 3
    assert png.read_bytes()[:4] == b"\x89PNG"
    cb = Codebook.from_artifact(registry.load(m["codebook"]))
    assert cb.stats["embedding_config"]["encoder"] == "tfidf-32" and cb.stats["embedding_config"]["text_fields"] == ["title", "brand", "categories", "description"]
    # tokenizer.stream: the memory-mapped, chunked quantizer; its sample covers every item here, so the SIDs are the same
    assert main([*common, "--set", "tokenizer.stream=always", "--set", "tokenizer.stream_chunk=500", "tokenize", "--name", "streamed"]) == 0
    streamed = Codebook.from_artifact(registry.load("codebook/streamed@latest"))
    np.testing.assert_array_equal(streamed.sids, cb.sids)
    assert streamed.stats["embedding_config"] == cb.stats["embedding_config"]
    assert main([*common, "--set", "tokenizer.stream=always", "--set", "tokenizer.method=balanced", "tokenize", "--name", "no"]) == 2
    # online items: tfidf cannot embed unseen text, embeddings of the wrong width are refused
    (tmp_path / "new.json").write_text(json.dumps({"n1": {"title": "steel staples"}}))
    assert main([*common, "tokenize-items", str(tmp_path / "new.json")]) == 2
    np.save(tmp_path / "bad.npy", np.ones((2, 7), dtype=np.float32))
    assert main([*common, "tokenize-items", str(tmp_path / "bad.npy")]) == 2
    emb = registry.load("item-embeddings/industrial@latest").load_numpy("embeddings.npy")
    np.save(tmp_path / "ok.npy", emb[:3])
    assert main([*common, "tokenize-items", str(tmp_path / "ok.npy"), "--out", str(tmp_path / "sids.json")]) == 0
    assert len(json.loads((tmp_path / "sids.json").read_text())["sids"]) == 3


def test_minilm_encoder_offline():
    from components.tokenizer.encoders import SentenceTransformerEncoder

    enc = SentenceTransformerEncoder(None, device="cpu", progress=False)
    e = enc.encode(["title: steel staples 1/2 inch", "title: steel staples, half inch", "title: latex gloves"])
    assert e.shape == (3, 384) and enc.name == "minilm"
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-4)
    assert e[0] @ e[1] > e[0] @ e[2]  # paraphrases are closer than unrelated items
