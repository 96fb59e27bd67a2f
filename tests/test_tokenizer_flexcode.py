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
    new_item_codes,
    popularity_features,
    split_budget,
    standardize,
    token_views,
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
    assert cb.stats["flexcode"]["shrinkage"] == 5.0 and (k[counts < 5] == 0).all()  # tail rule: n < lambda keeps every semantic token
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
    legacy = Codebook(sids=cb.sids, sizes=cb.sizes, item_ids=cb.item_ids, method="flexcode", codewords=cb.codewords, stats=cb.stats)
    with pytest.raises(TokenizerError, match="no semantic encoder"):  # an artifact from before new-item support
        assign_new_items(legacy, emb[:2])
    with pytest.raises(TokenizerError, match="new item embeddings"):
        assign_new_items(cb, emb[:2, :5])


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
    assert sum(out.sizes) > sum(cb.sizes)
    np.testing.assert_array_equal(cf_tokens_of(out), cf_tokens_of(cb))  # split tokens stay in their view


# ---- synthetic cases (issue #16): what the allocation may and may not depend on -------------------
TINY = {"epochs": 2, "batch_size": 256, "hidden": 16, "latent_dim": 8, "gate_steps": 150}


def _tiny_params(levels: int = 3, size: int = 8, **fc) -> TokenizerParams:
    p = TokenizerParams(method="flexcode", levels=levels, codebook_size=size, niter=8)
    p.flexcode = p.flexcode.model_copy(update={**TINY, **fc})
    return p


def _hierarchy(rng, n: int, d: int, scales=(1.0, 0.7, 0.5), offset: int = 0, width: int | None = None) -> np.ndarray:
    """``x = Σ_l scale_l · C_l[a_l]``, 8 random codes per level in dims ``[offset, offset + width)``:
    every residual-quantization level carries part of the vector."""
    width = width or d
    x = np.zeros((n, d))
    for s in scales:
        c = rng.normal(size=(8, width))
        x[:, offset : offset + width] += s * c[rng.integers(0, 8, n)]
    return x


def _build(xs: np.ndarray, xc: np.ndarray, counts: np.ndarray, p: TokenizerParams, seed: int = 0) -> Codebook:
    torch.set_num_threads(1)
    return build_codebook(xs.astype(np.float32), [str(i) for i in range(len(xs))], p, np.asarray(counts), seed=seed, cf_view=CFView(xc.astype(np.float32), "mf"))


def _catalog(seed: int = 0, n: int = 300):
    """Semantic and CF views with 3-level structure and long-tailed counts (cold, single-interaction, head)."""
    rng = np.random.default_rng(seed)
    xs, xc = _hierarchy(rng, n, 24), _hierarchy(rng, n, 12)
    counts = np.minimum(rng.zipf(1.5, n) - 1, 300)
    counts[rng.permutation(n)[:15]] = 0
    return xs, xc, counts


