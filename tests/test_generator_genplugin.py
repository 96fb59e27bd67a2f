"""GenPlugin head: substitution, contrastive / KL losses, retrieval augmentation, fallback, checkpoints, CLI."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from components.generator.heads.genplugin import (EXTRA_NBR_MASK, EXTRA_NBR_STATES, GenPluginError, GenPluginHead,
                                                  _info_nce, symmetric_kl)
from components.generator.model import GenerativeRecommender
from components.generator.vocab import SIDVocab
from tests.generator_helpers import random_sids, synthetic_dataset, tiny_backbone

SIZES = [3, 2, 2]
D = 32


def _model(n_items=12, max_items=4, seed=0, **cfg):
    torch.manual_seed(seed)
    vocab = SIDVocab(random_sids(SIZES, n_items, seed=seed), SIZES)
    head = GenPluginHead(D, n_items=n_items, text_dim=8, lan_heads=2, lan_ff=32, proj_hidden=16, dropout=0.0, **cfg)
    head.item_text.copy_(torch.randn(n_items, 8, generator=torch.Generator().manual_seed(seed)))
    return GenerativeRecommender(tiny_backbone("tiger", vocab), [head], max_items=max_items), head


@pytest.fixture
def one_thread():
    """Tiny models decode faster on one thread (and do not fight the box's other jobs for cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _batch(model, rows, targets):
    return model.encode_history(rows), model.vocab.encode_targets(np.asarray(targets))


# ---- pure functions: hand-computed ---------------------------------------------------------------
def test_info_nce_and_symmetric_kl_hand_computed():
    u = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    v = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    # cosines: row0 = [1, 1/sqrt2], row1 = [0, 1/sqrt2]; τ = 0.5
    c = 1 / math.sqrt(2)
    want = (-math.log(math.exp(2) / (math.exp(2) + math.exp(2 * c))) - math.log(math.exp(2 * c) / (1 + math.exp(2 * c)))) / 2
    assert _info_nce(u, v, 0.5).item() == pytest.approx(want, rel=1e-5)
    # same-item mask removes the off-diagonal negative: loss 0
    assert _info_nce(u, v, 0.5, torch.ones(2, 2, dtype=torch.bool)).item() == pytest.approx(0.0, abs=1e-6)
    za = torch.tensor([[[0.0, math.log(3.0)]]])  # softmax (φ=1): [1/4, 3/4]
    zb = torch.tensor([[[0.0, 0.0]]])  # [1/2, 1/2]
    p, q = np.array([0.25, 0.75]), np.array([0.5, 0.5])
    want = float((p * np.log(p / q)).sum() + (q * np.log(q / p)).sum())
    assert symmetric_kl(za, zb, 1.0).item() == pytest.approx(want, rel=1e-5)
    assert symmetric_kl(za, za, 0.7).item() == pytest.approx(0.0, abs=1e-7)
    # φ sharpens: φ = 0.5 squares the odds → [1/10, 9/10]
    p2 = np.array([0.1, 0.9])
    want2 = float((p2 * np.log(p2 / q)).sum() + (q * np.log(q / p2)).sum())
    assert symmetric_kl(za, zb, 0.5).item() == pytest.approx(want2, rel=1e-5)


# ---- SSG -----------------------------------------------------------------------------------------
def test_substitution_changes_teacher_inputs_only_in_training():
    model, head = _model(p1=0.0, p2=0.0, q=2)  # every sample guided, every token (t >= 1) replaced
    hist, tg = _batch(model, [[0, 1], [2, 3, 4], [5]], [6, 7, 8])
    ctx = model.context(hist, {"targets": tg})
    from components.generator.vocab import BOS

    prev = torch.cat([torch.full((3, 1), BOS), tg[:, :-1]], 1)
    emb = model.backbone.embed(prev)
    model.eval()
    assert torch.equal(head.teacher_inputs(emb, tg, ctx), emb)
    model.train()
    out = head.teacher_inputs(emb, tg, ctx)
    assert torch.equal(out[:, 0], emb[:, 0])  # BOS kept
    assert not torch.allclose(out[:, 1:], emb[:, 1:])
    # hand check of one substitute: softmax over the top-2 level-0 language logits weighting their embeddings
    z = ctx.extras["genplugin.lan"]["logits"][0, 0].detach()
    lo, hi = model.vocab.level_range(0)
    val, idx = z[lo:hi].topk(2)
    w = torch.softmax(val, 0)
    want = (w[:, None] * model.backbone.embed(idx + lo)).sum(0)
    assert torch.allclose(out[0, 1], want, atol=1e-6)
    # p1 = 1: always plain teacher forcing; ssg off: never substituted
    for kw in ({"p1": 1.0, "p2": 0.0}, {"ssg": False, "p1": 0.0, "p2": 0.0}):
        m2, h2 = _model(**kw)
        m2.train()
        ctx2 = m2.context(hist, {"targets": tg})
        e2 = m2.backbone.embed(prev)
        assert torch.equal(h2.teacher_inputs(e2, tg, ctx2), e2)


def test_forward_losses_and_ablation_switches():
    rows, tg = [[0, 1], [2, 3, 4], [5], [6, 7]], [8, 9, 10, 11]
    model, _ = _model()
    hist, t = _batch(model, rows, tg)
    model.train()
    keys = set(model(hist, t).losses)
    assert keys == {"rec", "genplugin.lan", "genplugin.kl", "genplugin.item", "genplugin.user"}
    model.eval()
    assert set(model(hist, t).losses) == {"rec"}
    m2, _ = _model(dsa=False, ssg=False)
    m2.train()
    assert set(m2(hist, t).losses) == {"rec", "genplugin.lan"}


def test_contrastive_loss_decreases_on_a_tiny_batch():
    model, head = _model(n_items=12)
    hist, _ = _batch(model, [[0, 1, 2], [3, 4], [5, 6, 7, 8], [9, 10], [11, 0]], [1, 2, 3, 4, 5])
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    vals = []
    for _ in range(12):
        ctx = model.context(hist)
        h, valid = head.language_states(ctx.extras["items"])
        li, lu = head.alignment_losses(ctx, h, valid)
        loss = li + lu
        opt.zero_grad()
        loss.backward()
        opt.step()
        vals.append(float(loss.detach()))
    assert vals[-1] < 0.7 * vals[0], vals


def test_empty_history_rows_are_safe():
    model, head = _model()
    model.train()
    hist, t = _batch(model, [[], [1, 2]], [3, 4])
    out = model(hist, t)
    assert all(torch.isfinite(v) for v in out.losses.values())


# ---- RAR -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth():
    ds = synthetic_dataset(n_items=24, n_users=40)
    from components.retrieval.retriever import UserRetriever

    emb = np.random.default_rng(0).normal(size=(ds.n_items, 8)).astype(np.float32)
    return ds, emb, UserRetriever.build(ds, emb, fields=("title",), dataset_ref="dataset/synth@x")


def _synth_model(ds, emb, **cfg):
    torch.manual_seed(0)
    sizes = [3, 4, 2]
    vocab = SIDVocab(random_sids(sizes, ds.n_items), sizes)
    head = GenPluginHead(D, n_items=ds.n_items, text_dim=emb.shape[1], lan_heads=2, lan_ff=32, proj_hidden=16,
                         dataset="dataset/synth@x", **cfg)
    head.item_text.copy_(torch.from_numpy(emb))
    return GenerativeRecommender(tiny_backbone("tiger", vocab), [head], max_items=ds.max_history), head


def _id_view_neighbours(head, r, hist, user, z, v):
    """§3.3 by hand: BM25 top-z ∪ faiss top-z, users of both paths first, then by cosine of the ID-view q."""
    from components.retrieval.retriever import union

    a, c, _ = r.candidates(history=hist, z=z, exclude_user=user)
    cands = union(a, c).tolist()
    reps = F.normalize(head.neighbor_representations([r.train_histories[u][-head.model.max_items:] for u in cands]), dim=-1)
    q = F.normalize(head.neighbor_representations([hist]), dim=-1)[0]
    cos = (reps @ q).tolist()
    both = set(a.tolist()) & set(c.tolist())
    return [u for _, _, u in sorted((u not in both, -cs, u) for u, cs in zip(cands, cos))][:v]


def test_rar_appends_neighbours(synth):
    ds, emb, r = synth
    model, head = _synth_model(ds, emb, v=3, z=6, rar_active=True)
    head.set_retriever(r)
    rows = [[0, 1, 2], [5, 6]]
    hist = model.encode_history(rows)
    model.eval()
    ctx = model.context(hist)
    S = hist.tokens.shape[1]
    assert ctx.states.shape[1] == S + 3 and ctx.mask[:, S:].all() and (ctx.levels[:, S:] == -1).all()
    # the appended states are the neighbours' cached representations + the neighbour-type vector
    nb = _id_view_neighbours(head, r, rows[0], None, z=6, v=3)
    want = head.neighbor_representations([r.train_histories[u][-ds.max_history:] for u in nb], keys=[("u", u) for u in nb])
    assert torch.allclose(ctx.states[0, S:], want + head.nbr_type, atol=1e-5)
    assert len(head.rep_cache) >= 3 and head.rep_cache.hits > 0
    # decoding works with the augmentation
    from components.generator.decoding import SIDTrie, constrained_beam_search

    trie = SIDTrie(model.vocab.sids, [3, 4, 2])
    res = constrained_beam_search(model.eval(), hist, trie, beam=5, k=5)
    assert (res.items >= 0).all()


def test_rar_neighbours_same_at_finetuning_and_ranking_and_never_the_query_user(synth, one_thread):
    """Issue #15 (4): training banned every holder of the target, ranking banned no one (so a user
    retrieved itself). Both now exclude exactly the query user (the index holds only training
    interactions, so only the user's own indexed history holds its target)."""
    from components.generator.decoding import SIDTrie
    from components.generator.ranking import rank_histories

    ds, emb, r = synth
    model, head = _synth_model(ds, emb, v=3, z=6, rar_active=True)
    head.set_retriever(r)
    tr = ds.splits["train"]
    sel = np.arange(0, len(tr), max(1, len(tr) // 4))[:4]
    users, hrows, tgts = tr.user[sel], tr.history[sel], tr.target[sel]
    assert all(int(t) in r.train_histories[int(u)] for u, t in zip(users, tgts))  # the user's own index row holds the target
    model.train()  # fine-tuning: the Trainer's forward with the batch's users
    hist = model.encode_history(hrows)
    model(hist, model.vocab.encode_targets(tgts), extras={"user": torch.as_tensor(users, dtype=torch.long)})
    at_finetune = dict(head._nbr_cache)
    head._nbr_cache.clear()
    rank_histories(model, SIDTrie(model.vocab.sids, [3, 4, 2]), hrows, k=1, beam=1, users=users)  # ranking the same samples
    at_ranking = dict(head._nbr_cache)
    assert len(at_finetune) == len(sel) and at_finetune == at_ranking
    for (h, u), nb in at_ranking.items():
        assert u is not None and len(nb) == 3 and u not in nb
    # the valid split ranked with its users: nobody retrieves itself
    head._nbr_cache.clear()
    va = ds.splits["valid"]
    rank_histories(model, SIDTrie(model.vocab.sids, [3, 4, 2]), va.history[:6], k=1, beam=1, users=va.user[:6])
    assert {u for (_, u) in head._nbr_cache} == {int(u) for u in va.user[:6]}
    assert all(u not in nb for (_, u), nb in head._nbr_cache.items())


def _users_by_id_view_cosine(head, r, ds, hist, me):
    """One user per distinct indexed history (no ties), ``me`` left out, sorted by the cosine of their
    ID-view representation with ``hist``'s (best first), and those cosines."""
    distinct = {}
    for u in range(ds.n_users):
        distinct.setdefault(tuple(r.train_histories[u][-ds.max_history:]), u)
    others = [u for u in distinct.values() if u != me]
    reps = F.normalize(head.neighbor_representations([r.train_histories[u][-ds.max_history:] for u in others]), dim=-1)
    q = F.normalize(head.neighbor_representations([hist]), dim=-1)[0]
    cos, order = torch.sort(reps @ q, descending=True)
    return [others[i] for i in order.tolist()], cos


def test_rar_reranks_the_union_of_both_paths_by_id_view_representations(synth, monkeypatch, one_thread):
    """Issue #15 (2): the BM25 ∪ faiss candidates are re-ranked by the cosine of GenPlugin's ID-view
    user representations q (Eq. 3), users found by both paths kept first; both paths contribute."""
    ds, emb, r = synth
    model, head = _synth_model(ds, emb, v=3, z=4, rar_active=True)
    head.set_retriever(r)
    model.eval()
    hist, me = [3, 4, 5], 0
    by_cos, cos = _users_by_id_view_cosine(head, r, ds, hist, me)
    assert (cos[:6].diff() < 0).all() and len(by_cos) > 7
    # BM25 finds the 1st, 3rd, 5th most similar users (ID view), faiss the 2nd, 4th, 6th, and both find the last one
    a = np.array([by_cos[0], by_cos[2], by_cos[4], by_cos[-1]])
    c = np.array([by_cos[1], by_cos[3], by_cos[5], by_cos[-1]])
    calls = []
    monkeypatch.setattr(r, "candidates_batch", lambda histories, z, exclude_users: calls.append((histories, z, exclude_users)) or [(a, c)])
    st, mk = head.retrieve(torch.tensor([[-1] + hist]), users=[me])
    got = head._nbr_cache[(tuple(hist), me)]
    assert got == [by_cos[-1], by_cos[0], by_cos[1]]  # the both-path user first; then BM25's and faiss's best
    assert calls == [([hist], 4, [me])] and mk.all()
    # unmocked: the same rule over the real candidates
    monkeypatch.undo()
    head._nbr_cache.clear()
    head.retrieve(torch.tensor([[-1] + hist]), users=[me])
    assert head._nbr_cache[(tuple(hist), me)] == _id_view_neighbours(head, r, hist, me, z=4, v=3)


@pytest.mark.parametrize("paths", ["bm25", "cf"])
def test_rar_with_one_retrieval_path_alone_reranks_only_that_paths_candidates(synth, monkeypatch, one_thread, paths):
    """Issue #15 ablation "RAR with each retrieval path alone": rar_paths bm25 / cf re-rank only that
    path's top-z by the ID-view cosine (no both-path priority: the other path is not asked), in the
    head's own retrieval and in the service path (select_neighbors) alike."""
    ds, emb, r = synth
    model, head = _synth_model(ds, emb, v=3, z=4, rar_active=True, rar_paths=paths)
    head.set_retriever(r)
    model.eval()
    hist, me = [3, 4, 5], 0
    by_cos, cos = _users_by_id_view_cosine(head, r, ds, hist, me)
    assert (cos[:7].diff() < 0).all()
    # as in the test above: BM25 holds the 1st, 3rd, 5th and last, faiss the 2nd, 4th, 6th and last
    a = np.array([by_cos[-1], by_cos[4], by_cos[2], by_cos[0]])
    c = np.array([by_cos[-1], by_cos[5], by_cos[3], by_cos[1]])
    monkeypatch.setattr(r, "candidates_batch", lambda histories, z, exclude_users: [(a, c)])
    head.retrieve(torch.tensor([[-1] + hist]), users=[me])
    want = [by_cos[0], by_cos[2], by_cos[4]] if paths == "bm25" else [by_cos[1], by_cos[3], by_cos[5]]
    assert head._nbr_cache[(tuple(hist), me)] == want  # the shared last user is no longer kept first
    # the service path: labelled candidates from a retrieval service, the other path's dropped
    label = {int(u): "both" if u == by_cos[-1] else ("bm25" if u in a else "cf") for u in np.concatenate([a, c])}
    cands = [(r.train_histories[u][-ds.max_history:], lab) for u, lab in label.items()]
    users = list(label)
    assert [users[k] for k in head.select_neighbors(hist, cands)] == want
    only_other = [(h, lab) for h, lab in cands if lab == ("cf" if paths == "bm25" else "bm25")]
    assert head.select_neighbors(hist, only_other) == []


def test_rar_paths_option_is_checked():
    with pytest.raises(Exception, match="rar_paths"):
        GenPluginHead(D, n_items=4, text_dim=8, lan_heads=2, lan_ff=32, proj_hidden=16, rar_paths="faiss")


def test_rep_cache_eviction_cannot_drop_a_value_being_read(synth, one_thread):
    """Issue #15 (3): capacity 2, cache A and B, then ask for [C, A]: writing C evicted A before A was read (KeyError)."""
    from components.retrieval.retriever import RepresentationCache

    ds, emb, _ = synth
    model, head = _synth_model(ds, emb, rar_active=True)
    model.eval()
    A, B, C = [0, 1, 2], [3, 4], [5, 6, 7]
    fresh = head.neighbor_representations([A, B, C], model_ref="fresh")  # reference values (big cache)
    head.rep_cache = RepresentationCache(capacity=2)
    head.neighbor_representations([A, B], model_ref="m")
    got = head.neighbor_representations([C, A], model_ref="m")
    assert torch.allclose(got, fresh[[2, 0]], atol=1e-6)
    assert len(head.rep_cache) == 2 and head.rep_cache.hits == 1


def test_rar_neighbour_extras_hook(synth):
    ds, emb, r = synth
    model, head = _synth_model(ds, emb, v=2, rar_active=True)
    ex = head.neighbor_extras([[[1, 2, 3], [4, 5]], [[7]]], model_ref="generator/x@1")
    assert ex[EXTRA_NBR_STATES].shape == (2, 2, D) and ex[EXTRA_NBR_MASK].tolist() == [[True, True], [True, False]]
    assert head.rep_cache.model_ref == "generator/x@1"
    model.eval()
    hist = model.encode_history([[0, 1], [2]])
    ctx = model.context(hist, ex)  # no retriever needed: the caller gave the neighbours
    assert ctx.states.shape[1] == hist.tokens.shape[1] + 2 and not head.rar_fallback
    with pytest.raises(GenPluginError, match="empty history"):
        head.neighbor_representations([[]])


def test_rar_missing_index_falls_back_with_flag(registry, synth):
    ds, emb, _ = synth
    model, head = _synth_model(ds, emb, rar_active=True, retrieval_index="retrieval-index/nope@latest",
                               registry_root=str(registry.root))
    hist = model.encode_history([[0, 1]])
    model.eval()
    with pytest.warns(RuntimeWarning, match="WITHOUT retrieval augmentation"):
        ctx = model.context(hist)
    assert head.rar_fallback and ctx.states.shape[1] == hist.tokens.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        model.context(hist)


def test_rar_bad_input(synth):
    ds, emb, r = synth
    model, head = _synth_model(ds, emb, v=40, rar_active=True)
    with pytest.raises(GenPluginError, match="smaller than the 40 indexed users"):
        head.set_retriever(r)
    model2, head2 = _synth_model(ds, emb, rar_active=True)
    head2.p.dataset = "dataset/other@y"
    with pytest.raises(GenPluginError, match="built from dataset/synth@x"):
        head2.set_retriever(r)
    with pytest.raises(GenPluginError, match="another dataset"):
        GenerativeRecommender(tiny_backbone("tiger", model.vocab), [GenPluginHead(D, n_items=5, text_dim=8, lan_heads=2)])
    with pytest.raises(GenPluginError, match="needs item embeddings"):
        GenPluginHead(D)
    # an empty-history row gets no neighbours (and no error)
    head3 = _synth_model(ds, emb, rar_active=True)[1]
    head3.set_retriever(r)
    st, mk = head3.retrieve(torch.tensor([[-1, -1, -1, -1], [-1, -1, 0, 1]]))
    assert not mk[0].any() and mk[1].all()


# ---- checkpoint + CLI ----------------------------------------------------------------------------
def _cli_inputs(registry, synth, tmp_path, monkeypatch):
    """Dataset, embeddings, codebook and retrieval index of ``synth`` in the registry; returns the CLI
    ``--set`` flags of a smoke GenPlugin run (the heads flag last) and the embeddings artifact."""
    from components.retrieval.retriever import UserRetriever
    from components.tokenizer.codebook import Codebook
    from components.tokenizer.encoders import save_embeddings

    ds, emb, _ = synth
    ds_art = ds.save(registry)
    e_art = save_embeddings(registry, emb, ds_art.ref, "synth", "random", {})
    sizes = [3, 4, 2]
    Codebook(sids=random_sids(sizes, ds.n_items), sizes=sizes, item_ids=ds.item_ids, method="random",
             dataset_ref=ds_art.ref).save(registry, "synth-random", parents=[ds_art.ref, e_art.ref], params={})
    UserRetriever.build(ds, emb, fields=("title",), dataset_ref=ds_art.ref).save(registry, "synth", [ds_art.ref], {})
    monkeypatch.chdir(tmp_path)
    sets = ["--set", "data.dataset=synth", "--set", "generator.preset=smoke", "--set", "generator.train.max_steps_per_epoch=3", "--set", "generator.train.valid_samples=8",
            "--set", "generator.decode.max_samples=8", "--set", "generator.decode.beam=10", "--set", "generator.decode.k=10",
            "--set", 'generator.heads=[{"type": "genplugin", "z": 5, "v": 3, "finetune_epochs": 1, "lan_heads": 2}]']
    return sets, e_art


def test_cli_train_rank_two_stages_and_checkpoint_roundtrip(registry, synth, tmp_path, monkeypatch):
    from components.cli import main
    from components.generator.checkpoint import load_checkpoint
    from components.tokenizer.encoders import save_embeddings

    ds, emb, _ = synth
    sets, e_art = _cli_inputs(registry, synth, tmp_path, monkeypatch)
    base = ["--registry", str(registry.root)] + sets
    assert main(base + ["train", "--name", "synth-gp", "--no-progress", "--metrics-out", "m.json"]) == 0
    import json

    m = json.loads((tmp_path / "m.json").read_text())
    stages = [h["stage"] for h in m["history"]]
    assert stages == ["pretrain"] * (len(stages) - 1) + ["rar"] and m["genplugin.rar_fallback"] is False
    # both stages' valid NDCG@10 reported; the better one kept (augmentation on only if the RAR stage was kept)
    kept_rar = m["rar.kept"] == "rar"
    assert m["rar.kept"] in ("rar", "pretrain") and m["valid.ndcg@10"] == max(m["rar.valid.ndcg@10_before"], m["rar.valid.ndcg@10_after"])
    model, cb, art = load_checkpoint(registry, "generator/synth-gp@latest")
    head = model.heads[0]
    cfg = art.load_json("config.json")["heads"][0]
    assert cfg["rar_active"] == kept_rar and cfg["embeddings"] == e_art.ref and cfg["retrieval_index"].startswith("retrieval-index/synth@")
    assert torch.allclose(head.item_text, torch.from_numpy(emb))  # frozen text table restored
    state = art.load_safetensors("model.safetensors")
    assert torch.equal(head.proj[0].weight, state["heads.0.proj.0.weight"])
    assert torch.equal(head.nbr_type, state["heads.0.nbr_type"])
    one = model.encode_history([[0, 1, 2]])
    S = one.tokens.shape[1]
    ctx = model.context(one)
    assert ctx.states.shape[1] == S + (3 if kept_rar else 0) and not head.rar_fallback  # augmentation (v = 3) as saved
    head.p.rar_active = True  # the pinned index loads from the registry either way
    ctx = model.context(one)
    assert ctx.states.shape[1] == S + 3 and not head.rar_fallback
    assert main(base + ["rank", "--checkpoint", "generator/synth-gp@latest", "--no-progress"]) == 0
    # embeddings of another dataset version are refused at train time
    other = save_embeddings(registry, emb, "dataset/synth@other", "synth-x", "random", {})
    bad = sets[:-1] + [f'generator.heads=[{{"type": "genplugin", "embeddings": "{other.ref}", "lan_heads": 2}}]']
    assert main(["--registry", str(registry.root)] + bad + ["train", "--name", "bad", "--no-progress"]) != 0


def test_variants_differing_only_in_rar_options_share_one_pre_training(registry, synth, tmp_path, monkeypatch, one_thread):
    """GenPlugin's pre-training reads no RAR option: w/o RAR, one retrieval path, another z / v or
    fine-tuning schedule resume the same finished pre-training (its history verbatim, timings included,
    no epoch trained again); a pre-training option (dsa) trains its own."""
    import json

    from components.cli import main

    sets, _ = _cli_inputs(registry, synth, tmp_path, monkeypatch)
    base = ["--registry", str(registry.root)] + sets[:-2]

    def train(name, head):
        assert main(base + ["--set", f"generator.heads=[{json.dumps({'type': 'genplugin', 'lan_heads': 2, **head})}]",
                            "train", "--name", name, "--no-progress", "--metrics-out", f"{name}.json"]) == 0
        m = json.loads((tmp_path / f"{name}.json").read_text())
        return m, [{k: v for k, v in h.items() if k != "stage"} for h in m["history"] if h.get("stage", "pretrain") == "pretrain"]

    full, pre = train("gp", {"z": 5, "v": 3, "finetune_epochs": 1})
    assert full["first_stage.resumed_epochs"] == 0 and len(pre) >= 1
    for name, head in [("bm25", {"z": 4, "v": 2, "finetune_epochs": 2, "rar_paths": "bm25"}), ("norar", {"rar": False})]:
        m, pre2 = train(name, head)
        assert m["first_stage.run_dir"] == full["first_stage.run_dir"] and m["first_stage.resumed_epochs"] == len(pre)
        assert pre2 == pre  # the same rows, samples/s included: read back, not trained again
    assert [h.get("stage") for h in train("norar", {"rar": False})[0]["history"]] == [None] * len(pre)  # w/o RAR: one stage
    m, pre3 = train("nodsa", {"dsa": False})
    assert m["first_stage.run_dir"] != full["first_stage.run_dir"] and m["first_stage.resumed_epochs"] == 0
    assert len(list((tmp_path / ".genrec" / "runs").glob("first-stage-*.lock"))) == 2


def test_shared_first_stage_lock_makes_a_second_process_wait(tmp_path, capsys):
    """Two processes on one shared pre-training: the second waits for the first's lock, then resumes."""
    import threading

    from components.generator.commands import _exclusive

    events = []
    with _exclusive(tmp_path / "first-stage-x"):
        t = threading.Thread(target=lambda: _exclusive(tmp_path / "first-stage-x").__enter__() or events.append("entered"))
        t.start()
        t.join(0.5)
        assert events == [] and t.is_alive()  # blocked while the lock is held
    t.join(5)
    assert events == ["entered"] and "another process is training this shared first stage" in capsys.readouterr().out


def test_unknown_option_is_a_clear_error():
    with pytest.raises(Exception, match="lamda_kl"):
        GenPluginHead(D, n_items=3, text_dim=2, lan_heads=2, lamda_kl=1.0)
    _ = F


def test_second_stage_without_index_is_flagged_not_fatal():
    from components.generator.params import TrainParams
    from components.generator.train import TrainResult

    model, head = _model(rar=True)  # no retrieval_index configured
    res = TrainResult(best_state={}, history=[], best_epoch=1, best_valid={}, epochs_run=1, stopped_early=False,
                      samples_per_s=1.0, train_seconds=1.0)
    with pytest.warns(RuntimeWarning, match="rar_fallback=True"):
        out = head.second_stage(res, lambda tp, tag: pytest.fail("must not fine-tune"), TrainParams())
    assert out is res and out.extra["genplugin.rar_fallback"] is True and head.rar_fallback and not head.p.rar_active
    # rar: false (ablation) never fine-tunes and never warns
    _, h2 = _model(rar=False)
    assert h2.second_stage(res, lambda tp, tag: pytest.fail("must not fine-tune"), TrainParams()) is res


# ---- issue #15: what the RAR stage trains, which checkpoint it keeps, the loss weights --------------
def _frozen_names(model):
    return [n for n, _ in model.named_parameters()
            if n.startswith(("backbone.t5.encoder.", "backbone.t5.shared.", "heads.0.proj.", "heads.0.pos.", "heads.0.lan_encoder."))]


def test_freeze_encoders_freezes_exactly_the_encoders_and_pins_eval():
    model, head = _model()
    frozen = head.freeze_encoders()
    assert sorted(frozen) == sorted(_frozen_names(model)) and frozen
    trainable = {n for n, q in model.named_parameters() if q.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n not in frozen}
    assert "heads.0.nbr_type" in trainable and any(n.startswith("backbone.t5.decoder.block.") for n in trainable)
    assert model.backbone.t5.lm_head.weight is model.backbone.t5.shared.weight  # tied output layer: frozen with the table
    model.train()
    enc = model.backbone.t5.get_encoder()
    assert not enc.training and not head.lan_encoder.training and not head.proj.training and model.backbone.t5.decoder.training
    head.unfreeze_encoders()
    model.train()
    assert enc.training and head.lan_encoder.training and all(q.requires_grad for q in model.parameters())


def _stage_trainer(model, ds, tp):
    from components.generator.decoding import SIDTrie
    from components.generator.train import Trainer

    return Trainer(model, ds, SIDTrie(model.vocab.sids, [3, 4, 2]), tp, seed=0, eval_beam=2, progress=False)


def test_rar_stage_trains_only_the_decoder_with_frozen_parts_in_eval_mode(synth, monkeypatch, one_thread):
    """Issue #15 (5): the paper fine-tunes the decoder with the encoder frozen; frozen modules must run
    in eval mode for the target user too (as for the cached neighbours)."""
    from components.generator.model import state_dict_for_save
    from components.generator.params import TrainParams
    from components.generator.train import TrainResult

    ds, emb, r = synth
    model, head = _synth_model(ds, emb, v=2, z=4, finetune_epochs=1)
    head.set_retriever(r)
    before = state_dict_for_save(model)
    seen: dict[str, set] = {}
    mods = {"encoder": model.backbone.t5.get_encoder(), "lan_encoder": head.lan_encoder, "proj": head.proj,
            "decoder": model.backbone.t5.get_decoder()}
    for name, mod in mods.items():
        mod.register_forward_pre_hook(lambda m, a, name=name: seen.setdefault(name, set()).add(m.training))
    asked = []
    orig = r.candidates_batch

    def spy(histories, z=20, exclude_users=None):
        out = orig(histories, z, exclude_users)
        asked.extend(zip(exclude_users, out))
        return out

    monkeypatch.setattr(r, "candidates_batch", spy)
    pre = TrainResult(best_state=before, history=[{"epoch": 1}], best_epoch=1, best_valid={"ndcg@10": -1.0}, epochs_run=1,
                      stopped_early=False, samples_per_s=1.0, train_seconds=1.0)
    tp = TrainParams(epochs=1, batch_size=8, max_steps_per_epoch=2, valid_samples=2, lr=0.05, warmup_steps=0, device="cpu",
                     bf16=False, resume=False, num_threads=1)
    seen.clear()
    res = head.second_stage(pre, lambda tp2, tag: _stage_trainer(model, ds, tp2), tp)
    # frozen modules ran in eval mode only (the decoder did train)
    assert seen["encoder"] == {False} and seen["lan_encoder"] == {False} and seen["proj"] == {False}
    assert True in seen["decoder"]
    after = state_dict_for_save(model)
    frozen = set(_frozen_names(model))
    assert all(torch.equal(before[n], after[n]) for n in frozen)
    changed = {n for n in after if not torch.equal(before[n], after[n])}
    assert "heads.0.nbr_type" in changed and any(n.startswith("backbone.t5.decoder.") for n in changed)
    assert changed.isdisjoint(frozen)
    assert res.extra["rar.kept"] == "rar" and head.p.rar_active  # (valid "before" was -1: the stage is kept)
    # the Trainer's batches and its validation exclude each sample's user, who is never its own neighbour
    assert asked and all(u is not None and u not in set(a.tolist()) | set(c.tolist()) for u, (a, c) in asked)
    model.train()  # after the stage train()/eval() and requires_grad are normal again
    assert model.backbone.t5.get_encoder().training and all(q.requires_grad for q in model.parameters())


def _fake_trainer(model, ndcg_after):
    from components.generator.model import state_dict_for_save
    from components.generator.train import TrainResult

    class Fake:
        def fit(self):
            with torch.no_grad():
                for n, q in model.named_parameters():
                    if q.requires_grad:
                        q.add_(0.5)  # "training" moved the trainable weights
            return TrainResult(best_state=state_dict_for_save(model), history=[{"epoch": 1, "valid.ndcg@10": ndcg_after}],
                               best_epoch=1, best_valid={"ndcg@10": ndcg_after}, epochs_run=1, stopped_early=False,
                               samples_per_s=1.0, train_seconds=1.0)

    return Fake()


@pytest.mark.parametrize("after, kept", [(0.1, "pretrain"), (0.3, "rar"), (0.5, "rar")])
def test_rar_stage_keeps_the_better_checkpoint_on_valid(synth, after, kept):
    """Issue #15 (6): a RAR stage that lowers valid NDCG@10 must not replace the pre-trained weights."""
    from components.generator.model import state_dict_for_save
    from components.generator.params import TrainParams
    from components.generator.train import TrainResult

    ds, emb, r = synth
    model, head = _synth_model(ds, emb, v=2, z=4, finetune_epochs=1)
    head.set_retriever(r)
    pre_state = state_dict_for_save(model)
    pre = TrainResult(best_state=pre_state, history=[{"epoch": 1}], best_epoch=1, best_valid={"ndcg@10": 0.3}, epochs_run=1,
                      stopped_early=False, samples_per_s=1.0, train_seconds=1.0)
    res = head.second_stage(pre, lambda tp, tag: _fake_trainer(model, after), TrainParams())
    assert res.extra["rar.valid.ndcg@10_before"] == 0.3 and res.extra["rar.valid.ndcg@10_after"] == after
    assert res.extra["rar.kept"] == kept and res.best_valid["ndcg@10"] == max(0.3, after)
    assert [h["stage"] for h in res.history] == ["pretrain", "rar"]
    now = state_dict_for_save(model)
    same = all(torch.equal(pre_state[k], now[k]) for k in now)
    saved_same = all(torch.equal(pre_state[k], res.best_state[k]) for k in now)
    if kept == "pretrain":  # the pre-trained weights, without augmentation (as validated)
        assert same and saved_same and not head.p.rar_active and not model.config_dict()["heads"][0]["rar_active"]
    else:
        assert not same and not saved_same and head.p.rar_active


def test_loss_weights_lambda_item_user_kl_lan_are_applied(one_thread):
    """Eq. 6: each auxiliary loss is its λ times its term (non-default λs so that a dropped or
    hard-coded weight shows)."""
    lam = {"lambda_lan": 0.5, "lambda_item": 0.3, "lambda_user": 0.7, "lambda_kl": 0.2}
    model, head = _model(phi=0.9, **lam)
    hist, t = _batch(model, [[0, 1], [2, 3, 4], [5], [6, 7]], [8, 9, 10, 11])
    model.train()
    torch.manual_seed(0)
    out = model(hist, t)
    lan = out.ctx.extras["genplugin.lan"]
    l_item, l_user = head.alignment_losses(out.ctx, lan["h"], lan["valid"])
    kl = symmetric_kl(lan["logits"], out.logits, 0.9)
    ce = F.cross_entropy(lan["logits"].float().reshape(-1, lan["logits"].shape[-1]), t.reshape(-1))
    assert l_item.item() > 0.05 and l_user.item() > 0.05 and kl.item() > 1e-4
    assert out.losses["genplugin.item"].item() == pytest.approx(0.3 * l_item.item(), rel=1e-5)
    assert out.losses["genplugin.user"].item() == pytest.approx(0.7 * l_user.item(), rel=1e-5)
    assert out.losses["genplugin.kl"].item() == pytest.approx(0.2 * kl.item(), rel=1e-5)
    assert out.losses["genplugin.lan"].item() == pytest.approx(0.5 * ce.item(), rel=1e-5)


def _ctx(states, levels, slots, items):
    from components.generator.heads.base import Context

    st = torch.tensor(states, dtype=torch.float32)
    lv, sl = torch.tensor(levels), torch.tensor(slots)
    return Context(st, lv >= -1, lv, sl, st, {"items": torch.tensor(items)})


def test_user_representation_is_the_mean_over_item_tokens_hand_computed():
    """q_u (Eq. 3): average pooling of C_u over the history's item-token positions (not the last position, not EOS/padding)."""
    ctx = _ctx(states=[[[9.0, 9.0], [1.0, 0.0], [3.0, 4.0], [50.0, -50.0]],  # pad, item 0 (2 tokens), EOS
                       [[1.0, 2.0], [3.0, 0.0], [2.0, 2.0], [7.0, 7.0]]],  # item 2 (2 tokens), item 3 (1 token), EOS
               levels=[[-1, 0, 1, -1], [0, 1, 0, -1]], slots=[[-1, 0, 0, -1], [0, 0, 1, -1]], items=[[-1, 0], [2, 3]])
    q = GenPluginHead.user_representation(ctx)
    # row 0: ([1,0] + [3,4]) / 2; row 1: ([1,2] + [3,0] + [2,2]) / 3
    assert torch.allclose(q, torch.tensor([[2.0, 2.0], [2.0, 4.0 / 3.0]]))


def test_alignment_losses_hand_computed():
    """L_item (Eq. 2: g_i = Σ_r c_i^(r) vs h_i) and L_user (Eq. 3: mean-pooled p_u vs q_u), τ = 0.5, on 2 users × 1 item."""
    model, head = _model(tau=0.5)
    # user 0: item 5 with tokens c = [1,0], [1,0] → g = [2,0], q = [1,0]; EOS [9,-9] ignored
    # user 1: item 7 with tokens c = [0,1], [2,1] → g = [2,2], q = [1,1]; (last token would be [2,1])
    ctx = _ctx(states=[[[1.0, 0.0], [1.0, 0.0], [9.0, -9.0]], [[0.0, 1.0], [2.0, 1.0], [9.0, -9.0]]],
               levels=[[0, 1, -1], [0, 1, -1]], slots=[[0, 0, -1], [0, 0, -1]], items=[[5], [7]])
    h = torch.tensor([[[1.0, 0.0]], [[0.0, 3.0]]])  # language states h_5, h_7 (and p_u: one item each)
    valid = torch.tensor([[True], [True]])
    l_item, l_user = head.alignment_losses(ctx, h, valid)
    c = 1 / math.sqrt(2)

    def nce(S):  # -mean_i log softmax_j(S_ij / τ)[i] for a 2×2 cosine matrix
        return sum(-math.log(math.exp(S[i][i] / 0.5) / sum(math.exp(S[i][j] / 0.5) for j in range(2))) for i in range(2)) / 2

    # cos(h_i, g_j): h_5=[1,0], h_7=[0,1]; g_5=[1,0], g_7=[c,c]
    hg = [[1.0, c], [0.0, c]]
    gh = [[1.0, 0.0], [c, c]]
    assert l_item.item() == pytest.approx(nce(hg) + nce(gh), rel=1e-5)
    # p_u = h (one item each); q_0 = mean([1,0],[1,0]) = [1,0], q_1 = mean([0,1],[2,1]) = [1,1] (∝ g with one item
    # per user, so the same cosines; pooling the last token [2,1] or EOS [9,-9] would change them)
    assert l_user.item() == pytest.approx(nce(hg) + nce(gh), rel=1e-5)


def test_service_asks_retrieval_for_the_checkpoints_v_and_z(synth, one_thread):
    """Issue #15 (7): the generator service asked the retrieval service for its default v (retrieval.v)
    while the head was fine-tuned with its own v: the checkpoint's z / v must be asked for and used."""
    from types import SimpleNamespace

    from components.generator.recommend import Recommender
    from components.generator.service import GeneratorService, Limits
    from components.serving.pb.genrec.v1 import generator_pb2
    from components.tokenizer.codebook import Codebook

    ds, emb, r = synth
    model, head = _synth_model(ds, emb, v=2, z=4, rar_active=True)
    cb = Codebook(sids=model.vocab.sids, sizes=[3, 4, 2], item_ids=ds.item_ids, method="random")
    rec = Recommender(model.eval(), cb, np.ones(ds.n_items))

    class FakeRetrieval:  # a retrieval service with default v = 10 that answers 10 users unless told otherwise
        def __init__(self):
            self.calls = []

        def similar_users(self, history=None, user_id=None, v=0, z=0, exclude_user=None):
            self.calls.append({"history": history, "user_id": user_id, "v": v, "z": z, "exclude_user": exclude_user})
            return [SimpleNamespace(user_id=ds.user_ids[u], item_ids=[ds.item_ids[i] for i in r.train_histories[u]], path="")
                    for u in range(1, 1 + (v or 10))]

    fake = FakeRetrieval()
    seen = []
    orig = rec.recommend
    rec.recommend = lambda histories, **kw: seen.append(kw.get("neighbors")) or orig(histories, **kw)
    gen = GeneratorService(rec, "generator/x@1", limits=Limits(max_k=24, max_beam=50), retrieval=fake)
    req = generator_pb2.RecommendRequest(history=ds.item_ids[3:6], k=3, beam=3, user_id="u0", heads=generator_pb2.HeadOptions(use_retrieval=True))
    out = gen._recommend_group([req])[0]
    assert out.retrieval_used and len(out.item_ids) == 3
    # the checkpoint's z, all 2z candidates; the history is the query, minus its user
    assert [(c["v"], c["z"]) for c in fake.calls] == [(8, 4)]
    assert fake.calls[0]["history"] == ds.item_ids[3:6] and fake.calls[0]["exclude_user"] == "u0"
    # the head keeps its v = 2 of them by its ID-view re-rank (unlabelled paths: one path, by cosine)
    cand = [r.train_histories[u] for u in range(1, 9)]
    reps = F.normalize(head.neighbor_representations(cand, model_ref="generator/x@1"), dim=-1)
    q = F.normalize(head.neighbor_representations([[3, 4, 5]], model_ref="other"), dim=-1)[0]
    best = torch.argsort(reps @ q, descending=True)[:2].tolist()
    assert seen[-1] == [[[ds.item_ids[i] for i in cand[k]] for k in best]]
    # neighbours handed in directly are cut to the head's v as well
    ex = head.neighbor_extras([[[1, 2], [3], [4, 5], [6]]])
    assert ex[EXTRA_NBR_STATES].shape == (1, 2, D) and ex[EXTRA_NBR_MASK].all()


def test_recommender_own_retrieval_excludes_the_requesting_user(synth, one_thread):
    """Issue #15 (4) at serving: with the head's own retrieval, a request's user (external id) is
    excluded like in training and ranking; unknown or missing users exclude no one."""
    from components.generator.recommend import Recommender
    from components.tokenizer.codebook import Codebook

    ds, emb, r = synth
    model, head = _synth_model(ds, emb, v=2, z=4, rar_active=True)
    head.set_retriever(r)
    rec = Recommender(model.eval(), Codebook(sids=model.vocab.sids, sizes=[3, 4, 2], item_ids=ds.item_ids, method="random"))
    own = [ds.item_ids[i] for i in r.train_histories[0][-ds.max_history:]]
    rec.recommend([own, own], k=2, beam=2, users=["u0", "somebody-new"])
    keys = set(head._nbr_cache)
    hist = tuple(r.train_histories[0][-ds.max_history:])
    assert keys == {(hist, 0), (hist, None)} and 0 not in head._nbr_cache[(hist, 0)]
