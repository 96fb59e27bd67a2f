"""FlexCode dual codebook: hand-computed pieces, a real-data run on Industrial, CLI and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from components.tokenizer.codebook import Codebook
from components.tokenizer.collisions import add_extra_level
from components.tokenizer.encoders import TfidfEncoder, TokenizerError, embed_dataset
from components.tokenizer.flexcode import (
    CFView,
    allocation_distortion,
    allocation_range,
    cf_tokens_of,
    dual_residual_codes,
    mf_item_embeddings,
    popularity_features,
    split_budget,
    standardize,
)
from components.tokenizer.params import TokenizerParams
from components.tokenizer.tokenize import assign_new_items, build_codebook

SMALL = {"epochs": 4, "batch_size": 1024, "hidden": 32, "latent_dim": 16, "gate_steps": 150, "mf_dim": 16}


def _params(**fc) -> TokenizerParams:
    p = TokenizerParams(encoder="tfidf", tfidf_dim=32, text_fields=["title", "categories"], method="flexcode", codebook_size=32, niter=8)
    p.flexcode = p.flexcode.model_copy(update={**SMALL, **fc})
    return p


# ---- hand-computed pieces ------------------------------------------------------------------------
def test_popularity_features_by_hand():
    f = popularity_features(np.array([0, 1, 3]))
    np.testing.assert_allclose(f[:, 0], [0.0, np.log(2) / np.log(4), 1.0], rtol=1e-6)
    np.testing.assert_allclose(f[:, 1], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(f[:, 2], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(popularity_features(np.array([2, 2, 5]))[:, 1], [0.25, 0.25, 1.0])  # ties averaged


def test_split_budget_by_hand():
    assert split_budget(100, 0, 256) == (100, 0)
    assert split_budget(0, 7, 256) == (0, 7)
    assert split_budget(300, 100, 256) == (192, 64)  # 256 * 100/400 = 64 CF codes
    assert split_budget(1000, 1, 256) == (255, 1)  # a lone CF item still gets its code
    assert split_budget(3, 3, 256) == (3, 3)  # never more codes than items
    with pytest.raises(TokenizerError):
        split_budget(0, 0, 8)


def test_allocation_distortion_by_hand():
    # one item, d=1, L=2: z_s=2 quantized to prefix sums 0, 1, 2; z_c=4 to 0, 3, 4; n=2, lambda=2 -> w_c = 0.5
    zs, zc = torch.tensor([[2.0]]), torch.tensor([[4.0]])
    ps = torch.tensor([[[0.0]], [[1.0]], [[2.0]]])
    pc = torch.tensor([[[0.0]], [[3.0]], [[4.0]]])
    d = allocation_distortion(zs, zc, ps, pc, torch.tensor([2.0]), 2.0, torch.tensor([0, 1, 2]))
    # e_s(j) = (2 - P^s_j)^2 / 4 = [1, .25, 0]; e_c(j) = (4 - P^c_j)^2 / 16 = [1, 1/16, 0]
    # D_k = .5 e_s(2-k) + .5 e_c(k): k=0 -> .5*0 + .5*1 = .5; k=1 -> .5*.25 + .5/16; k=2 -> .5*1 + 0
    np.testing.assert_allclose(d.numpy(), [[0.5, 0.125 + 0.03125, 0.5]], rtol=1e-6)
    cold = allocation_distortion(zs, zc, ps, pc, torch.tensor([0.0]), 2.0, torch.tensor([0, 1, 2]))
    np.testing.assert_allclose(cold.numpy(), [[0.0, 0.25, 1.0]])  # a cold item: semantic error only
    s = standardize(d)
    assert int(s.argmin()) == 1 and abs(float(s.mean())) < 1e-6


def test_dual_codes_layout():
    rng = np.random.default_rng(0)
    n, L = 300, 3
    zs, zc = rng.normal(size=(n, 8)).astype(np.float32), rng.normal(size=(n, 8)).astype(np.float32)
    k = np.repeat([0, 1, 2], 100)
    dual = dual_residual_codes(zs, zc, k, L, 16, niter=5)
    assert dual.split[0] == {"semantic": 16, "cf": 0, "items_semantic": 300, "items_cf": 0}
    assert dual.split[1]["items_cf"] == 100 and dual.split[2]["items_cf"] == 200
    assert dual.split[2]["semantic"] + dual.split[2]["cf"] <= 16 and dual.split[2]["cf"] == 11  # round(16 * 2/3)
    for lvl in range(L):  # tokens of a view stay inside its range
        is_cf = lvl >= L - k
        assert (dual.codes[~is_cf, lvl] < dual.split[lvl]["semantic"]).all()
        assert (dual.codes[is_cf, lvl] >= dual.split[lvl]["semantic"]).all()
        assert dual.codes[:, lvl].max() < dual.sizes[lvl] and dual.codewords[lvl].shape == (dual.sizes[lvl], 8)
    sids, sizes, _ = add_extra_level(dual.codes, dual.sizes)
    cb = Codebook(sids=sids, sizes=sizes, item_ids=[str(i) for i in range(n)], method="flexcode",
                  stats={"flexcode": {"token_split": dual.split}}, codewords=dict(enumerate(dual.codewords)))
    np.testing.assert_array_equal(cf_tokens_of(cb), k)
    with pytest.raises(TokenizerError, match="cf_tokens"):
        dual_residual_codes(zs, zc, np.full(n, 4), L, 16)


def test_mf_item_embeddings():
    # items 0 and 1 are bought by exactly the same users; item 3 never
    seqs = [[0, 1, 2], [0, 1], [2, 2, 4], [4, 0, 1]]
    e = mf_item_embeddings(seqs, 5, dim=3)
    assert e.shape == (5, 3)
    np.testing.assert_allclose(e[0], e[1], atol=1e-5)
    np.testing.assert_allclose(e[3], 0.0)
    with pytest.raises(TokenizerError, match="outside"):
        mf_item_embeddings([[0, 9]], 5)


# ---- real data ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def industrial_flex(industrial):
    torch.set_num_threads(1)
    p = _params()
    emb = embed_dataset(industrial, p, TfidfEncoder(32, seed=0))
    counts = industrial.train_item_counts()
    cf = CFView(mf_item_embeddings(industrial.train_sequences(), industrial.n_items, 16), "mf")
    cb = build_codebook(emb, industrial.item_ids, p, counts, seed=0, cf_view=cf)
    return cb, emb, counts, cf, p


def test_flexcode_on_industrial(industrial_flex, industrial, registry):
    from components.generator.decoding import SIDTrie

    cb, _, counts, _, p = industrial_flex
    L = p.levels
    k = np.asarray(cb.stats["flexcode"]["cf_tokens"])
    # budget: every item spends exactly L quantized tokens, 0..L-1 of them on the CF codebook
    lo, hi = allocation_range(L, p.flexcode)
    assert (lo, hi) == (0, L - 1) and k.min() >= lo and k.max() <= hi
    np.testing.assert_array_equal(cf_tokens_of(cb), k)
    split = cb.stats["flexcode"]["token_split"]
    for lvl in range(L):
        is_cf = cb.sids[:, lvl] >= split[lvl]["semantic"]
        np.testing.assert_array_equal(is_cf, lvl >= L - k)  # semantic tokens first, then CF
        assert split[lvl]["semantic"] + split[lvl]["cf"] == cb.sizes[lvl] <= p.codebook_size
    assert split[0]["cf"] == 0  # level 0 stays semantic
    # popularity-aware: head items (top 20% by training count) get fewer semantic tokens than tail items
    order = np.argsort(counts, kind="stable")
    head, tail = order[-len(order) // 5 :], order[: -len(order) // 5]
    sem = L - k
    assert sem[tail].mean() > sem[head].mean()
    assert k.min() < k.max()  # the gate really splits the catalog
    a = cb.stats["flexcode"]["allocation"]
    assert a["mean_cf_tokens_by_group"] == sorted(a["mean_cf_tokens_by_group"])  # monotone in popularity
    # unique SIDs, consistent tree, decodable, artifact round trip (which re-checks the stored tree)
    assert cb.n_collisions() == 0 and cb.stats["collisions"] == 0
    assert len(cb.lookup()) == cb.n_items
    for lvl in range(1, cb.n_levels):
        prefixes = np.unique(cb.sids[:, : lvl + 1], axis=0)
        assert {(r[-2], r[-1]) for r in prefixes.tolist()} == {tuple(e) for e in cb.edges(lvl).tolist()}
    trie = SIDTrie(cb.sids, cb.sizes)
    assert trie.n_items == cb.n_items
    art = cb.save(registry, "industrial-flexcode", parents=[], params={"tokenizer": p.model_dump(mode="json")})
    back = Codebook.from_artifact(registry.load(art.ref))
    np.testing.assert_array_equal(back.sids, cb.sids)
    assert back.stats["flexcode"]["cf_tokens"] == k.tolist() and back.method == "flexcode"


def test_flexcode_bad_input(industrial_flex, industrial):
    cb, emb, counts, cf, p = industrial_flex
    with pytest.raises(TokenizerError, match="extra_level"):
        build_codebook(emb, industrial.item_ids, p.model_copy(update={"collisions": "reassign"}), counts, cf_view=cf)
    with pytest.raises(TokenizerError, match="CF item vectors"):
        build_codebook(emb, industrial.item_ids, p, counts)
    with pytest.raises(TokenizerError, match="popularity"):
        build_codebook(emb, industrial.item_ids, p, None, cf_view=cf)
    with pytest.raises(TokenizerError):
        build_codebook(emb, industrial.item_ids, p, counts, cf_view=CFView(cf.embeddings[:10], "mf"))
    with pytest.raises(TokenizerError, match="max_cf_tokens"):
        allocation_range(3, p.flexcode.model_copy(update={"max_cf_tokens": 4}))
    with pytest.raises(TokenizerError, match="min_cf_tokens"):
        allocation_range(3, p.flexcode.model_copy(update={"min_cf_tokens": 2, "max_cf_tokens": 1}))
    with pytest.raises(TokenizerError, match="new items"):
        assign_new_items(cb, emb[:2])


def test_fixed_allocation(industrial_flex, industrial):
    _, emb, counts, cf, p = industrial_flex
    # min = max = 1: every item gets exactly one CF token, whatever the gate says
    q = p.model_copy(update={"flexcode": p.flexcode.model_copy(update={"min_cf_tokens": 1, "max_cf_tokens": 1, "epochs": 1, "gate_steps": 5})})
    cb = build_codebook(emb, industrial.item_ids, q, counts, seed=0, cf_view=cf)
    assert set(cb.stats["flexcode"]["cf_tokens"]) == {1} and cb.n_collisions() == 0


def test_cli_tokenize_flexcode(industrial, registry, tmp_path):
    from components.cli import main

    sets = ["--set", "tokenizer.encoder=tfidf", "--set", "tokenizer.tfidf_dim=32", "--set", "tokenizer.method=flexcode",
            "--set", "tokenizer.codebook_size=32", "--set", "tokenizer.text_fields=[title]",
            *[x for k, v in SMALL.items() for x in ("--set", f"tokenizer.flexcode.{k}={v}")], "--set", "tokenizer.flexcode.epochs=1"]
    common = ["--registry", str(registry.root), *sets]
    industrial.save(registry)
    assert main([*common, "embed"]) == 0
    metrics = tmp_path / "tok.json"
    assert main([*common, "tokenize", "--metrics-out", str(metrics)]) == 0
    m = json.loads(metrics.read_text())
    assert m["method"] == "flexcode" and m["collisions"] == 0 and m["flexcode"]["cf_source"] == "mf"
    assert "cf_tokens" not in m["flexcode"]  # the per-item allocation stays in the artifact
    art = registry.load("codebook/industrial-flexcode@latest")
    assert len(Codebook.from_artifact(art).stats["flexcode"]["cf_tokens"]) == industrial.n_items


def test_cf_view_sources(industrial, registry):
    from components.evaluation.baselines.sasrec import SASRec, SASRecConfig
    from components.registry import ArtifactNotFound
    from components.tokenizer.flexcode import load_cf_view

    fp = TokenizerParams().flexcode.model_copy(update={"mf_dim": 8})
    with pytest.raises(ArtifactNotFound):
        load_cf_view(registry, industrial, "industrial", fp.model_copy(update={"cf_source": "sasrec"}))
    v = load_cf_view(registry, industrial, "industrial", fp)  # auto without a SASRec artifact: mf
    assert v.source == "mf" and v.ref is None and v.embeddings.shape == (industrial.n_items, 8)
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=industrial.n_items, d_model=16, n_heads=2))
    art = model.save(registry, "industrial-sasrec", parents=[], params={})
    v = load_cf_view(registry, industrial, "industrial", fp)  # auto with it: SASRec's E[i]
    assert v.source == "sasrec" and v.ref == art.ref
    np.testing.assert_allclose(v.embeddings, model.item_embeddings())
    SASRec(SASRecConfig(n_items=10, d_model=16, n_heads=2)).save(registry, "small-sasrec", parents=[], params={})
    with pytest.raises(TokenizerError, match="10 item embeddings"):
        load_cf_view(registry, industrial, "industrial", fp.model_copy(update={"sasrec_model": "model/small-sasrec@latest"}))


def test_rebalancer_takes_flexcode_codebook(industrial_flex):
    from components.rebalancer import rebalance_codebook

    cb, emb, counts, _, _ = industrial_flex
    res = rebalance_codebook(cb, counts, embeddings=emb, n_init=1, seed=0)
    out = res.codebook
    assert out.n_collisions() == 0 and out.n_items == cb.n_items
    assert res.semantic_levels == cb.stats["semantic_levels"] == 3  # the disambiguation level is left alone
    np.testing.assert_array_equal(out.sids[:, -1], cb.sids[:, -1])
    assert sum(out.sizes) >= sum(cb.sizes)