def test_gate_sees_both_views_not_only_popularity():
    """Every item has 6 interactions. Group A: the text is one of 4 tight clusters (one semantic token
    carries it) while the CF vector has a 3-level structure (every CF token adds precision); group B:
    the text has the 3-level structure and the CF vector is isotropic noise (no CF code helps). An MoE
    over the two views gives A its CF tokens and keeps B semantic; a gate over popularity features
    alone must give both groups the same allocation."""
    rng = np.random.default_rng(0)
    m, d_s, d_c = 150, 32, 48
    xs_a = np.eye(d_s)[rng.integers(0, 4, m)] + 0.01 * rng.normal(size=(m, d_s))
    xc_a = _hierarchy(rng, m, d_c)
    xs_b = _hierarchy(rng, m, d_s, offset=d_s // 2, width=d_s // 2)
    xc_b = rng.normal(size=(m, d_c))
    cb = _build(np.concatenate([xs_a, xs_b]), np.concatenate([xc_a, xc_b]), np.full(2 * m, 6), _tiny_params())
    k = cf_tokens_of(cb)
    np.testing.assert_array_equal(k, cb.stats["flexcode"]["cf_tokens"])
    a, b = k[:m], k[m:]
    assert (a == 2).mean() > 0.9, np.bincount(a)
    assert (b == 0).mean() > 0.5 and a.mean() - b.mean() > 1.0, (np.bincount(a, minlength=3), np.bincount(b, minlength=3))


def _lognormal_catalog(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noisy 3-level views and log-normal counts (median ~6, like Industrial's training counts)."""
    rng = np.random.default_rng(seed)
    xs = _hierarchy(rng, n, 24) + 0.2 * rng.normal(size=(n, 24))
    xc = _hierarchy(rng, n, 12) + 0.2 * rng.normal(size=(n, 12))
    return xs, xc, np.round(np.exp(rng.normal(1.8, 1.0, n))).astype(int)


def test_allocation_does_not_depend_on_training_length():
    """The allocation is decided on the input views with its own seed: the number of epochs (and the
    latent's learning rate) cannot move it. Before, on this catalog, 1 epoch gave 399 of the 400
    items 2 CF tokens and 8 epochs (lr 0.01) gave every item 1."""
    xs, xc, counts = _lognormal_catalog(1, 400)
    ks = [np.asarray(_build(xs, xc, counts, _tiny_params(**kw)).stats["flexcode"]["cf_tokens"]) for kw in ({"epochs": 1}, {"epochs": 8, "lr": 1e-2})]
    assert len(np.unique(ks[0])) == 3
    np.testing.assert_array_equal(ks[0], ks[1])


def test_shrinkage_is_a_fixed_prior_not_the_median():
    """Adding 300 popular items (~55 interactions each) to a catalog of 300 moves the median count
    (the old lambda) from 6 to 25 and, with it, the CF weight of every original item, whose counts
    did not change (before: 7% of them kept their allocation). With lambda a fixed prior (5
    interactions) they keep it (all but a few: the gate is trained on the whole catalog) and the
    tail rule keeps its threshold n < 5."""
    xs, xc, counts = _lognormal_catalog(1, 600)
    m = 300
    more = np.round(np.exp(np.random.default_rng(10).normal(4, 0.5, 300))).astype(int)
    ka = np.asarray(_build(xs[:m], xc[:m], counts[:m], _tiny_params()).stats["flexcode"]["cf_tokens"])
    cb = _build(xs, xc, np.r_[counts[:m], more], _tiny_params())
    kb = np.asarray(cb.stats["flexcode"]["cf_tokens"])[:m]
    assert len(np.unique(ka)) > 1
    assert (ka == kb).mean() >= 0.9, (np.bincount(ka, minlength=3), np.bincount(kb, minlength=3))
    assert (ka[counts[:m] < 5] == 0).all() and (kb[counts[:m] < 5] == 0).all()
    assert cb.stats["flexcode"]["shrinkage"] == 5.0


def test_unreliable_cf_items_keep_all_semantic_tokens():
    """Most items have a single interaction and their CF vectors look perfectly structured (one
    CF code would place each of them): a single interaction is still no reliable CF evidence, so
    they keep all L semantic tokens (tail robustness), and the last level's semantic range is large
    enough to tell them apart; the popular items still get CF tokens."""
    rng = np.random.default_rng(3)
    n = 300
    xs = _hierarchy(rng, n, 24) + 0.3 * rng.normal(size=(n, 24))
    xc = np.eye(12)[rng.integers(0, 6, n)] + 0.001 * rng.normal(size=(n, 12))
    counts = np.where(rng.random(n) < 0.6, 1, rng.integers(2, 60, n))
    p = _tiny_params(size=16)
    cb = _build(xs, xc, counts, p)
    k, L = cf_tokens_of(cb), p.levels
    one = counts == 1
    assert (k[one] == 0).all() and (k[counts < 5] == 0).all()
    assert k[counts >= 20].mean() > 0.5  # still popularity-aware
    split = cb.stats["flexcode"]["token_split"]
    assert split[L - 1]["items_semantic"] >= one.sum() and split[L - 1]["semantic"] >= p.codebook_size // 2
    tail_sids = cb.sids[one, :L]
    assert len(np.unique(tail_sids, axis=0)) >= 0.8 * one.sum()  # semantic resolution: few tail items share a full semantic SID
    assert cb.stats["flexcode"]["tail_items_all_semantic"] == int((counts < 5).sum())


@pytest.fixture(scope="module")
def tiny_flex():
    xs, xc, counts = _catalog(4)
    p = _tiny_params()
    return _build(xs, xc, counts, p), xs, xc, counts, p


def test_new_items_get_semantic_tokens(tiny_flex, registry):
    from components.tokenizer.online import extend_codebook

    cb, xs, _, _, p = tiny_flex
    L = p.levels
    k = cf_tokens_of(cb)
    assert cb.encoder_config["kind"] == "flexcode-semantic" and cb.input_dim == xs.shape[1]
    semantic = np.flatnonzero(k == 0)[:40]  # all-semantic catalog items, their text re-sent as new items
    new = assign_new_items(cb, xs[semantic] * 1.0001)
    taken = {tuple(r) for r in cb.sids.tolist()}
    assert len({tuple(r) for r in new.tolist()}) == len(new) and not taken & {tuple(r) for r in new.tolist()}
    assert (new[:, : L - 1] == cb.sids[semantic, : L - 1]).all()  # the catalog's semantic codes (the last level may move to a free SID)
    np.testing.assert_array_equal(new_item_codes(cb, xs[semantic]), cb.sids[semantic, :L])
    ext, _ = extend_codebook(cb, [f"new-{i}" for i in range(len(new))], xs[semantic] * 1.0001)
    assert ext.n_collisions() == 0 and (cf_tokens_of(ext)[cb.n_items :] == 0).all()
    assert len(ext.stats["flexcode"]["cf_tokens"]) == ext.n_items
    back = Codebook.from_artifact(registry.load(ext.save(registry, "tiny-flex", parents=[], params={}).ref))
    np.testing.assert_array_equal(assign_new_items(back, xs[:3] + 0.5), assign_new_items(ext, xs[:3] + 0.5))


def test_new_items_with_a_cold_cf_part():
    """min_cf_tokens = 1: a cold item's CF token quantizes its (aligned) semantic latent, in the
    catalog and for a new item alike, so a new item with a cold catalog item's text gets its codes."""
    xs, xc, counts = _catalog(5)
    p = _tiny_params(min_cf_tokens=1)
    cb = _build(xs, xc, counts, p)
    k = cf_tokens_of(cb)
    assert k.min() == 1 and (k[counts == 0] == 1).all() and cb.stats["flexcode"]["cold_cf_tokens"] == 1
    cold = np.flatnonzero(counts == 0)
    np.testing.assert_array_equal(new_item_codes(cb, xs[cold] * 1.0001), cb.sids[cold, : p.levels])
    new = assign_new_items(cb, xs[cold] * 1.0001)
    assert new.shape == (len(cold), cb.n_levels) and not {tuple(r) for r in cb.sids.tolist()} & {tuple(r) for r in new.tolist()}
    views = token_views(cb)
    assert all(views[lvl][new[:, lvl]].tolist() == [lvl == p.levels - 1] * len(new) for lvl in range(p.levels))


def test_crab_on_flexcode_keeps_views_and_new_items(tiny_flex):
    from components.rebalancer import rebalance_codebook

    cb, xs, _, counts, p = tiny_flex
    res = rebalance_codebook(cb, counts, split_ratio=0.3, n_init=1, seed=0)
    out = res.codebook
    grown = [lvl for lvl in range(p.levels) if out.sizes[lvl] > cb.sizes[lvl]]
    assert grown and res.splits
    np.testing.assert_array_equal(cf_tokens_of(out), cf_tokens_of(cb))
    views, before = token_views(out), token_views(cb)
    for s in res.splits:  # every token a split made has its origin's view
        assert all(views[s.level][t] == before[s.level][s.token] for t in s.new_tokens)
    twice = rebalance_codebook(out, counts, split_ratio=0.3, n_init=1, seed=1).codebook  # chained rebalancing
    np.testing.assert_array_equal(cf_tokens_of(twice), cf_tokens_of(cb))
    new = assign_new_items(twice, xs[:10] + 0.3)  # the encoder travels with the rebalanced codebook
    assert not {tuple(r) for r in twice.sids.tolist()} & {tuple(r) for r in new.tolist()}
    assert (np.stack([token_views(twice)[lvl][new[:, lvl]] for lvl in range(p.levels)], 1).sum(1) == 0).all()
